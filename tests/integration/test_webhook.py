"""`Webhook` against a real HTTP server on 127.0.0.1 (standard library, in a thread).

No broker or database is needed; tiny backoffs keep every test well under a second.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from wakeline.compensator.notify import Notice, NotifyError, Webhook
from wakeline.errors import ConfigError

pytestmark = pytest.mark.integration

NOTICE = Notice(
    task_id="task-1",
    kind="call",
    workflow_id="wf-<1>",
    title="email.send in workflow wf-1 needs a human",
    text="Not undone, and why:\n  - email.send: irreversible & sent\n",
    reason="irreversible",
    quarantine_id="q-1",
)


class Server:
    """Answers each POST with the next scripted (status, headers); 200 when the script ends."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str]]] = []
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.received.append((self.path, dict(self.headers), body))
                status, headers = outer.script.pop(0) if outer.script else (200, {})
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                payload = b"ok" if status == 200 else b"invalid_payload"
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/services/T0/B0/s3cr3t"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def hook(url: str, **kw: object) -> Webhook:
    kw = {"timeout_s": 2.0, "attempts": 4, "backoff_initial_s": 0.001, "backoff_max_s": 0.01, **kw}
    return Webhook(url, **kw)  # type: ignore[arg-type]


def test_the_payload_is_delivered_as_slack_json(server: Server) -> None:
    assert hook(server.url, headers={"X-Team": "ops"}).send(NOTICE) == 1
    (path, headers, body) = server.received[0]
    assert path == "/services/T0/B0/s3cr3t"
    assert headers["Content-Type"].startswith("application/json")
    assert headers["X-Team"] == "ops"
    payload = json.loads(body)
    assert set(payload) == {"text", "blocks"}
    assert payload["text"].startswith("email.send in workflow wf-1 needs a human")
    assert "irreversible &amp; sent" in payload["text"]  # Slack's escapes
    kinds = [b["type"] for b in payload["blocks"]]
    assert kinds == ["header", "section", "context"]
    assert payload["blocks"][0]["text"] == {"type": "plain_text", "text": NOTICE.title}
    context = payload["blocks"][-1]["elements"][0]["text"]
    assert "task `task-1` (call)" in context and "workflow `wf-&lt;1&gt;`" in context
    assert "`wakeline incidents show task-1`" in context


def test_a_long_report_is_cut_into_slack_sized_sections() -> None:
    long = Notice(**{**NOTICE.__dict__, "text": "line of the report\n" * 5000})
    payload = hook("https://hooks.example.com/x").payload(long)
    sections = [b for b in payload["blocks"] if b["type"] == "section"]
    assert all(len(b["text"]["text"]) <= 3000 for b in sections)
    assert len(payload["blocks"]) <= 50
    assert "wakeline incidents show task-1" in sections[-1]["text"]["text"]
    assert len(payload["text"]) <= 3000


def test_a_5xx_is_retried_until_delivered(server: Server) -> None:
    server.script = [(500, {}), (503, {})]
    assert hook(server.url).send(NOTICE) == 3
    assert len(server.received) == 3
    assert server.received[0][2] == server.received[2][2]  # the same payload each time


def test_a_4xx_is_not_retried(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    server.script = [(400, {})]
    with pytest.raises(NotifyError, match="HTTP 400: invalid_payload") as info:
        hook(server.url).send(NOTICE)
    assert info.value.attempts == 1
    assert len(server.received) == 1
    assert "s3cr3t" not in str(info.value)


def test_a_redirect_is_not_followed(server: Server) -> None:
    server.script = [(302, {"Location": "http://127.0.0.1:1/elsewhere"})]
    with pytest.raises(NotifyError, match="HTTP 302.*redirect"):
        hook(server.url).send(NOTICE)
    assert len(server.received) == 1


def test_an_unreachable_url_fails_after_every_attempt(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/services/T0/B0/s3cr3t"
    with (
        caplog.at_level(logging.DEBUG, logger="wakeline.compensator.notify"),
        pytest.raises(NotifyError, match="not delivered after 3 attempt") as info,
    ):
        hook(url, attempts=3).send(NOTICE)
    assert info.value.attempts == 3
    assert f"http://127.0.0.1:{port}" in str(info.value)
    assert "s3cr3t" not in str(info.value) and "/services" not in str(info.value)
    assert caplog.records and all("s3cr3t" not in r.getMessage() for r in caplog.records)


def test_retry_after_is_honoured_up_to_the_cap(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    server.script = [(429, {"Retry-After": "0.05"}), (503, {"Retry-After": "3600"}), (500, {})]
    webhook = hook(server.url, backoff_initial_s=0.001, backoff_max_s=0.2)
    with caplog.at_level(logging.WARNING, logger="wakeline.compensator.notify"):
        assert webhook.send(NOTICE) == 4
    slept = [float(r.args[-1]) for r in caplog.records if "retrying in" in r.msg]
    assert slept[0] == pytest.approx(0.05)  # what the server asked for
    assert slept[1] == pytest.approx(0.2)  # an hour is capped at backoff_max_s
    assert slept[2] <= 0.2  # no Retry-After: the exponential backoff
    assert "HTTP 429" in caplog.records[0].getMessage()


def test_429_after_the_last_attempt_is_an_error(server: Server) -> None:
    server.script = [(429, {"Retry-After": "0"})] * 2
    with pytest.raises(NotifyError, match="after 2 attempt.*HTTP 429"):
        hook(server.url, attempts=2).send(NOTICE)


def test_bad_urls_are_refused_without_showing_them() -> None:
    for url in ("hooks.slack.com/services/s3cr3t", "ftp://host/s3cr3t", "https:///s3cr3t", ""):
        with pytest.raises(ConfigError) as info:
            Webhook(url)
        assert "s3cr3t" not in str(info.value)
    assert repr(Webhook("https://hooks.slack.com/services/s3cr3t")) == (
        "Webhook(https://hooks.slack.com, attempts=5)"
    )


def test_settings_from_the_environment() -> None:
    assert Webhook.from_env({}) is None
    env = {
        "WAKELINE_WEBHOOK_URL": "https://hooks.slack.com/services/s3cr3t",
        "WAKELINE_WEBHOOK_ATTEMPTS": "7",
        "WAKELINE_WEBHOOK_TIMEOUT_S": "1.5",
    }
    webhook = Webhook.from_env(env)
    assert webhook is not None
    assert (webhook.attempts, webhook.timeout_s) == (7, 1.5)
    with pytest.raises(ConfigError, match="WAKELINE_WEBHOOK_ATTEMPTS='0'"):
        Webhook.from_env({**env, "WAKELINE_WEBHOOK_ATTEMPTS": "0"})


def test_a_task_row_is_sent_as_its_notice(server: Server) -> None:
    row = {**NOTICE.__dict__, "report": NOTICE.text}
    assert hook(server.url).send(row) == 1  # type: ignore[arg-type]
    assert json.loads(server.received[0][2]) == hook(server.url).payload(NOTICE)


def test_a_notice_of_a_task_row() -> None:
    from types import SimpleNamespace

    row = {**NOTICE.__dict__, "report": NOTICE.text}
    assert Notice.of(SimpleNamespace(**row)) == NOTICE
    assert Notice.of(row) == NOTICE
