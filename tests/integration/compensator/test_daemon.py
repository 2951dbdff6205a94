"""The compensation daemon against the real broker and PostgreSQL."""

from __future__ import annotations

import threading

import pytest

from wakeline.compensator.registry import CompensationRegistry, Done, Failed, NothingToUndo
from wakeline.producers.errors import WorkflowQuarantined
from wakeline.testkit.harness import read_topic

from .conftest import new_wf, plan_state, quarantine, release, rows, wait_until

pytestmark = pytest.mark.integration

PUBLISHED = "SELECT 1 FROM compensator_tasks WHERE published_at IS NOT NULL"


def _events_of(emitter, wf: str) -> list[dict]:
    from wakeline.schemas import decode_event

    msgs = read_topic(emitter.kafka, emitter.kafka.topics.events, idle=1.0)
    return [decode_event(m.value()) for m in msgs if m.key() == wf.encode()]


def kv_handlers(log: list, outcome=None) -> CompensationRegistry:
    reg = CompensationRegistry()
    lock = threading.Lock()

    def undo(req):
        with lock:
            log.append((req.args.get("key"), req.idempotency_key, req.attempt))
        return outcome(req) if outcome else Done(f"undid {req.args.get('key')}")

    reg.register("kv.undo", undo)
    return reg


def test_quarantine_compensates_newest_first_and_gates_refuse(
    emitter, start_compensator, fresh_kafka, fresh_dsn
):
    wf = new_wf()
    ctx = emitter.workflow(wf, agent_id="bot", principal="alice")
    for i in range(3):
        ctx.call("kv.put", lambda key: key, {"key": f"k{i}"})
    ctx.call("kv.get", lambda key: key, {"key": "k0"})
    done = []
    daemon = start_compensator(kv_handlers(done))
    qid = quarantine(ctx)
    wait_until(lambda: plan_state(fresh_dsn, qid) == "done", what="the plan")
    assert [d[0] for d in done] == ["k2", "k1", "k0"]
    from wakeline.infra.metrics import PrometheusMetrics

    metrics = PrometheusMetrics()
    metrics.observe(daemon.samples)
    text = metrics.render().decode()
    assert "wakeline_compensation_plans_total 1.0" in text
    assert "wakeline_compensation_attempts_total 3.0" in text
    assert len({d[1] for d in done}) == 3 and all(d[2] == 1 for d in done)
    wait_until(lambda: emitter.gate.check(wf) is not None, what="the gate")
    with pytest.raises(WorkflowQuarantined):
        ctx.call("kv.put", lambda key: key, {"key": "after"})
    # the compensator's events are on the workflow's partition, ledger-ready
    msgs = read_topic(fresh_kafka, fresh_kafka.topics.events, idle=1.0)
    types = [dict(m.headers() or []).get("ce_type", b"").decode() for m in msgs]
    assert sum(".CompensationStarted." in t for t in types) == 3
    assert sum(".CompensationResult." in t for t in types) == 3
    assert len({m.partition() for m in msgs if m.key() == wf.encode()}) == 1
    tasks = rows(fresh_dsn, "SELECT kind, title FROM compensator_tasks")
    assert [t[0] for t in tasks] == ["plan"]


def test_escalations_retries_and_release(emitter, start_compensator, fresh_kafka, fresh_dsn):
    wf = new_wf()
    ctx = emitter.workflow(wf, agent_id="bot", principal="alice")
    ctx.call("kv.put", lambda key: key, {"key": "flaky"})
    ctx.call("kv.burn", lambda key: key, {"key": "gone"})
    ctx.call("kv.put", lambda key: key, {"key": "broken"})
    ctx.call("kv.put", lambda key: key, {"key": "clean"})
    attempts: dict[str, int] = {}

    def outcome(req):
        key = req.args["key"]
        attempts[key] = attempts.get(key, 0) + 1
        if key == "flaky" and attempts[key] < 3:
            return Failed("503 from the store", transient=True)
        if key == "broken":
            return Failed("disputed")
        if key == "clean":
            return NothingToUndo("already clean")
        return Done("ok")

    start_compensator(kv_handlers([], outcome))
    qid = quarantine(ctx)
    wait_until(lambda: plan_state(fresh_dsn, qid) == "done", what="the plan")
    assert attempts == {"clean": 1, "broken": 1, "flaky": 3}
    states = dict(rows(fresh_dsn, "SELECT tool || ':' || seq, state FROM compensator_actions"))
    assert sorted(states.values()) == ["done", "failed", "nothing"]
    tasks = rows(fresh_dsn, "SELECT kind, reason FROM compensator_tasks")
    kinds = sorted(f"{kind}:{reason}" for kind, reason in tasks)
    assert kinds == ["call:failed_for_good", "call:irreversible", "plan:plan"]
    wait_until(
        lambda: len(rows(fresh_dsn, PUBLISHED)) == 3,
        what="escalation events",
    )
    # a duplicate quarantine starts nothing; a release lifts the gate
    quarantine(ctx, reason="again")
    release(ctx, qid)
    wait_until(lambda: plan_state(fresh_dsn, qid) == "released", what="the release")
    assert len(rows(fresh_dsn, "SELECT 1 FROM compensator_plans")) == 1
    wait_until(lambda: emitter.gate.check(wf) is None, what="the gate to open")
    assert ctx.call("kv.put", lambda key: key, {"key": "after"}) == "after"


def test_forged_compensator_events_cannot_suppress_an_undo(emitter, start_compensator, fresh_dsn):
    """An agent that can write the events topic forges a CompensationResult ok and an
    Escalation for its own call before the quarantine: the call is still compensated, and
    the forged result settles nothing."""
    wf = new_wf()
    ctx = emitter.workflow(wf, agent_id="bot", principal="mallory")
    ctx.call("kv.put", lambda key: key, {"key": "stolen"})
    emitter.flush(10)
    from wakeline.compensator.registry import idempotency_key

    intent = [e for e in _events_of(emitter, wf) if e["type"] == "ToolIntent"][0]
    forged = ctx.envelope("CompensationResult")
    forged.update(
        agent_id="wakeline-compensator",
        principal="wakeline-compensator",
        original_event_id=intent["event_id"],
        compensation="kv.undo",
        idempotency_key=idempotency_key(intent["event_id"], "kv.undo"),
        attempt=1,
        status="ok",
        error_type=None,
        error_message=None,
        final=True,
        duration_us=1,
        external_ids={},
    )
    ctx.emit(forged, wait=True)
    escalation = ctx.envelope("Escalation")
    escalation.update(
        summary="handled",
        undone=[],
        not_undone=[],
        recommended_actions=[],
        related_event_ids=[intent["event_id"]],
        quarantine_id=None,
        task_id=None,
    )
    ctx.emit(escalation, wait=True)
    done = []
    start_compensator(kv_handlers(done))
    qid = quarantine(ctx)
    wait_until(lambda: plan_state(fresh_dsn, qid) == "done", what="the plan")
    assert [d[0] for d in done] == ["stolen"]


def test_escalations_are_posted_to_the_webhook(emitter, start_compensator, fresh_dsn):
    """Each task's Escalation is published, then POSTed (Slack-compatible) to the webhook;
    a 500 is retried."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from wakeline.compensator.notify import Webhook

    posted: list[dict] = []
    answers = [500]

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            body = self.rfile.read(int(self.headers["Content-Length"]))
            code = answers.pop(0) if answers else 200
            if code == 200:
                posted.append(json.loads(body))
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        wf = new_wf()
        ctx = emitter.workflow(wf, agent_id="bot", principal="alice")
        ctx.call("kv.burn", lambda key: key, {"key": "ashes"})
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        hook = Webhook(url, attempts=3, backoff_initial_s=0.01, backoff_max_s=0.05)
        daemon = start_compensator(kv_handlers([]))
        daemon.executor.notifier = hook
        qid = quarantine(ctx)
        wait_until(lambda: plan_state(fresh_dsn, qid) == "done", what="the plan")
        wait_until(lambda: len(posted) == 2, what="two notifications")
        assert all("text" in p and "blocks" in p for p in posted)
        assert any("kv.burn" in json.dumps(p) for p in posted)
        notified = rows(fresh_dsn, "SELECT notify_attempts FROM compensator_tasks")
        assert sorted(n for (n,) in notified) == [1, 2]
    finally:
        server.shutdown()
