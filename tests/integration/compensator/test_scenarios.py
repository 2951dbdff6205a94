"""The compensator's scenarios over the example world (in-process daemon, real broker and
PostgreSQL): retries, failures for good, duplicates, late results, garbage on the topic, a
delivered e-mail, a release, a run scope, and events forged by a third party.

What the daemon does with forged events (docs/compensation.md, "Forged and misdirected
events"): an event whose record key is not its workflow_id is dead-lettered, never acted
on; a Release lifts only a quarantine of its own workflow; a CompensationResult or
CompensationStarted counts only for an attempt the daemon's own state recorded (the plan's
action, with its idempotency key, leased at least that many times), so no action is marked
done, or left out of a plan, because someone said so: a handler must have run.
"""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import Producer

from wakeline.compensator.registry import idempotency_key
from wakeline.infra.settings import KafkaSettings
from wakeline.producers import Emitter
from wakeline.producers.errors import WorkflowQuarantined
from wakeline.producers.workflow import WorkflowContext
from wakeline.schemas import cloudevents_headers, encode_event
from wakeline.testkit.harness import read_topic

from .conftest import (
    act_on_world,
    assert_undone_once,
    new_wf,
    ok_results,
    plan_state,
    quarantine,
    release,
    rows,
    topic_events,
    wait_until,
    world_args,
)

pytestmark = pytest.mark.integration

ACTIONS = "SELECT tool, state, attempts, failures, detail FROM compensator_actions " \
          "WHERE quarantine_id = %s ORDER BY seq"  # fmt: skip
TASKS = "SELECT kind, reason, report FROM compensator_tasks WHERE quarantine_id = %s"


@pytest.fixture
def ctx(world_emitter: Emitter) -> WorkflowContext:
    return world_emitter.workflow(new_wf(), agent_id="bot", principal="alice@example.com")


def produce(kafka: KafkaSettings, key: bytes, value: bytes, headers: Any = None) -> None:
    p = Producer(kafka.client_config(**{"acks": "all"}))
    p.produce(kafka.topics.events, value=value, key=key, headers=headers)
    assert p.flush(15) == 0


def forge(kafka: KafkaSettings, event: dict[str, Any], key: bytes | None = None) -> None:
    """Produce `event` as a third party would, keyed `key` (default: its workflow id)."""
    key = event["workflow_id"].encode() if key is None else key
    produce(kafka, key, encode_event(event), cloudevents_headers(event))


def done(dsn: str, qid: str) -> bool:
    return plan_state(dsn, qid) == "done"


# -- retries, failures, duplicates, late results ------------------------------------------------


def test_a_transient_failure_succeeds_on_retry_and_a_permanent_one_is_escalated(
    world, handlers, ctx, start_compensator, fresh_kafka, fresh_dsn
):
    """Refunds fail twice, then work; the restore fails for good (escalated with its task
    and Escalation event); the VM, older than both, is still deleted."""
    calls = act_on_world(ctx, world, 3, ("cloud.create_vm", "crm.update", "payments.charge"))
    world.inject("payments.refund", "transient", times=2)
    world.inject("crm.restore", "permanent", match=calls[1][1]["record_id"], message="locked")
    start_compensator(handlers)
    qid = quarantine(ctx)
    wait_until(lambda: done(fresh_dsn, qid), what="the plan")
    got = rows(fresh_dsn, ACTIONS, qid)
    assert [(a[0], a[1], a[2], a[3]) for a in got] == [
        ("payments.charge", "done", 3, 2),
        ("crm.update", "failed", 1, 1),
        ("cloud.create_vm", "done", 1, 0),
    ]
    assert_undone_once(world, [calls[0], calls[2]])
    assert world.performed("crm.restore") == {}
    tasks = {(k, r): text for k, r, text in rows(fresh_dsn, TASKS, qid)}
    assert set(tasks) == {("call", "failed_for_good"), ("plan", "plan")}
    assert "locked" in tasks[("call", "failed_for_good")]
    events = topic_events(fresh_kafka, ctx.workflow_id)
    refunds = [e for e in events if e["type"] == "CompensationResult"
               and e["compensation"] == "payments.refund"]  # fmt: skip
    assert [(e["status"], e["error_type"], e["final"]) for e in refunds] == [
        ("failed", "transient", False), ("failed", "transient", False), ("ok", None, True)
    ]  # fmt: skip
    wait_until(lambda: sum(e["type"] == "Escalation"
                           for e in topic_events(fresh_kafka, ctx.workflow_id)) == 2,
               what="the call's and the plan's Escalation events")  # fmt: skip


def test_a_duplicate_quarantine_is_a_no_op(
    world, handlers, ctx, start_compensator, fresh_kafka, fresh_dsn
):
    """A second Quarantine of the workflow, and the first one delivered again, start
    nothing: one plan, each undo once."""
    calls = act_on_world(ctx, world, 4)
    daemon = start_compensator(handlers)
    qid = quarantine(ctx, reason="first")
    wait_until(lambda: done(fresh_dsn, qid), what="the plan")
    quarantine(ctx, reason="second")
    first = next(m for m in read_topic(fresh_kafka, fresh_kafka.topics.events, idle=0.5)
                 if m.key() == ctx.workflow_id.encode() and b"Quarantine" in m.value())  # fmt: skip
    produce(fresh_kafka, first.key(), first.value(), first.headers())
    wait_until(lambda: daemon.processor.duplicates == 1, what="the duplicate")
    marker = quarantine(ctx.emitter.workflow(new_wf(), agent_id="bot", principal="x"))
    wait_until(lambda: plan_state(fresh_dsn, marker) is not None, what="a later quarantine")
    assert rows(fresh_dsn, "SELECT quarantine_id FROM compensator_plans "
                "WHERE workflow_id = %s", ctx.workflow_id) == [(qid,)]  # fmt: skip
    assert_undone_once(world, calls)


def test_a_late_result_joins_the_plan(world, handlers, ctx, start_compensator, fresh_dsn):
    """The intent is recorded, the workflow is quarantined while the call runs, then its
    result ok arrives: the call joins the plan and is compensated."""
    start_compensator(handlers, unknown_grace_s=60)
    call = ctx.begin("payments.charge", world_args("payments.charge", "late"))
    qid = quarantine(ctx)
    wait_until(lambda: plan_state(fresh_dsn, qid) is not None, what="the plan")
    assert rows(fresh_dsn, ACTIONS, qid) == []
    response = world.payments.charge(**call.args)
    call.ok(response)
    wait_until(lambda: done(fresh_dsn, qid) and rows(fresh_dsn, ACTIONS, qid), what="the refund")
    assert rows(fresh_dsn, ACTIONS, qid)[0][:2] == ("payments.charge", "done")
    assert_undone_once(world, [("payments.charge", response)])


# -- garbage, e-mail, release, scope ------------------------------------------------------------


def test_a_malformed_event_goes_to_the_dlq_and_the_daemon_keeps_going(
    world, handlers, ctx, start_compensator, fresh_kafka, fresh_dsn
):
    daemon = start_compensator(handlers)
    produce(fresh_kafka, b"wf-garbage", b"\x00\xffnot an avro frame at all\x13\x37")
    calls = act_on_world(ctx, world, 2)
    qid = quarantine(ctx)
    wait_until(lambda: done(fresh_dsn, qid), what="the plan after the garbage")
    assert_undone_once(world, calls)
    assert daemon.processor.dead_lettered == 1
    dlq = [m for m in read_topic(fresh_kafka, fresh_kafka.topics.dlq, idle=0.5)
           if m.key() == b"wf-garbage"]  # fmt: skip
    assert len(dlq) == 1
    headers = dict(dlq[0].headers())
    assert headers["wakeline_dlq_component"] == b"compensator"
    assert headers["wakeline_dlq_reason"]  # why it does not decode
    assert dlq[0].value() == b"\x00\xffnot an avro frame at all\x13\x37"


def test_a_delivered_email_is_escalated_with_the_correction_advice(
    world, handlers, ctx, start_compensator, fresh_kafka, fresh_dsn
):
    (sent,) = act_on_world(ctx, world, 1, ("email.send",))
    assert world.email.deliver_queued() == [sent[1]["message_id"]]
    start_compensator(handlers)
    qid = quarantine(ctx)
    wait_until(lambda: done(fresh_dsn, qid), what="the plan")
    ((tool, state, *_),) = rows(fresh_dsn, ACTIONS, qid)
    assert (tool, state) == ("email.send", "failed")
    advice = f"send a correction to {sent[1]['to']}"
    tasks = {(k, r): text for k, r, text in rows(fresh_dsn, TASKS, qid)}
    assert advice in tasks[("call", "failed_for_good")]
    assert advice in tasks[("plan", "plan")]
    assert world.email.message(sent[1]["message_id"])["status"] == "delivered"
    wait_until(lambda: any(e["type"] == "Escalation" and advice in e["summary"]
                           for e in topic_events(fresh_kafka, ctx.workflow_id)),
               what="the Escalation event")  # fmt: skip


def test_a_release_lifts_the_gate_without_undoing_what_was_done(
    world, handlers, ctx, start_compensator, fresh_dsn
):
    """Released mid-plan: what was compensated stays compensated, what had not started is
    cancelled (not undone), and the workflow may act again."""
    calls = act_on_world(ctx, world, 4, ("payments.charge",))
    world.inject("payments.refund", "delay", times=None, delay_s=0.5)
    start_compensator(handlers)
    qid = quarantine(ctx)
    gate = ctx.emitter.gate
    wait_until(lambda: gate.check(ctx.workflow_id) is not None, what="the gate to close")
    wait_until(lambda: any(a[1] == "done" for a in rows(fresh_dsn, ACTIONS, qid)), what="a refund")
    release(ctx, qid)
    wait_until(lambda: plan_state(fresh_dsn, qid) == "released", what="the release")
    wait_until(lambda: all(a[1] in ("done", "cancelled") for a in rows(fresh_dsn, ACTIONS, qid)),
               what="the running refund to end")  # fmt: skip
    states = [a[1] for a in rows(fresh_dsn, ACTIONS, qid)]
    assert "cancelled" in states and states == sorted(states, key=lambda s: s != "done")
    refunded = set(world.performed("payments.refund"))
    assert len(refunded) == states.count("done")
    assert refunded == {r["charge_id"] for _, r in calls[::-1][: states.count("done")]}
    wait_until(lambda: gate.check(ctx.workflow_id) is None, what="the gate to open")
    act_on_world(ctx, world, 1, ("crm.update",))
    assert set(world.performed("payments.refund")) == refunded


def test_a_run_scope_compensates_only_that_run(
    world, handlers, world_emitter, start_compensator, fresh_dsn
):
    wf = new_wf()
    first = world_emitter.workflow(wf, agent_id="bot", principal="alice", run_id="run-1")
    second = world_emitter.workflow(wf, agent_id="bot", principal="alice", run_id="run-2")
    calls_1 = act_on_world(first, world, 2, ("payments.charge",))
    calls_2 = act_on_world(second, world, 2, ("payments.charge",))
    start_compensator(handlers)
    qid = quarantine(first, scope="run", run_id="run-1")
    wait_until(lambda: done(fresh_dsn, qid), what="the plan")
    assert_undone_once(world, calls_1)
    assert all(world.payments.get(r["charge_id"])["refunded_cents"] == 0 for _, r in calls_2)


# -- forged and misdirected events --------------------------------------------------------------


def test_a_quarantine_of_one_workflow_keyed_as_another_is_dead_lettered(
    world, handlers, world_emitter, start_compensator, fresh_kafka, fresh_dsn
):
    """A Quarantine naming workflow A on B's key (so on B's partition, out of A's order)
    quarantines neither: it goes to the DLQ with the reason; both keep their effects."""
    a = world_emitter.workflow(new_wf(), agent_id="bot", principal="alice")
    b = world_emitter.workflow(new_wf(), agent_id="bot", principal="bob")
    calls = act_on_world(a, world, 1) + act_on_world(b, world, 1)
    daemon = start_compensator(handlers)
    forged = a.envelope("Quarantine")
    forged.update({"scope": "workflow", "reason": "forged", "by": "mallory", "alert_id": None,
                   "tainted_event_ids": []})  # fmt: skip
    forge(fresh_kafka, forged, key=b.workflow_id.encode())
    wait_until(lambda: daemon.processor.dead_lettered == 1, what="the DLQ record")
    dlq = read_topic(fresh_kafka, fresh_kafka.topics.dlq, idle=0.5)
    assert b"workflow_id" in dict(dlq[-1].headers())["wakeline_dlq_reason"]
    marker = quarantine(world_emitter.workflow(new_wf(), agent_id="bot", principal="x"))
    wait_until(lambda: plan_state(fresh_dsn, marker) is not None, what="a later quarantine")
    assert plan_state(fresh_dsn, forged["event_id"]) is None
    assert world.performed("payments.refund") == {}
    assert world_emitter.gate.check(a.workflow_id) is None
    assert world_emitter.gate.check(b.workflow_id) is None
    assert len(calls) == 2


def test_a_release_naming_another_workflows_quarantine_lifts_nothing(
    world, handlers, world_emitter, start_compensator, fresh_dsn
):
    a = world_emitter.workflow(new_wf(), agent_id="bot", principal="alice")
    b = world_emitter.workflow(new_wf(), agent_id="bot", principal="bob")
    act_on_world(a, world, 1)
    act_on_world(b, world, 1)
    start_compensator(handlers)
    qa, qb = quarantine(a), quarantine(b)
    wait_until(lambda: done(fresh_dsn, qa) and done(fresh_dsn, qb), what="both plans")
    release(b, qa)  # on B's partition, naming A's quarantine
    marker = quarantine(world_emitter.workflow(new_wf(), agent_id="bot", principal="x"))
    wait_until(lambda: plan_state(fresh_dsn, marker) is not None, what="a later quarantine")
    assert (plan_state(fresh_dsn, qa), plan_state(fresh_dsn, qb)) == ("done", "done")
    gate = world_emitter.gate
    wait_until(lambda: gate.check(b.workflow_id) is not None, what="B's gate (republished)")
    assert gate.check(a.workflow_id) is not None
    with pytest.raises(WorkflowQuarantined):
        act_on_world(a, world, 1)


def _forged_result(ctx: WorkflowContext, intent_id: str, run_id: str | None) -> dict[str, Any]:
    event = ctx.envelope("CompensationResult")
    event.update({
        "run_id": run_id or event["run_id"], "source": "wakeline://compensator/forged",
        "original_event_id": intent_id, "compensation": "payments.refund",
        "idempotency_key": idempotency_key(intent_id, "payments.refund"), "attempt": 1,
        "status": "ok", "error_type": None, "error_message": None, "final": True,
        "duration_us": 1, "external_ids": {},
    })  # fmt: skip
    return event


def test_a_forged_compensation_result_never_marks_an_action_done(
    world, handlers, ctx, start_compensator, fresh_kafka, fresh_dsn
):
    """A third party claims two refunds done that never ran: one before the quarantine
    (it would keep the call out of the plan), one naming the plan's action while it waits
    behind a slow one. Neither counts: each refund is made by the handler, once."""
    calls = act_on_world(ctx, world, 3, ("payments.charge",))
    intents = [e["event_id"] for e in topic_events(fresh_kafka, ctx.workflow_id)
               if e["type"] == "ToolIntent"]  # fmt: skip
    world.inject("payments.refund", "delay", match=calls[2][1]["charge_id"], delay_s=1.0)
    forge(fresh_kafka, _forged_result(ctx, intents[0], None))
    start_compensator(handlers)
    qid = quarantine(ctx)
    wait_until(lambda: [a[1] for a in rows(fresh_dsn, ACTIONS, qid)][:1] == ["running"],
               what="the slow first refund")  # fmt: skip
    forge(fresh_kafka, _forged_result(ctx, intents[1], qid))
    wait_until(lambda: done(fresh_dsn, qid), what="the plan")
    got = rows(fresh_dsn, ACTIONS, qid)
    assert [(a[1], a[2]) for a in got] == [("done", 1)] * 3, got
    assert_undone_once(world, calls)
    ok = ok_results(topic_events(fresh_kafka, ctx.workflow_id))
    assert set(ok) == set(intents)
