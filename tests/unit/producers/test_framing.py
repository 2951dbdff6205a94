"""The pre-encoded frames of tool events are exactly what the codec writes for them."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wakeline.producers import LoopRefused, PolicyDecision, PolicyDenied, ToolSpec
from wakeline.producers.framing import avro_time, checked_framer
from wakeline.schemas import cloudevents_headers, decode_event, encode_event
from wakeline.schemas.compiled import avro_long

text = st.text(max_size=300)  # includes non-ASCII; lengths past one varint byte
optional_text = st.none() | st.text(min_size=1, max_size=40)


def assert_codec_equal(rec) -> None:  # noqa: ANN001
    """Every record: the codec re-encodes its decoded event to the same bytes and headers."""
    assert rec.records
    for _, _, value, headers, _ in rec.records:
        event = decode_event(value)
        assert encode_event(event) == value, event
        assert headers == cloudevents_headers(event)


def ctx_of(emitter, **kw):  # noqa: ANN001, ANN201
    fields = dict(agent_id="agent-1", principal="alice")
    fields.update(kw)
    return emitter.workflow(fields.pop("workflow_id", "wf-1"), **fields)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    tenant=optional_text,
    boundary=optional_text,
    step=optional_text,
    correlation=optional_text,
    own_parents=st.lists(st.text(min_size=1, max_size=40), max_size=3),
    call_parents=st.lists(st.text(min_size=1, max_size=40), max_size=3),
    call_step=optional_text,
    value=text,
    summary=st.text(min_size=1, max_size=40),
    ids=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3),
)
def test_frames_equal_the_codecs_for_any_envelope(
    recorded,  # noqa: ANN001
    tenant,  # noqa: ANN001
    boundary,  # noqa: ANN001
    step,  # noqa: ANN001
    correlation,  # noqa: ANN001
    own_parents,  # noqa: ANN001
    call_parents,  # noqa: ANN001
    call_step,  # noqa: ANN001
    value,  # noqa: ANN001
    summary,  # noqa: ANN001
    ids,  # noqa: ANN001
) -> None:
    emitter, rec = recorded  # shared by the examples: start each from no records
    rec.records.clear()
    emitter.loop_guard = None  # examples may repeat arguments
    ctx = ctx_of(
        emitter,
        tenant=tenant,
        boundary=boundary,
        step_id=step,
        correlation_id=correlation,
        parent_event_ids=own_parents,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id="00f067aa0ba902b7",
    )
    assert ctx._framer is not None
    spec = ToolSpec(
        name="t.write",
        reversibility="compensable",
        compensation="t.undo",
        summarise=lambda _r: summary,
        external_ids=lambda _r: ids,
        writes=("res:{key}",),
        volatile_fields={"rid", "meta.at"},
        version_arg="ver",
    )
    args = {"key": value, "n": 1, "rid": value, "ver": value, "meta": {"at": 1}}
    ctx.call(spec, lambda **_: value, args, parents=call_parents, step_id=call_step)
    assert_codec_equal(rec)
    intent, result = rec.events()
    assert intent["volatile_fields"] == ["meta.at", "rid"]
    assert intent["expected_version"] == value
    assert intent["parent_event_ids"] == [*own_parents, *call_parents]
    assert result["step_id"] == (call_step if call_step is not None else step)
    assert result["result_summary"] == summary
    assert result["external_ids"] == ids


def test_every_status_and_spec_kind_frames_like_the_codec(recorded) -> None:  # noqa: ANN001
    emitter, rec = recorded
    ctx = ctx_of(emitter)
    ctx.call("kv.get", lambda key: {"v": "é" * 200}, {"key": "a"})  # relaxed, read
    ctx.call("pay", lambda **_: None, {"card": {"cvc": 1, "number": "4242"}, "api_key": "k"})
    with pytest.raises(ValueError):
        ctx.call("kv.put", _raise, {"key": "b", "value": 2})
    with pytest.raises(KeyboardInterrupt):
        ctx.call("kv.put", _interrupt, {"key": "c", "value": 3})
    ctx.begin("unregistered.tool", {"x": [1, 2.5, None, True]}).abort("gave up")
    for _ in range(3):  # the loop guard refuses the third: denied result, then an alert
        with contextlib.suppress(LoopRefused):
            ctx.call("kv.put", lambda key: 1, {"key": "same"})
    asyncio.run(ctx.acall("kv.put", _async_ok, {"key": "d", "value": 4}))
    assert_codec_equal(rec)
    statuses = [e["status"] for e in rec.events() if e["type"] == "ToolResult"]
    assert statuses == ["ok", "ok", "error", "aborted", "aborted", "ok", "ok", "denied", "ok"]


def test_a_policy_reason_per_call_frames_like_the_codec(recorded) -> None:  # noqa: ANN001
    emitter, rec = recorded
    calls = iter(range(1000))
    emitter.policy = lambda req: PolicyDecision(
        "deny" if next(calls) % 2 else "allow", f"reason {req.canonical_args}", "p"
    )
    ctx = ctx_of(emitter)
    for i in range(4):
        with contextlib.suppress(PolicyDenied):
            ctx.call("kv.put", lambda **_: None, {"key": str(i), "value": i})
    assert_codec_equal(rec)
    reasons = [e["policy_reason"] for e in rec.events() if e["type"] == "ToolIntent"]
    assert reasons == [f'p: reason {{"key":"{i}","value":{i}}}' for i in range(4)]


def test_parents_added_to_the_context_later_are_framed(recorded) -> None:  # noqa: ANN001
    emitter, rec = recorded
    ctx = ctx_of(emitter)
    ctx.call("kv.get", lambda key: 1, {"key": "a"})
    ctx.parent_event_ids.append("late-parent")
    ctx.call("kv.get", lambda key: 1, {"key": "b"})
    assert_codec_equal(rec)
    assert [e["parent_event_ids"] for e in rec.events()] == [
        [],
        [],
        ["late-parent"],
        ["late-parent"],
    ]


def test_an_envelope_the_codec_refuses_falls_back_to_the_codec(recorded) -> None:  # noqa: ANN001
    emitter, rec = recorded
    ctx = ctx_of(emitter, tenant=42)  # not a string: the codec reports it, as before
    assert ctx._framer is None
    with pytest.raises(Exception, match="tenant|schema|int"):
        ctx.call("kv.get", lambda key: 1, {"key": "a"})
    assert rec.records == []


def test_checked_framer_matches_the_codec_for_a_plain_template() -> None:
    template = {
        "event_id": "",
        "type": "",
        "time": 0,
        "source": "s",
        "workflow_id": "w",
        "run_id": "r",
        "step_id": None,
        "agent_id": "a",
        "tenant": None,
        "boundary": None,
        "parent_event_ids": [],
        "correlation_id": None,
        "principal": "p",
        "trace_id": None,
        "span_id": None,
    }
    assert checked_framer(template) is not None
    assert checked_framer({**template, "principal": None}) is None


@given(st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1))
def test_avro_time_is_avro_long(value: int) -> None:
    assert avro_time(value) == avro_long(value)


def test_avro_time_across_a_second_boundary() -> None:
    now = time.time_ns() // 1000
    for t in range(now - 3_000_000, now + 3_000_000, 9_973):
        assert avro_time(t) == avro_long(t)


def _raise(**_: object) -> None:
    raise ValueError("boom")


def _interrupt(**_: object) -> None:
    raise KeyboardInterrupt


async def _async_ok(**_: object) -> int:
    return 1


def test_policy_engine_fields_frame_like_the_codec(recorded) -> None:  # noqa: ANN001
    """Rule, version, shadow verdicts, approval and grant ids (a decision with an approver
    group, which is not hashable, included) are framed, and read back as recorded."""
    from wakeline.producers.gates import ApproverGroup

    emitter, rec = recorded
    group = ApproverGroup("finance", {"alice": b"\x01" * 32})
    decisions = iter(
        [
            PolicyDecision("allow", "r", "billing", "small", "ab" * 32, ("gbp=deny", "x=allow")),
            PolicyDecision("allow", "r", "billing", "big", "cd" * 32, approvers=group,
                           approval_id="ap-1"),
            PolicyDecision("allow", "r", "billing", "big", "cd" * 32, grant_id="g-7"),
            PolicyDecision("allow", "r", "billing"),
        ]
    )  # fmt: skip
    emitter.policy = lambda req: next(decisions)
    ctx = ctx_of(emitter)
    for i in range(4):
        ctx.call("kv.put", lambda **_: None, {"key": str(i), "value": i})
    assert_codec_equal(rec)
    got = [
        (e["policy_rule"], e["policy_version"], e["policy_shadow"], e["approval_id"], e["grant_id"])
        for e in rec.events()
        if e["type"] == "ToolIntent"
    ]
    assert got == [
        ("small", "ab" * 32, ["gbp=deny", "x=allow"], None, None),
        ("big", "cd" * 32, [], "ap-1", None),
        ("big", "cd" * 32, [], None, "g-7"),
        (None, None, [], None, None),
    ]
