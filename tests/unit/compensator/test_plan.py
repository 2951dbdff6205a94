"""Every rule of the plan table (compensator/plan.py, docs/compensation.md), one test each."""

from __future__ import annotations

import pytest

from wakeline.compensator.plan import Scope, Step, active_quarantine, build_plan
from wakeline.compensator.registry import CompensationRegistry, idempotency_key

from .eventkit import T0, WORKFLOW, Events, handlers

NOW = T0 + 3600 * 1_000_000


def plan(
    ev: Events, reg: CompensationRegistry | None = None, *, scope: Scope = WORKFLOW, **kw
) -> list[Step]:
    return build_plan(
        ev.events, handlers() if reg is None else reg, scope=scope, now_us=kw.pop("now", NOW), **kw
    )


def only(steps: list[Step]) -> Step:
    assert len(steps) == 1, steps
    return steps[0]


def test_ok_with_a_handler_is_compensated_with_its_request() -> None:
    ev = Events()
    charge = ev.intent()
    ev.result(charge, external_ids={"charge_id": "ch_42"}, summary="charged USD 12.99")
    q = ev.quarantine()
    step = only(plan(ev, scope=Scope.of(q)))
    assert (step.action, step.reason) == ("compensate", "ok")
    assert step.why == (
        "stripe.charge succeeded (charged USD 12.99); stripe.refund will undo it using "
        "charge_id=ch_42"
    )
    req = step.request
    assert req is not None
    assert req.idempotency_key == idempotency_key(charge["event_id"], "stripe.refund")
    assert (req.attempt, req.quarantine_id, req.status) == (1, q["event_id"], "ok")
    assert dict(req.external_ids) == {"charge_id": "ch_42"}
    assert dict(req.args) == {"amount": 1299, "customer": "cus_1"}
    assert req.envelope.workflow_id == "wf-1" and req.envelope.principal == "alice@example.com"


def test_read_only_calls_are_skipped_even_without_a_result() -> None:
    ev = Events()
    ev.call("stripe.lookup", reversibility="read", compensation=None)
    ev.intent("crm.get", reversibility="read", compensation=None)
    steps = plan(ev)
    assert [(s.action, s.reason) for s in steps] == [("skip", "read_only")] * 2
    assert steps[0].why == "read-only: crm.get changed nothing"


@pytest.mark.parametrize(
    ("status", "reason", "why"),
    [
        ("denied", "denied", "refused before it ran (Refused: no): nothing happened"),
        ("error", "failed", "failed without effect: stripe.charge raised ValueError: no"),
    ],
)
def test_calls_that_failed_without_effect_are_skipped(status: str, reason: str, why: str) -> None:
    ev = Events()
    ev.result(ev.intent(), status, error_message="no")
    step = only(plan(ev))
    assert (step.action, step.reason, step.why) == ("skip", reason, why)


def test_no_result_is_outcome_unknown_and_escalated() -> None:
    ev = Events()
    ev.intent()
    step = only(plan(ev))
    assert (step.action, step.reason) == ("escalate", "outcome_unknown")
    assert step.why == (
        "outcome unknown: no result of stripe.charge was recorded (the agent may have crashed "
        "mid-call, or the call is still running); check before undoing"
    )
    assert step.request is None


@pytest.mark.parametrize(
    ("status", "error_type", "verb"),
    [
        ("aborted", "Aborted", "was aborted before it completed"),
        ("error", "TimeoutError", "timed out"),
        ("error", "httpx.ReadTimeout", "timed out"),
        ("error", "grpc.DEADLINE_TIME_OUT", "timed out"),
    ],
)
def test_aborts_and_timeouts_are_outcome_unknown(status: str, error_type: str, verb: str) -> None:
    ev = Events()
    ev.result(ev.intent(), status, error_type=error_type, error_message="gone")
    step = only(plan(ev))
    assert (step.action, step.reason) == ("escalate", "outcome_unknown")
    assert step.why == (
        f"outcome unknown: stripe.charge {verb} ({error_type}: gone); check before undoing"
    )


def test_outcome_unknown_is_compensated_when_the_handler_is_safe_if_unknown() -> None:
    ev = Events()
    ev.intent()
    step = only(plan(ev, handlers(safe_if_unknown=True)))
    assert (step.action, step.reason) == ("compensate", "outcome_unknown_safe")
    assert step.request is not None and step.request.status is None
    assert "declared safe to call even so" in step.why


def test_irreversible_is_escalated() -> None:
    ev = Events()
    ev.call("email.send", reversibility="irreversible", compensation="email.recall")
    step = only(plan(ev))
    assert (step.action, step.reason) == ("escalate", "irreversible")
    assert step.why.startswith("email.send is declared irreversible")


def test_irreversible_with_an_unknown_outcome_says_both() -> None:
    ev = Events()
    ev.intent("email.send", reversibility="irreversible", compensation=None)
    step = only(plan(ev))
    assert step.reason == "irreversible"
    assert "outcome unknown: no result of email.send" in step.why


def test_no_compensation_declared_is_escalated() -> None:
    ev = Events()
    ev.call("crm.update", compensation=None)
    step = only(plan(ev))
    assert (step.action, step.reason) == ("escalate", "no_compensation")
    assert step.why == "crm.update declares no compensating action: a human must undo it"


def test_a_compensation_no_module_provides_is_escalated_never_guessed() -> None:
    ev = Events()
    ev.call("stripe.charge", compensation="stripe.void")
    step = only(plan(ev))
    assert (step.action, step.reason) == ("escalate", "unknown_compensation")
    assert "stripe.void, which no loaded handler module provides" in step.why


def test_the_compensation_recorded_in_the_intent_is_used_not_another() -> None:
    ev = Events()
    ev.call("stripe.charge", compensation="crm.restore")  # what the tool said at call time
    step = only(plan(ev))
    assert step.request is not None and step.request.compensation == "crm.restore"


def test_inside_the_undo_window_is_compensated_past_it_is_escalated() -> None:
    ev = Events()
    i = ev.call("email.send", compensation="email.recall", undo_window_us=60_000_000)
    inside = only(plan(ev, now=i["time"] + 60_000_000))
    assert inside.action == "compensate"
    past = only(plan(ev, now=i["time"] + 60_000_001))
    assert (past.action, past.reason) == ("escalate", "undo_window")
    assert past.why == (
        "past its undo window: email.send could be undone until 2026-05-28T20:27:41.000000Z "
        "(60 s after the call), it is now 2026-05-28T20:27:41.000001Z"
    )


def test_already_compensated_is_skipped() -> None:
    ev = Events()
    i = ev.call()
    done = ev.compensated(i, "ok")
    step = only(plan(ev))
    assert (step.action, step.reason, step.compensated_by) == (
        "skip",
        "already_compensated",
        done["event_id"],
    )
    ev2 = Events()
    i2 = ev2.call()
    ev2.compensated(i2, "skipped")  # applied earlier under the same idempotency key
    assert only(plan(ev2)).reason == "already_compensated"


def test_compensated_from_the_daemons_state_is_skipped() -> None:
    ev = Events()
    i = ev.call()
    step = only(plan(ev, compensated={i["event_id"]}))
    assert (step.action, step.reason) == ("skip", "already_compensated")


def test_a_result_of_another_compensation_does_not_count() -> None:
    ev = Events()
    i = ev.call()
    other = dict(i, compensation="crm.restore")
    ev.compensated(other, "ok")
    assert only(plan(ev)).action == "compensate"


def test_retries_continue_from_the_last_attempt() -> None:
    ev = Events()
    i = ev.call()
    ev.started(i, 1)
    ev.compensated(i, "failed", attempt=1, final=False, error="503")
    ev.started(i, 2)  # then the compensator died
    step = only(plan(ev))
    assert step.action == "compensate"
    assert step.request is not None and step.request.attempt == 3
    assert step.request.idempotency_key == idempotency_key(i["event_id"], "stripe.refund")


def test_a_compensation_that_failed_for_good_is_escalated() -> None:
    ev = Events()
    i = ev.call()
    ev.compensated(i, "failed", final=True, error="charge already disputed")
    esc = ev.escalation(i)
    step = only(plan(ev))
    assert (step.action, step.reason, step.escalated_by) == (
        "escalate",
        "failed_for_good",
        esc["event_id"],
    )
    assert "failed for good (charge already disputed)" in step.why


def test_an_earlier_escalation_is_remembered_not_filed_again() -> None:
    ev = Events()
    i = ev.intent()
    esc = ev.escalation(i)
    step = only(plan(ev))
    assert (step.action, step.escalated_by) == ("escalate", esc["event_id"])


def test_a_result_after_the_quarantine_joins_the_plan() -> None:
    ev = Events()
    running = ev.intent()
    q = ev.quarantine()
    assert only(plan(ev, scope=Scope.of(q))).reason == "outcome_unknown"
    ev.result(running, "ok")  # the call that was already running finished
    step = only(plan(ev, scope=Scope.of(q)))
    assert (step.action, step.reason) == ("compensate", "ok")


def test_the_plan_is_newest_first() -> None:
    ev = Events()
    a = ev.call("stripe.charge")
    b = ev.call("crm.update", compensation="crm.restore")
    late = ev.intent("email.send", compensation="email.recall")
    c = ev.call("stripe.charge")
    ev.result(late, "ok")
    steps = plan(ev)
    assert [s.intent_id for s in steps] == [e["event_id"] for e in (c, late, b, a)]


def test_run_scope_takes_that_run_only_workflow_scope_every_run() -> None:
    ev = Events()
    r1 = ev.call(run="run-1")
    r2 = ev.call(run="run-2")
    q = ev.quarantine("run", run="run-2")
    assert [s.intent_id for s in plan(ev, scope=Scope.of(q))] == [r2["event_id"]]
    assert [s.intent_id for s in plan(ev)] == [r2["event_id"], r1["event_id"]]
    with pytest.raises(ValueError, match="run_id"):
        Scope("run")


def test_tainted_scope_takes_what_descends_from_the_tainted_events() -> None:
    ev = Events()
    read = ev.call("kb.read", reversibility="read", compensation=None)
    used = ev.call(parents=[read["event_id"]])
    grandchild = ev.call("crm.update", compensation="crm.restore", parents=[used["event_id"]])
    ev.call()  # unrelated
    q = ev.quarantine("tainted", tainted=[read["event_id"]])
    steps = plan(ev, scope=Scope.of(q))
    assert [s.intent_id for s in steps] == [
        grandchild["event_id"],
        used["event_id"],
        read["event_id"],
    ]


def test_a_redelivered_intent_is_one_call_and_an_ok_duplicate_result_wins() -> None:
    ev = Events()
    i = ev.intent()
    ev.events.append(dict(i))
    ev.result(i, "aborted")
    ev.result(i, "ok")
    step = only(plan(ev))
    assert (step.action, step.reason) == ("compensate", "ok")


def test_the_active_quarantine_is_the_latest_not_released() -> None:
    ev = Events()
    assert active_quarantine(ev.events) is None
    q1 = ev.quarantine()
    ev.release(q1)
    assert active_quarantine(ev.events) is None
    q2 = ev.quarantine("run", run="run-1")
    ev.release(q1)  # an old release does not lift the new one
    assert active_quarantine(ev.events) == q2
    ev.release()
    assert active_quarantine(ev.events) is None


def test_steps_serialise_for_machines() -> None:
    ev = Events()
    i = ev.call()
    got = only(plan(ev)).to_json()
    assert got["action"] == "compensate" and got["intent_id"] == i["event_id"]
    assert got["idempotency_key"].startswith("wl-") and got["attempt"] == 1


def test_agent_scope_takes_the_agents_calls_since_its_time_and_boundary_scope_its_calls() -> None:
    ev = Events()
    before = ev.call()  # the agent's, but before `since`
    mine = ev.call()
    other = ev.call()
    other["agent_id"] = "careful-bot"
    walled = ev.call()
    walled["boundary"] = "tenant-a"
    since = mine["time"]
    scope = Scope.of({"event_id": "q", "scope": "agent", "target": "billing-bot", "since": since})
    assert (scope.kind, scope.target, scope.since) == ("agent", "billing-bot", since)
    assert [s.intent_id for s in plan(ev, scope=scope)] == [walled["event_id"], mine["event_id"]]
    assert before["event_id"] not in {s.intent_id for s in plan(ev, scope=scope)}
    scope = Scope.of({"event_id": "q", "scope": "boundary", "target": "tenant-a"})
    assert [s.intent_id for s in plan(ev, scope=scope)] == [walled["event_id"]]
    assert scope.describe() == "calls in boundary tenant-a"
    # without a target it stops more, never less: the whole workflow
    assert Scope.of({"event_id": "q", "scope": "agent", "target": None}).kind == "workflow"
    with pytest.raises(ValueError, match="target"):
        Scope("boundary")
