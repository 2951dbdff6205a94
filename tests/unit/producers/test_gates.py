from __future__ import annotations

import pytest

from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.producers import LoopGuard, PolicyDecision, QuarantineGate
from wakeline.producers.gates import parse_quarantine_value
from wakeline.schemas import encode_event, new_event_id


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_loop_guard_refuses_the_kth_identical_call_within_the_window():
    clock = Clock()
    guard = LoopGuard(max_repeats=3, window_s=10, clock=clock)
    d = b"\x01" * 32
    assert guard.check("a", "t", d).allowed
    assert guard.check("a", "t", d).allowed
    third = guard.check("a", "t", d)
    assert not third.allowed and third.alert and third.count == 3
    again = guard.check("a", "t", d)
    assert not again.allowed and not again.alert  # one alert per window, not one per retry
    assert guard.check("a", "t", b"\x02" * 32).allowed  # other args
    assert guard.check("b", "t", d).allowed  # other agent
    assert guard.check("a", "u", d).allowed  # other tool
    clock.now += 10.01
    assert guard.check("a", "t", d).allowed  # the window has passed


def test_loop_guard_window_slides():
    clock = Clock()
    guard = LoopGuard(max_repeats=3, window_s=10, clock=clock)
    d = b"d"
    guard.check("a", "t", d)
    clock.now += 6
    guard.check("a", "t", d)
    clock.now += 6  # the first call left the window
    assert guard.check("a", "t", d).allowed
    assert not guard.check("a", "t", d).allowed


def test_loop_guard_stays_bounded_and_still_catches_a_loop_among_many_distinct_calls():
    """More distinct calls within one window than `max_keys`: memory stays bounded (the
    least recently seen keys go), and a call repeating among them (fewer than `max_keys`
    other calls apart) is still refused."""
    clock = Clock()
    guard = LoopGuard(max_repeats=4, window_s=10, clock=clock, max_keys=100)
    hot = b"hot"
    verdicts = []
    for i in range(5_000):
        clock.now += 0.0001  # all within one window
        assert guard.check("a", "t", str(i).encode()).allowed
        if i % 50 == 0:  # the loop: one repeat every 50 other calls
            verdicts.append(guard.check("a", "t", hot).allowed)
        assert len(guard._seen) <= 100
    assert verdicts == [True, True, True] + [False] * 97


def test_loop_guard_forgets_idle_keys_first():
    clock = Clock()
    guard = LoopGuard(max_repeats=3, window_s=10, clock=clock, max_keys=10)
    for i in range(10):
        guard.check("a", "t", str(i).encode())
    clock.now += 11  # every key is idle past the window
    guard.check("a", "t", b"late-1")
    guard.check("a", "t", b"late-1")
    assert set(guard._seen) == {("", "a", "t", b"late-1")}  # (workflow, agent, tool, digest)
    assert not guard.check("a", "t", b"late-1").allowed


def test_loop_guard_rejects_nonsense_settings():
    with pytest.raises(ValueError):
        LoopGuard(max_repeats=1)
    with pytest.raises(ValueError):
        LoopGuard(window_s=0)


def test_policy_decision_outcomes_are_checked():
    assert PolicyDecision("require_approval").outcome == "require_approval"
    with pytest.raises(ValueError):
        PolicyDecision("maybe")  # type: ignore[arg-type]


def _event(type_name: str, **fields) -> bytes:
    base = dict(
        event_id=new_event_id(),
        type=type_name,
        time=1,
        source="test",
        workflow_id="wf-q",
        run_id="r",
        agent_id="compensator",
        principal="ops",
    )
    base.update(fields)
    return encode_event(base)


def test_quarantine_state_follows_the_compacted_topic_semantics():
    q = _event("Quarantine", scope="workflow", reason="runaway loop", by="loop-detector")
    assert parse_quarantine_value("wf-q", q).reason == "runaway loop"
    assert parse_quarantine_value("wf-q", None) is None  # tombstone
    assert parse_quarantine_value("wf-q", _event("Release", reason="ok", by="alice")) is None
    garbage = parse_quarantine_value("wf-q", b"not an event")
    assert garbage is not None and "undecodable" in garbage.reason  # fails closed


def test_gate_apply_tracks_current_state_per_workflow():
    gate = QuarantineGate.offline()  # no consumer thread: only the state logic
    for wf in ("wf-1", "wf-2"):
        gate.apply(
            wf.encode(), _event("Quarantine", scope="workflow", reason="r", by="b", workflow_id=wf)
        )
    gate.apply(b"wf-1", None)
    assert set(gate.reader.snapshot()) == {b"wf-2"}


def test_gate_without_broker_fails_open_by_default_and_closed_when_asked():
    kafka = KafkaSettings(bootstrap="127.0.0.1:1", topics=Topics("unit."))
    open_gate = QuarantineGate(kafka, startup_timeout_s=0.05)
    closed_gate = QuarantineGate(kafka, startup_timeout_s=0.05, fail_closed=True)
    try:
        assert open_gate.check("wf") is None
        assert closed_gate.check("wf") is not None
    finally:
        open_gate.close()
        closed_gate.close()


def test_a_run_scoped_quarantine_stops_only_that_run():
    gate = QuarantineGate.offline()
    gate.apply(b"wf-q", _event("Quarantine", scope="run", run_id="run-bad", reason="r", by="b"))
    assert gate.check("wf-q", "run-bad") is not None
    assert gate.check("wf-q", "run-good") is None
    gate.apply(b"wf-q", _event("Quarantine", scope="tainted", run_id="run-bad", reason="r", by="b"))
    assert gate.check("wf-q", "run-good") is not None  # tainted: every run, fail closed


def _gate_call(workflow_id: str, agent_id: str, boundary: str | None):
    from wakeline.producers import ToolSpec
    from wakeline.producers.gates import GateCall

    spec = ToolSpec("kv.put", reversibility="reversible", impact="low", compensation="kv.undo")
    return GateCall(spec, {}, "{}", b"", workflow_id, "run-1", agent_id, "p", None, boundary,
                    lambda text: text)  # fmt: skip


def test_agent_and_boundary_keys_refuse_calls_in_every_workflow_until_tombstoned():
    gate = QuarantineGate.offline()
    q = _event("Quarantine", scope="agent", target="researcher", reason="injected", by="ops")
    gate.apply(b"agent:researcher", q)
    gate.apply(b"boundary:tenant-a", _event("Quarantine", scope="boundary", reason="r", by="b"))
    refused = gate.decide(_gate_call("wf-new", "researcher", None))
    assert refused is not None and "agent researcher is quarantined by ops" in str(refused)
    assert gate.decide(_gate_call("wf-new", "billing", "tenant-a")) is not None
    assert gate.decide(_gate_call("wf-new", "billing", "tenant-b")) is None
    gate.apply(b"agent:researcher", None)  # a Release tombstones the key
    assert gate.decide(_gate_call("wf-new", "researcher", None)) is None
