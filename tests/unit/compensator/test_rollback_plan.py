"""A rollback's plan: a run quarantine with `after_event_id` undoes only what came after
its checkpoint (compensator/plan.py `after_checkpoint`), and the quarantines in force say
when a new one is a duplicate (compensator/processor.py `_covers`)."""

from __future__ import annotations

from wakeline.compensator.plan import Scope, build_plan
from wakeline.compensator.processor import _covers

from .eventkit import T0, Events, handlers

NOW = T0 + 3600 * 1_000_000


def snapshot(ev: Events, name: str = "after-lookup") -> dict:
    return ev._event(
        "WorkflowSnapshot", name=name, state="{}", state_digest=b"\0" * 32, redacted_fields=[]
    )


def rollback(ev: Events, snap: dict) -> dict:
    q = ev.quarantine("run", run=ev.run)
    q["after_event_id"] = snap["event_id"]
    return q


def test_only_the_calls_after_the_checkpoint_are_in_the_plan_newest_first() -> None:
    ev = Events()
    before = ev.call("crm.update", compensation="crm.restore")
    pending = ev.intent()  # started before the checkpoint, its result comes after
    snap = snapshot(ev)
    ev.result(pending, external_ids={"charge_id": "ch_1"})
    first = ev.call("stripe.charge")
    second = ev.call("email.send", compensation="email.recall")
    q = rollback(ev, snap)
    steps = build_plan(ev.events, handlers(), scope=Scope.of(q), now_us=NOW)
    assert [s.intent_id for s in steps] == [second["event_id"], first["event_id"]]
    assert all(s.action == "compensate" for s in steps)
    assert before["event_id"] not in {s.intent_id for s in steps}
    assert Scope.of(q).describe() == f"run run-1 after checkpoint {snap['event_id']} (a rollback)"


def test_a_call_after_the_checkpoint_that_cannot_be_undone_is_escalated() -> None:
    ev = Events()
    snap = snapshot(ev)
    ev.call("wire.send", reversibility="irreversible", compensation=None)
    steps = build_plan(ev.events, handlers(), scope=Scope.of(rollback(ev, snap)), now_us=NOW)
    assert [(s.action, s.reason) for s in steps] == [("escalate", "irreversible")]


def test_the_checkpoint_chosen_decides_what_is_undone() -> None:
    ev = Events()
    early = snapshot(ev, "early")
    a = ev.call()
    late = snapshot(ev, "late")
    b = ev.call()
    to_early = build_plan(ev.events, handlers(), scope=Scope.of(rollback(ev, early)), now_us=NOW)
    to_late = build_plan(ev.events, handlers(), scope=Scope.of(rollback(ev, late)), now_us=NOW)
    assert [s.intent_id for s in to_early] == [b["event_id"], a["event_id"]]
    assert [s.intent_id for s in to_late] == [b["event_id"]]


def test_a_checkpoint_not_among_the_events_undoes_nothing() -> None:
    ev = Events()
    ev.call()
    q = ev.quarantine("run", run=ev.run)
    q["after_event_id"] = "0190a0b0-0000-7000-8000-999999999999"
    assert build_plan(ev.events, handlers(), scope=Scope.of(q), now_us=NOW) == []


def test_a_rollback_in_force_does_not_swallow_a_quarantine_of_the_whole_run() -> None:
    back = Scope("run", "run-1", after_event_id="snap-1")
    whole = Scope("run", "run-1")
    assert not _covers(back, whole)  # the new one undoes more: it gets its own plan
    assert _covers(whole, back)  # the whole run is being undone already
    assert _covers(back, Scope("run", "run-1", after_event_id="snap-1"))  # the same again
    assert not _covers(back, Scope("run", "run-1", after_event_id="snap-0"))


def test_the_runs_resumed_after_the_checkpoint_are_undone_too() -> None:
    """run-1: cp1, cp2; run-2 resumed from cp2, then cp3; run-3 resumed from cp3; run-4
    resumed from cp0 (before cp1). Going back to cp1 undoes run-2 and run-3 whole (they
    went on from after cp1), not run-4."""
    from wakeline.compensator.rollback import resumed_since
    from wakeline.producers.snapshots import Snapshot

    ev = Events()
    cp0, cp1, cp2 = (snapshot(ev, n) for n in ("cp0", "cp1", "cp2"))
    ev.run = "run-2"
    r2 = snapshot(ev, "cp2")
    r2["parent_event_ids"] = [cp2["event_id"]]
    cp3 = snapshot(ev, "cp3")
    ev.run = "run-3"
    r3 = snapshot(ev, "cp3")
    r3["parent_event_ids"] = [cp3["event_id"]]
    ev.run = "run-4"
    r4 = snapshot(ev, "cp0")
    r4["parent_event_ids"] = [cp0["event_id"]]
    snaps = [Snapshot(e) for e in ev.events if e["type"] == "WorkflowSnapshot"]
    by_id = {s.event_id: s for s in snaps}
    got = resumed_since(snaps, by_id[cp1["event_id"]])
    assert [s.event_id for s in got] == [r2["event_id"], r3["event_id"]]
    assert resumed_since(snaps, by_id[r3["event_id"]]) == []
    assert [s.run_id for s in resumed_since(snaps, by_id[cp0["event_id"]])] == [
        "run-2", "run-3", "run-4"
    ]  # fmt: skip
