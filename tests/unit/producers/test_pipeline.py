"""The gate pipeline: custom gates, refusals with alerts, and calls that wait (sync, async)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from wakeline.producers import (
    GateRefused,
    LoopGuard,
    PolicyDecision,
    WorkflowQuarantined,
)
from wakeline.producers.errors import WaitTimedOut
from wakeline.producers.gates import (
    AlertSpec,
    GateCall,
    Pending,
    PolicyGate,
    QuarantineGate,
    Verdict,
)
from wakeline.producers.gates import (
    LoopGuard as LoopGuardGate,
)
from wakeline.schemas import encode_event, new_event_id

APPROVAL = PolicyDecision("require_approval", "a human must agree", "approvals")


class Budget(GateRefused):
    pass


class BudgetGate:
    name = "budget"

    def __init__(self) -> None:
        self.seen: list[GateCall] = []

    def decide(self, call: GateCall) -> Verdict | None:
        self.seen.append(call)
        if call.args.get("amount", 0) <= 100:
            return None
        why = f"{call.spec.name} over budget"
        alert = AlertSpec("policy_violation", why, "budget-gate", attributes={"amount": "big"})
        return Verdict.refuse(Budget(why), PolicyDecision("deny", why, self.name), alert)


class WaitingGate:
    """Makes every call wait on a fresh `Pending`; the test resolves it."""

    name = "approvals"

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self.pending: list[Pending] = []
        self.asked = threading.Event()

    def decide(self, call: GateCall) -> Verdict | None:
        p = Pending(f"approval of {call.spec.name}")
        self.pending.append(p)
        self.asked.set()
        return Verdict.wait(p, APPROVAL, self.timeout_s)


def _resolve_later(gate: WaitingGate, verdict: Verdict, before=None) -> threading.Thread:  # noqa: ANN001
    def run() -> None:
        assert gate.asked.wait(10)
        if before is not None:
            before()
        gate.pending[-1].resolve(verdict)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_the_default_pipeline_is_quarantine_loop_guard_policy_then_extra_gates(recorded):
    emitter, _ = recorded
    assert [g.name for g in emitter.gates] == ["loop-guard", "policy"]  # no quarantine gate
    emitter.loop_guard = LoopGuard(max_repeats=2)
    assert [g.name for g in emitter.gates] == ["loop-guard", "policy"]
    assert isinstance(emitter.gates[0], LoopGuardGate) and emitter.gates[0].max_repeats == 2
    emitter.loop_guard = None
    assert [g.name for g in emitter.gates] == ["policy"]
    assert isinstance(emitter.gates[0], PolicyGate)


def test_a_custom_gate_refuses_with_its_reason_and_alert(recorded):
    emitter, rec = recorded
    budget = BudgetGate()
    emitter.gates.append(budget)
    ctx = emitter.workflow("wf-b", agent_id="a", principal="p")
    assert ctx.call("kv.put", lambda **_: "done", {"key": "k", "amount": 5}) == "done"
    ran = []
    with pytest.raises(Budget) as refused:
        ctx.call("kv.put", lambda **_: ran.append(1), {"key": "k", "amount": 500})
    assert ran == []
    intent, result, alert = rec.events()[2:]
    assert refused.value.intent_id == intent["event_id"]
    assert (intent["policy_decision"], intent["policy_reason"]) == (
        "deny",
        "budget: kv.put over budget",
    )
    assert result["status"] == "denied" and result["error_type"] == "Budget"
    assert alert["kind"] == "policy_violation"
    assert alert["related_event_ids"] == [intent["event_id"]]
    assert alert["attributes"] == {"amount": "big"}
    assert budget.seen[0].workflow_id == "wf-b" and budget.seen[0].spec.name == "kv.put"


@pytest.mark.parametrize("answer", ["allow", "refuse"])
def test_a_call_waits_until_its_gate_answers(recorded, answer):
    emitter, rec = recorded
    gate = WaitingGate()
    emitter.gates.append(gate)
    ctx = emitter.workflow("wf-w", agent_id="a", principal="p")
    if answer == "allow":
        verdict = Verdict.allow(PolicyDecision("allow", "alice agreed", "approvals"))
    else:
        why = "bob said no"
        verdict = Verdict.refuse(GateRefused(why), PolicyDecision("deny", why, "approvals"))
    helper = _resolve_later(gate, verdict)
    ran = []
    if answer == "allow":
        assert ctx.call("kv.put", lambda key: ran.append(key) or "ok", {"key": "k"}) == "ok"
    else:
        with pytest.raises(GateRefused, match="bob said no"):
            ctx.call("kv.put", lambda key: ran.append(key), {"key": "k"})
    helper.join()
    intent, result = rec.events()
    assert intent["policy_decision"] == "require_approval"
    assert intent["policy_reason"] == "approvals: a human must agree"
    if answer == "allow":
        assert ran == ["k"] and result["status"] == "ok"
    else:
        assert ran == [] and result["status"] == "denied"
        assert result["error_message"] == "bob said no"


def test_an_alert_of_an_unknown_kind_is_refused_when_the_gate_builds_it():
    with pytest.raises(ValueError, match="alert kind"):
        AlertSpec("budget", "x", "d")  # type: ignore[arg-type]


def test_a_wait_that_times_out_is_refused(recorded):
    emitter, rec = recorded
    emitter.gates.append(WaitingGate(timeout_s=0.05))
    ctx = emitter.workflow("wf-t", agent_id="a", principal="p")
    with pytest.raises(WaitTimedOut, match="approval of kv.put"):
        ctx.call("kv.put", lambda key: None, {"key": "k"})
    assert [e.get("status") for e in rec.events()] == [None, "denied"]
    assert rec.events()[1]["error_type"] == "WaitTimedOut"


def test_async_calls_wait_without_blocking_the_loop(recorded):
    emitter, rec = recorded
    gate = WaitingGate()
    emitter.gates.append(gate)
    ok = Verdict.allow(PolicyDecision("allow", "yes", "approvals"))

    async def main() -> list:
        ctx = emitter.workflow("wf-a", agent_id="a", principal="p")
        calls = [ctx.acall("kv.put", lambda key: key, {"key": f"k{i}"}) for i in range(3)]
        tasks = [asyncio.ensure_future(c) for c in calls]
        while len(gate.pending) < 3:  # every call is waiting, and the loop still runs
            await asyncio.sleep(0)
        threading.Thread(target=gate.pending[0].resolve, args=(ok,)).start()  # another thread
        gate.pending[1].resolve(ok)  # the loop's own thread
        gate.pending[2].resolve(ok)
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == ["k0", "k1", "k2"]
    assert [e.get("status") for e in rec.events()].count("ok") == 3


def test_a_quarantine_that_starts_during_a_wait_still_stops_the_call(recorded):
    emitter, rec = recorded
    quarantine = QuarantineGate.offline()
    gate = WaitingGate()
    emitter.gates[:0] = [quarantine]
    emitter.gates.append(gate)
    ctx = emitter.workflow("wf-q", agent_id="a", principal="p")
    record = encode_event(
        {
            "event_id": new_event_id(),
            "type": "Quarantine",
            "time": 1,
            "source": "t",
            "workflow_id": "wf-q",
            "run_id": "r",
            "agent_id": "ops",
            "principal": "ops",
            "scope": "workflow",
            "reason": "loop",
            "by": "detector",
        }
    )
    ok = Verdict.allow(PolicyDecision("allow", "yes", "approvals"))
    helper = _resolve_later(gate, ok, before=lambda: quarantine.apply(b"wf-q", record))
    with pytest.raises(WorkflowQuarantined):
        ctx.call("kv.put", lambda key: None, {"key": "k"})
    helper.join()
    assert rec.events()[-1]["status"] == "denied"
    assert len(gate.pending) == 1  # the waiting gate is not asked twice
