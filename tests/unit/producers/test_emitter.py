from __future__ import annotations

import asyncio
import datetime

import pytest

from wakeline.producers import (
    ApprovalRequired,
    LoopRefused,
    MissingWorkflow,
    NotSerialisable,
    PayloadTooLarge,
    PolicyDecision,
    PolicyDenied,
    SdkError,
)
from wakeline.schemas import decode_event


def ctx_of(emitter, **kw):
    fields = dict(agent_id="agent-1", principal="alice")
    fields.update(kw)
    return emitter.workflow(fields.pop("workflow_id", "wf-1"), **fields)


def test_intent_is_sent_before_the_tool_runs_then_the_result(recorded):
    emitter, rec = recorded
    ctx = ctx_of(emitter)
    seen_when_running = []

    def put(key, value):
        seen_when_running.append([decode_event(v)["type"] for _, _, v, _, _ in rec.records])
        return {"version": 7}

    assert ctx.call("kv.put", put, {"key": "a", "value": 1}) == {"version": 7}
    assert seen_when_running == [["ToolIntent"]]
    intent, result = rec.events()
    assert intent["tool"] == "kv.put"
    assert intent["args"] == '{"key":"a","value":1}'
    assert intent["resources_written"] == ["kv:a"]
    assert (intent["reversibility"], intent["impact"]) == ("reversible", "medium")
    assert intent["compensation"] == "kv.restore"
    assert intent["policy_decision"] == "allow"
    assert intent["durability"] == "strict"
    assert result["intent_id"] == intent["event_id"]
    assert result["status"] == "ok"
    assert len(result["result_digest"]) == 32
    assert all(k == b"wf-1" for _, k, _, _, _ in rec.records)
    waits = [w for *_, w in rec.records]
    assert waits == [True, False]  # strict: the intent waited for the broker


def test_read_only_tools_are_relaxed(recorded):
    emitter, rec = recorded
    ctx_of(emitter).call("kv.get", lambda key: 1, {"key": "a"})
    intent = rec.events()[0]
    assert intent["durability"] == "relaxed"
    assert intent["resources_read"] == ["kv:a"]
    assert rec.records[0][4] is False


def test_envelope_carries_the_workflow_context(recorded):
    emitter, rec = recorded
    ctx = ctx_of(
        emitter,
        run_id="run-9",
        tenant="acme",
        boundary="eu",
        correlation_id="req-1",
        parent_event_ids=["p-1"],
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id="00f067aa0ba902b7",
    )
    ctx.call("kv.get", lambda key: 1, {"key": "a"}, parents=["p-2"], step_id="s1")
    intent = rec.events()[0]
    assert intent["run_id"] == "run-9"
    assert (intent["tenant"], intent["boundary"]) == ("acme", "eu")
    assert intent["parent_event_ids"] == ["p-1", "p-2"]
    assert intent["step_id"] == "s1"
    assert intent["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert intent["span_id"] == "00f067aa0ba902b7"
    headers = dict(rec.records[0][3])
    assert headers["ce_id"] == intent["event_id"].encode()
    assert headers["ce_subject"] == b"wf-1"
    assert headers["ce_type"].endswith(b"ToolIntent.v1")


def test_tool_error_is_recorded_and_reraised_unchanged(recorded):
    emitter, rec = recorded

    class Boom(RuntimeError):
        pass

    err = Boom("card declined")

    def charge(**_):
        raise err

    with pytest.raises(Boom) as caught:
        ctx_of(emitter).call("kv.put", charge, {"key": "a"})
    assert caught.value is err
    intent, result = rec.events()
    assert result["status"] == "error"
    assert result["intent_id"] == intent["event_id"]
    assert result["error_type"].endswith("Boom")
    assert result["error_message"] == "card declined"


def test_interrupt_is_recorded_as_aborted(recorded):
    emitter, rec = recorded

    def interrupted(**_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ctx_of(emitter).call("kv.put", interrupted, {"key": "a"})
    assert rec.events()[1]["status"] == "aborted"


def test_secrets_never_reach_the_encoded_events(recorded):
    emitter, rec = recorded
    args = {
        "card": {"number": "4111111111111111", "cvc": "cvc-7a7-x"},
        "api_key": "sk_live_XYZZY",
        "amount": 1299,
    }
    ctx_of(emitter).call("pay", lambda **a: {"id": "ch_1"}, args)
    frames = b"".join(v + b"".join(h for _, h in hs) for _, _, v, hs, _ in rec.records)
    for secret in (b"4111111111111111", b"cvc-7a7-x", b"sk_live_XYZZY"):
        assert secret not in frames
    intent = rec.events()[0]
    assert intent["redacted_fields"] == ["api_key", "card.cvc", "card.number"]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"when": datetime.datetime(2026, 1, 1)}, NotSerialisable),
        ({"blob": "x" * 5000}, PayloadTooLarge),
    ],
)
def test_bad_input_fails_before_anything_is_written(recorded, args, error):
    emitter, rec = recorded
    emitter.max_payload_bytes = 1000
    ran = []
    with pytest.raises(error):
        ctx_of(emitter).call("kv.put", lambda **a: ran.append(a), args)
    assert ran == []
    assert rec.records == []


@pytest.mark.parametrize("workflow_id", [None, ""])
def test_missing_workflow_id_is_a_clear_error(recorded, workflow_id):
    emitter, rec = recorded
    with pytest.raises(MissingWorkflow, match="workflow id is required"):
        emitter.workflow(workflow_id, agent_id="a", principal="p")
    assert rec.records == []


def test_bad_trace_context_is_refused(recorded):
    emitter, _ = recorded
    with pytest.raises(SdkError, match="trace_id"):
        ctx_of(emitter, trace_id="XYZ")
    with pytest.raises(SdkError, match="span_id"):
        ctx_of(emitter, span_id="0000000000000000")


def test_policy_deny_is_recorded_in_the_intent_and_as_a_denied_result(recorded):
    emitter, rec = recorded
    emitter.policy = lambda req: (
        PolicyDecision("deny", "over limit", "limits")
        if req.args.get("value", 0) > 100
        else PolicyDecision("allow")
    )
    ran = []
    with pytest.raises(PolicyDenied) as e:
        ctx_of(emitter).call("kv.put", lambda **a: ran.append(a), {"key": "a", "value": 500})
    assert ran == []
    intent, result = rec.events()
    assert intent["policy_decision"] == "deny"
    assert intent["policy_reason"] == "limits: over limit"
    assert result["status"] == "denied"
    assert result["intent_id"] == intent["event_id"] == e.value.intent_id


def test_require_approval_fails_closed(recorded):
    emitter, rec = recorded
    emitter.policy = lambda req: PolicyDecision("require_approval", "high impact", "p")
    with pytest.raises(ApprovalRequired):
        ctx_of(emitter).call("kv.put", lambda **a: None, {"key": "a"})
    assert rec.events()[0]["policy_decision"] == "require_approval"
    assert rec.events()[1]["status"] == "denied"


def test_loop_guard_refuses_records_and_alerts_once(recorded):
    emitter, rec = recorded
    ctx = ctx_of(emitter)
    ran = []
    for _ in range(2):
        ctx.call("kv.put", lambda key: ran.append(key), {"key": "same"})
    for _ in range(2):
        with pytest.raises(LoopRefused, match="rule repeat"):
            ctx.call("kv.put", lambda key: ran.append(key), {"key": "same"})
    assert len(ran) == 2
    events = rec.events()
    assert [e["type"] for e in events] == ["ToolIntent", "ToolResult"] * 2 + [
        "ToolIntent",
        "ToolResult",
        "Alert",
        "ToolIntent",
        "ToolResult",
    ]
    alert = events[6]
    assert alert["kind"] == "runaway_loop"
    assert alert["detector"] == "repeat"
    assert events[4]["policy_decision"] == "deny"
    assert events[4]["policy_reason"].startswith("repeat: agent-1 called kv.put")
    assert alert["related_event_ids"] == [events[4]["event_id"]]
    assert alert["attributes"]["count"] == "3"
    assert [e["type"] for e in rec.events("alerts")] == ["Alert"]


def test_async_call_awaits_coroutines_and_plain_functions(recorded):
    emitter, rec = recorded
    ctx = ctx_of(emitter)

    async def coro(key):
        await asyncio.sleep(0)
        return key.upper()

    async def main():
        return await ctx.acall("kv.get", coro, {"key": "a"}), await ctx.acall(
            "kv.put", lambda key: key, {"key": "b"}
        )

    assert asyncio.run(main()) == ("A", "b")
    assert [e["status"] for e in rec.events() if e["type"] == "ToolResult"] == ["ok", "ok"]


def test_complete_workflow_seals_with_count_and_last_event(recorded):
    emitter, rec = recorded
    ctx = ctx_of(emitter)
    ctx.call("kv.get", lambda key: 1, {"key": "a"})
    ctx.call("kv.put", lambda key: 1, {"key": "a"})
    seal_id = ctx.complete_workflow("succeeded")
    events = rec.events()
    seal = events[-1]
    assert seal["event_id"] == seal_id
    assert seal["event_count"] == 4 == len(events) - 1
    assert seal["last_event_id"] == events[-2]["event_id"]
    assert seal["outcome"] == "succeeded"
    with pytest.raises(SdkError, match="sealed"):
        ctx.call("kv.get", lambda key: 1, {"key": "a"})


def test_loop_guard_can_be_switched_off(recorded):
    emitter, rec = recorded
    emitter.loop_guard = None
    ctx = ctx_of(emitter)
    for _ in range(10):
        ctx.call("kv.get", lambda key: 1, {"key": "same"})
    assert len(rec.events()) == 20
