"""Webhook notification of a human task: a Slack-compatible JSON POST, retried.

`Webhook.send` POSTs `{"text": ..., "blocks": [...]}` (Slack's incoming-webhook format; any
receiver that reads `text` works too) and retries connection errors, timeouts, 5xx and 429
with exponential backoff and jitter (tenacity), honouring a `Retry-After` header up to
`backoff_max_s`. Other 4xx answers are not retried: the URL or the payload is wrong, and
sending it again will not help. Redirects are not followed (a POST redirected by urllib
becomes a GET without its body, which would look delivered and was not). Every request has
a timeout.

A webhook URL is a secret (a Slack URL is its own credential): messages and logs name only
its scheme and host (`Webhook.target`).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from wakeline.errors import ConfigError, WakelineError
from wakeline.infra.settings import Variable, check_known, declare, integer, number, text

log = logging.getLogger(__name__)

WEBHOOK_URL = Variable(
    "WAKELINE_WEBHOOK_URL",
    text,
    None,
    "URL the compensator POSTs each human task to (Slack-compatible JSON); unset: no webhook",
    secret=True,
)
WEBHOOK_ATTEMPTS = Variable(
    "WAKELINE_WEBHOOK_ATTEMPTS",
    integer(lo=1, hi=100),
    5,
    "attempts at delivering one notification (connection errors, 5xx and 429 are retried)",
)
WEBHOOK_TIMEOUT_S = Variable(
    "WAKELINE_WEBHOOK_TIMEOUT_S",
    number(above=0),
    5.0,
    "timeout of one webhook request (s)",
)
declare(
    "webhook",
    "notification of escalations by webhook",
    WEBHOOK_URL,
    WEBHOOK_ATTEMPTS,
    WEBHOOK_TIMEOUT_S,
)

#: Slack's limits: header text 150 characters, a section's text 3000, 50 blocks a message
_HEADER_MAX = 150
_SECTION_MAX = 3000
_SECTIONS_MAX = 20
_TEXT_MAX = 3000
_BODY_QUOTE = 200


@dataclass(frozen=True)
class Notice:
    """What a notification says about one human task."""

    task_id: str
    kind: str
    workflow_id: str
    title: str
    text: str
    reason: str
    quarantine_id: str | None

    @classmethod
    def of(cls, task: Any) -> Notice:
        """The notice of a task: a `compensator.tasks.Task`, or a mapping of the
        `compensator_tasks` columns (task_id, kind, workflow_id, title, report, reason,
        quarantine_id)."""
        get = task.get if isinstance(task, Mapping) else lambda k: getattr(task, k, None)
        return cls(
            task_id=str(get("task_id")),
            kind=str(get("kind")),
            workflow_id=str(get("workflow_id")),
            title=str(get("title") or ""),
            text=str(get("report") or ""),
            reason=str(get("reason") or ""),
            quarantine_id=get("quarantine_id"),
        )


class NotifyError(WakelineError):
    """A notification was not delivered. `attempts`: how many were made."""

    def __init__(self, message: str, attempts: int = 0) -> None:
        super().__init__(message)
        self.attempts = attempts


class _Retryable(Exception):
    """One failed attempt worth another; `retry_after`: what the server asked for (s)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Refused(Exception):
    """An answer that another attempt would not change (a 4xx other than 429, a 3xx)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx surfaces as an HTTPError


class Webhook:
    """POSTs notices to one URL."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        attempts: int = 5,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            shown = f"{parts.scheme}://{parts.hostname}" if parts.scheme else "a URL without scheme"
            raise ConfigError(f"webhook URL must be http(s)://host/..., got {shown}")
        if not timeout_s > 0 or attempts < 1 or backoff_initial_s < 0 or backoff_max_s < 0:
            raise ConfigError("webhook: timeout_s > 0, attempts >= 1 and backoffs >= 0, please")
        self.url = url
        self.target = f"{parts.scheme}://{parts.hostname}" + (
            f":{parts.port}" if parts.port else ""
        )
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "wakeline-compensator",
            **(headers or {}),
        }
        self._opener = urllib.request.build_opener(_NoRedirect)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> Webhook | None:
        """The webhook the environment configures (`WAKELINE_WEBHOOK_URL`,
        `WAKELINE_WEBHOOK_ATTEMPTS`, `WAKELINE_WEBHOOK_TIMEOUT_S`), or None without a URL."""
        env = os.environ if env is None else env
        check_known(env)
        url = WEBHOOK_URL.read(env)
        if not url:
            return None
        return cls(
            url,
            timeout_s=WEBHOOK_TIMEOUT_S.read(env),
            attempts=WEBHOOK_ATTEMPTS.read(env),
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"Webhook({self.target}, attempts={self.attempts})"

    # -- the payload -----------------------------------------------------------------------

    def payload(self, notice: Notice) -> dict[str, Any]:
        """Slack's incoming-webhook JSON: `text` (the fallback and what plain receivers
        read) and `blocks` (a header, the report in sections, a context line of ids)."""
        show = f"wakeline incidents show {notice.task_id}"
        sections = _chunks(_escape(notice.text), _SECTION_MAX)
        if len(sections) > _SECTIONS_MAX:
            sections = sections[: _SECTIONS_MAX - 1] + [f"… (the rest: `{show}`)"]
        blocks: list[dict[str, Any]] = [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": _cut(notice.title, _HEADER_MAX)},
            }
        ]
        blocks += [
            {"type": "section", "text": {"type": "mrkdwn", "text": s}} for s in sections if s
        ]
        context = [
            f"task `{notice.task_id}` ({notice.kind})",
            f"workflow `{notice.workflow_id}`",
            f"reason `{notice.reason}`",
        ]
        if notice.quarantine_id:
            context.append(f"quarantine `{notice.quarantine_id}`")
        context.append(f"`{show}`")
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": _escape(" · ".join(context))}],
            }
        )
        summary = f"{notice.title}\n\n{notice.text}"
        if len(summary) > _TEXT_MAX:
            summary = _cut(summary, _TEXT_MAX - len(show) - 20) + f"\n(the rest: {show})"
        return {"text": _escape(summary), "blocks": blocks}

    # -- delivery --------------------------------------------------------------------------

    def send(self, notice: Notice) -> int:
        """Deliver `notice`; the number of attempts it took. NotifyError after the last.
        A task row (a `Task`, or a mapping of its columns) is taken too (`Notice.of`)."""
        if not isinstance(notice, Notice):
            notice = Notice.of(notice)
        body = json.dumps(self.payload(notice), ensure_ascii=False).encode()
        base = wait_exponential_jitter(
            multiplier=self.backoff_initial_s, jitter=self.backoff_initial_s, max=self.backoff_max_s
        )

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome is not None else None
            asked = getattr(error, "retry_after", None)
            if asked is not None:
                return min(max(asked, 0.0), self.backoff_max_s)
            return base(state)

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            log.warning(
                "webhook %s: task %s attempt %d of %d failed (%s), retrying in %.3f s",
                self.target, notice.task_id, state.attempt_number, self.attempts, error,
                state.upcoming_sleep,
            )  # fmt: skip

        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait,
            retry=retry_if_exception_type(_Retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
        used = 0

        def attempt() -> None:
            nonlocal used
            used += 1
            self._post(body)

        try:
            retrying(attempt)
        except (_Retryable, _Refused) as e:
            if isinstance(e, _Refused):
                raise NotifyError(
                    f"webhook {self.target}: task {notice.task_id} refused at attempt {used}, "
                    f"not retried: {e}",
                    used,
                ) from None
            raise NotifyError(
                f"webhook {self.target}: task {notice.task_id} not delivered after {used} "
                f"attempt(s): {e}",
                used,
            ) from None
        log.info("webhook %s: task %s delivered (attempt %d)", self.target, notice.task_id, used)
        return used

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                response.read(65536)
        except urllib.error.HTTPError as e:
            status = e.code
            said = _quote_body(e)
            what = f"HTTP {status}{said}"
            if status == 429 or status >= 500:
                raise _Retryable(what, _retry_after(e.headers)) from None
            if 300 <= status < 400:
                what += " (a redirect: configure the URL it points to)"
            raise _Refused(what) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise _Retryable(f"{type(e).__name__}: {reason}") from None


def _retry_after(headers: Any) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), or None."""
    raw = headers.get("Retry-After") if headers is not None else None
    if not raw:
        return None
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _quote_body(e: urllib.error.HTTPError) -> str:
    try:
        raw = e.read(_BODY_QUOTE * 4)
    except Exception:  # noqa: BLE001 - the body is only a hint
        return ""
    said = " ".join(raw.decode("utf-8", "replace").split())
    return f": {_cut(said, _BODY_QUOTE)}" if said else ""


def _escape(s: str) -> str:
    """Slack's three characters to escape in text fields."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _chunks(s: str, n: int) -> list[str]:
    """`s` in pieces of at most `n` characters, cut at line ends where possible."""
    out: list[str] = []
    while len(s) > n:
        cut = s.rfind("\n", 0, n)
        cut = cut if cut > 0 else n
        out.append(s[:cut])
        s = s[cut:].lstrip("\n")
    out.append(s)
    return out
