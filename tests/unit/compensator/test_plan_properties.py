"""For random workflows: newest first, every mutating ok call once, nothing wrong undone."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wakeline.compensator.plan import Scope, build_plan

from .eventkit import T0, Events, handlers

TOOLS = [
    ("stripe.charge", "compensable", "stripe.refund"),
    ("crm.update", "reversible", "crm.restore"),
    ("email.send", "irreversible", "email.recall"),
    ("kb.read", "read", None),
    ("vm.create", "compensable", "vm.delete"),  # no handler loaded
    ("ticket.open", "compensable", None),
]
STATUSES = ["ok", "error", "denied", "aborted", None]  # None: no result recorded

call = st.tuples(
    st.sampled_from(TOOLS),
    st.sampled_from(STATUSES),
    st.sampled_from(["run-1", "run-2"]),
    st.one_of(st.none(), st.integers(1, 10_000).map(lambda s: s * 1_000_000)),
    st.booleans(),  # the result comes late (after every other event)
)


@settings(max_examples=200, deadline=None)
@given(
    calls=st.lists(call, max_size=25),
    scope_run=st.one_of(st.none(), st.sampled_from(["run-1", "run-2"])),
    now_s=st.integers(0, 20_000),
    safe=st.booleans(),
)
def test_plan_properties(calls: list, scope_run: str | None, now_s: int, safe: bool) -> None:
    ev = Events()
    late = []
    for (tool, rev, comp), status, run, window, is_late in calls:
        intent = ev.intent(
            tool, reversibility=rev, compensation=comp, run=run, undo_window_us=window
        )
        if status is not None:
            if is_late:
                late.append((intent, status))
            else:
                ev.result(intent, status)
    ev.quarantine("run" if scope_run else "workflow", run=scope_run)
    for intent, status in late:
        ev.result(intent, status)
    scope = Scope("run", scope_run) if scope_run else Scope()
    steps = build_plan(
        ev.events, handlers(safe_if_unknown=safe), scope=scope, now_us=T0 + now_s * 1_000_000
    )

    intents = [e for e in ev.events if e["type"] == "ToolIntent"]
    in_scope = [i for i in intents if scope_run is None or i["run_id"] == scope_run]
    position = {e["event_id"]: n for n, e in enumerate(ev.events)}
    status = {e["intent_id"]: e["status"] for e in ev.events if e["type"] == "ToolResult"}

    # one step per call of the scope, newest first
    assert [s.intent_id for s in steps] == [i["event_id"] for i in reversed(in_scope)]
    assert [position[s.intent_id] for s in steps] == sorted(
        (position[s.intent_id] for s in steps), reverse=True
    )
    by_id = {s.intent_id: s for s in steps}
    for i in in_scope:
        step = by_id[i["event_id"]]
        got = status.get(i["event_id"])
        if i["reversibility"] != "read" and got == "ok":
            # every mutating ok call exactly once, as compensate or escalate
            assert step.action in ("compensate", "escalate")
        if i["reversibility"] == "read" or got in ("error", "denied"):
            assert step.action == "skip"  # never undo what changed nothing
        if step.action == "compensate":
            assert step.request is not None
            assert step.request.compensation == i["compensation"]
            assert i["reversibility"] != "irreversible"
            window = i["undo_window_us"]
            assert window is None or T0 + now_s * 1_000_000 <= i["time"] + window
            if got != "ok":
                assert safe  # an unknown outcome is undone only by a handler that says so
        if step.action == "escalate":
            assert step.why and step.request is None
