"""The incident report: plain language and JSON, from hand-made events and `build_plan`."""

from __future__ import annotations

import json

from wakeline.compensator.plan import Scope, Step, build_plan
from wakeline.compensator.report import (
    PROOF_COMMAND,
    ActionOutcome,
    Position,
    Report,
    call_report,
    plan_report,
)
from wakeline.producers.registry import ToolRegistry

from .eventkit import T0, Events, handlers

NOW = T0 + 60_000_000
EMAIL_ARGS = '{"body":"blake3:0011","subject":"Your refund","to":"ada@example.com"}'


def tools() -> ToolRegistry:
    reg = ToolRegistry()
    reg.declare("stripe.charge", compensation="stripe.refund", advice="refund {charge_id}")
    reg.declare(
        "email.send",
        compensation="email.recall",
        digest_only={"body"},
        advice="send a correction to {to}",
    )
    reg.declare("crm.update", compensation="crm.restore", advice="restore {record} by hand")
    reg.declare("vm.create", advice="delete VM {vm_id}")
    return reg


def story() -> tuple[Events, dict[str, dict]]:
    """A workflow with one call of each fate, then a quarantine."""
    ev = Events()
    calls = {}
    calls["read"] = ev.call("kb.read", reversibility="read", compensation=None)
    calls["charge"] = ev.intent()
    ev.result(calls["charge"], external_ids={"charge_id": "ch_7"}, summary="charged EUR 12.99")
    calls["crm"] = ev.call("crm.update", compensation="crm.restore", args='{"record":"r1"}')
    calls["email"] = ev.intent(
        "email.send", compensation=None, reversibility="irreversible", args=EMAIL_ARGS
    )
    ev.result(calls["email"], external_ids={"message_id": "m_1"}, summary="queued m_1")
    calls["unknown"] = ev.intent(args='{"customer":"cus_2"}')  # no result: outcome unknown
    calls["vm"] = ev.intent("vm.create", compensation="vm.delete", run="run-2")
    ev.result(calls["vm"], external_ids={"vm_id": "vm-9"})
    ev.quarantine()
    return ev, calls


def positions(ev: Events, ledgered: int) -> dict[str, Position]:
    return {
        e["event_id"]: Position(3, i, i if i < ledgered else None) for i, e in enumerate(ev.events)
    }


def report_of(ev: Events, outcomes: dict[str, ActionOutcome] | None = None) -> Report:
    quarantine = ev.events[-1]
    steps = build_plan(ev.events, handlers(), scope=Scope.of(quarantine), now_us=NOW)
    return plan_report(
        workflow_id="wf-1",
        quarantine=quarantine,
        events=ev.events,
        steps=steps,
        outcomes=outcomes or {},
        positions=positions(ev, ledgered=4),
        tools=tools(),
    )


def step_of(ev: Events, intent: dict) -> Step:
    steps = build_plan(ev.events, handlers(), scope=Scope(), now_us=NOW)
    return next(s for s in steps if s.intent_id == intent["event_id"])


def test_plan_report_tells_the_whole_story_oldest_call_first() -> None:
    ev, c = story()
    done = ActionOutcome("done", "refunded ch_7", 1, {"refund_id": "re_1"}, "stripe.refund")
    nothing = ActionOutcome("nothing", "already restored", 1, {}, "crm.restore")
    r = report_of(ev, {c["charge"]["event_id"]: done, c["crm"]["event_id"]: nothing})
    text = r.text
    assert r.title == "Workflow wf-1 quarantined: 2 call(s) undone, 3 call(s) need a human"
    assert text.startswith(r.title)
    assert "quarantined at 2026-05-28T20:26:" in text and "by ops@example.com: runaway" in text
    timeline = text[text.index("What the agent did") : text.index("Undone, and how")]
    order = ["kb.read", "stripe.charge (run run-1): ok: charged EUR 12.99", "crm.update"]
    order += ["email.send", "stripe.charge (run run-1): no result recorded", "vm.create"]
    at = [timeline.index(s) for s in order]
    assert at == sorted(at), timeline
    assert "(6 call(s))" in timeline
    # undone and how
    assert len(r.undone) == 2
    assert "undone by stripe.refund: refunded ch_7 (obtained refund_id=re_1)" in r.undone[0]
    assert "nothing to undo, said crm.restore: already restored" in r.undone[1]
    # not undone and why, oldest first
    assert [line.split(" ")[0] for line in r.not_undone] == [
        "email.send",
        "stripe.charge",
        "vm.create",
    ]
    assert "declared irreversible" in r.not_undone[0]
    assert "outcome unknown" in r.not_undone[1]
    assert "vm.delete, which no loaded handler module provides" in r.not_undone[2]
    # recommended actions: the tool's advice filled in, the check first when unknown
    assert r.recommended[0] == "send a correction to ada@example.com"
    assert r.recommended[1].startswith("check whether stripe.charge (run run-1, intent ")
    assert r.recommended[1].endswith("took effect before undoing it; if it did: undo it by hand")
    assert r.recommended[2] == "delete VM vm-9"
    assert PROOF_COMMAND in r.recommended[-1]
    # the ledger positions, and the proof command
    q = ev.events[-1]["event_id"]
    assert f"{c['charge']['event_id']}  ToolIntent stripe.charge: partition 3 offset 2, leaf 2" in (
        text
    )
    assert f"{q}  Quarantine: partition 3 offset 11" in text
    assert r.related_event_ids == [
        q,
        c["email"]["event_id"],
        c["unknown"]["event_id"],
        c["vm"]["event_id"],
    ]


def test_plan_report_data_is_json_with_the_same_content() -> None:
    ev, c = story()
    r = report_of(ev)
    data = json.loads(json.dumps(r.data))
    assert data["kind"] == "plan" and data["workflow_id"] == "wf-1"
    assert data["quarantine"]["event_id"] == ev.events[-1]["event_id"]
    assert [x["tool"] for x in data["calls"]][:2] == ["kb.read", "stripe.charge"]
    assert data["counts"] == {"calls": 6, "undone": 0, "not_undone": 5, "nothing_to_undo": 1}
    charge = next(s for s in data["steps"] if s["intent_id"] == c["charge"]["event_id"])
    assert charge["fate"] == "not_undone" and charge["fate_reason"] == "in_progress"
    assert charge["advice"].startswith("wait for stripe.refund to finish")  # not "refund ch_7"
    assert charge["external_ids"] == {"charge_id": "ch_7"}
    assert data["positions"][c["charge"]["event_id"]] == {
        "partition": 3,
        "offset": 2,
        "leaf_index": 2,
    }
    assert data["recommended"] == r.recommended
    assert data["proof_command"] == PROOF_COMMAND


def test_failed_and_cancelled_compensations_are_not_undone_with_their_reason() -> None:
    ev, c = story()
    failed = ActionOutcome("failed", "card disputed", 3, compensation="stripe.refund")
    cancelled = ActionOutcome("cancelled", compensation="crm.restore")
    r = report_of(ev, {c["charge"]["event_id"]: failed, c["crm"]["event_id"]: cancelled})
    assert r.undone == []
    assert any("stripe.refund failed for good after 3 attempt(s): card disputed" in x for x in
               r.not_undone)  # fmt: skip
    assert any("the quarantine was released before crm.restore ran" in x for x in r.not_undone)
    assert "refund ch_7" in r.recommended
    cancelled_advice = next(a for a in r.recommended if c["crm"]["event_id"] in a)
    assert cancelled_advice.startswith("confirm that crm.update (run run-1, intent ")
    assert cancelled_advice.endswith("; if not: restore r1 by hand")
    assert "Undone, and how:\n  nothing was undone" in r.text


def test_call_report_is_the_story_of_one_escalated_call() -> None:
    ev, c = story()
    q = ev.events[-1]
    step = step_of(ev, c["email"])
    r = call_report(
        workflow_id="wf-1", quarantine=q, step=step, positions=positions(ev, 99), tools=tools()
    )
    assert r.title == "email.send in workflow wf-1 needs a human: it cannot be undone automatically"
    assert r.undone == [] and len(r.not_undone) == 1
    assert r.recommended[0] == "send a correction to ada@example.com"
    assert r.related_event_ids == [c["email"]["event_id"], ev.events[7]["event_id"], q["event_id"]]
    assert "email.send (run run-1): ok: queued m_1" in r.text
    assert "ToolResult email.send: partition 3 offset 7, leaf 7" in r.text
    assert r.data["kind"] == "call" and r.data["call"]["intent_id"] == c["email"]["event_id"]
    json.dumps(r.data)


def test_call_report_of_a_compensation_that_failed_for_good() -> None:
    ev, c = story()
    step = step_of(ev, c["charge"])
    assert step.action == "compensate"
    outcome = ActionOutcome("failed", "card disputed", 5, compensation="stripe.refund")
    r = call_report(
        workflow_id="wf-1",
        quarantine=ev.events[-1],
        step=step,
        positions={},
        tools=tools(),
        outcome=outcome,
    )
    assert r.title.endswith("needs a human: its compensating action failed for good")
    assert "failed for good after 5 attempt(s): card disputed" in r.not_undone[0]
    assert r.recommended[0] == "refund ch_7"
    assert "position unknown" in r.text


def test_advice_never_shows_a_redacted_value_and_falls_back_to_generic() -> None:
    ev = Events()
    reg = ToolRegistry()
    reg.declare("pay", advice="call {customer} about {card.last4}")
    reg.declare("mail", advice="write to {to}")
    reg.declare("bad", advice="look at {args}")
    # the intent recorded `card` as redacted (an older spec); the advice names it
    card = ev.intent("pay", compensation=None, args='{"customer":"cus_1","card":{"last4":"4242"}}')
    card["redacted_fields"] = ["card"]
    # a digest or a redaction marker in the logged value is no advice either
    digest = ev.intent("mail", compensation=None, args='{"to":"blake3:00ff"}')
    marker = ev.intent("mail", compensation=None, args='{"to":"[REDACTED]"}')
    missing = ev.intent("mail", compensation=None, args="not json")
    nested = ev.intent("bad", compensation=None, args='{"args":{"x":1}}')
    ev.quarantine()
    steps = build_plan(ev.events, handlers(), scope=Scope(), now_us=NOW)
    r = plan_report(
        workflow_id="wf-1",
        quarantine=ev.events[-1],
        events=ev.events,
        steps=steps,
        outcomes={},
        positions={},
        tools=reg,
    )
    assert "4242" not in r.text and "4242" not in json.dumps(r.data)
    assert "00ff" not in " ".join(r.recommended)
    assert "[REDACTED]" not in " ".join(r.recommended)
    for intent in (card, digest, marker, missing, nested):
        advice = next(a for a in r.recommended if intent["event_id"] in a)
        assert "check whether" in advice  # no result: unknown, generic advice, never a raise


def test_generic_advice_per_reason() -> None:
    ev = Events()
    irreversible = ev.call("wire.send", compensation=None, reversibility="irreversible")
    none = ev.call("crm.note", compensation=None)
    window = ev.call("email.send", compensation="email.recall", undo_window_us=1_000_000)
    ev.quarantine()
    steps = build_plan(ev.events, handlers(), scope=Scope(), now_us=NOW)
    r = plan_report(
        workflow_id="wf-1",
        quarantine=ev.events[-1],
        events=ev.events,
        steps=steps,
        outcomes={},
        positions={},
    )
    by = {i["event_id"]: next(a for a in r.recommended if i["event_id"] in a) for i in
          (irreversible, none, window)}  # fmt: skip
    assert "it cannot be undone automatically" in by[irreversible["event_id"]]
    assert "declares no compensating action" in by[none["event_id"]]
    assert "its undo window has closed" in by[window["event_id"]]


def test_a_report_of_nothing_left_to_do() -> None:
    ev = Events()
    charge = ev.call()
    ev.compensated(charge)
    ev.quarantine()
    r = report_of(ev)
    assert (
        r.title
        == "Workflow wf-1 quarantined: 1 call(s) undone, everything that could be undone was"
    )
    assert "undone earlier by stripe.refund (event " in r.undone[0]
    assert "nothing: every call is settled" in r.text
    assert r.related_event_ids == [ev.events[-1]["event_id"]]
    assert len(r.recommended) == 1  # only how to get a proof


def test_a_released_quarantine_says_so_and_lists_the_cancelled_calls() -> None:
    ev = Events()
    charge = ev.call()
    q = ev.quarantine()
    release = ev.release(q)
    steps = build_plan(ev.events, handlers(), scope=Scope.of(q), now_us=NOW)
    r = plan_report(
        workflow_id="wf-1",
        quarantine=q,
        events=ev.events,
        steps=steps,
        outcomes={charge["event_id"]: ActionOutcome("cancelled", compensation="stripe.refund")},
        positions=positions(ev, ledgered=99),
    )
    assert "It was released at " in r.text and "by ops@example.com: fixed" in r.text
    assert r.data["release"]["event_id"] == release["event_id"]
    assert f"{release['event_id']}  Release: partition 3 offset 3, leaf 3" in r.text
    assert "released before stripe.refund ran" in r.not_undone[0]
    assert r.recommended[0].startswith("confirm that stripe.charge (run run-1, intent ")


def test_a_large_plan_is_reported_whole() -> None:
    ev = Events()
    intents = [ev.call() for _ in range(500)]
    q = ev.quarantine()
    steps = build_plan(ev.events, handlers(), scope=Scope.of(q), now_us=NOW)
    done = ActionOutcome("done", "refunded", 1, compensation="stripe.refund")
    r = plan_report(
        workflow_id="wf-1",
        quarantine=q,
        events=ev.events,
        steps=steps,
        outcomes={i["event_id"]: done for i in intents},
        positions=positions(ev, ledgered=len(ev.events)),
    )
    assert len(r.undone) == 500 and r.not_undone == []
    assert r.undone[0].startswith(f"stripe.charge (run run-1, {_iso(intents[0])}")
    assert len(r.data["positions"]) == 1001


def _iso(event: dict) -> str:
    from wakeline.schemas import rfc3339_micros

    return rfc3339_micros(event["time"])


def test_positions_and_outcomes_from_the_daemons_shapes() -> None:
    from types import SimpleNamespace

    assert Position.of((3, 7)) == Position(3, 7, None)
    assert Position.of((3, 7, 2)) == Position(3, 7, 2)
    assert Position.of({"partition": 3, "offset": 7, "leaf_index": 2}) == Position(3, 7, 2)
    assert Position.of(Position(1, 2)) == Position(1, 2)
    row = SimpleNamespace(
        state="done", detail="ok", attempts=2, external_ids={"r": "1"}, compensation="c"
    )
    assert ActionOutcome.of(row) == ActionOutcome("done", "ok", 2, {"r": "1"}, "c")
