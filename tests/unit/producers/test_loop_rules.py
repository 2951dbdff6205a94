"""The SDK's loop guard follows the detection rules (infra/detection.py), as the detector does."""

from __future__ import annotations

import pytest

from wakeline.infra.detection import DetectionRules
from wakeline.producers import LoopGuard, LoopRefused
from wakeline.producers.canonical import canonicalise, loop_digest


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(text: str = "", clock: Clock | None = None) -> LoopGuard:
    return LoopGuard(rules=DetectionRules.parse(text), clock=clock or Clock())


def ctx_of(emitter, workflow_id="wf-1", agent_id="agent-1"):  # noqa: ANN001, ANN201
    return emitter.workflow(workflow_id, agent_id=agent_id, principal="alice")


def put(ctx, key="same", fn=lambda **_: None, **extra):  # noqa: ANN001, ANN201
    return ctx.call("kv.put", fn, {"key": key, **extra})


def test_by_default_reads_are_never_refused_and_alert_once_at_the_high_count(recorded):
    emitter, rec = recorded
    emitter.loop_guard = guard()  # the defaults: repeat_read count 50 within 10 s
    ctx = ctx_of(emitter)
    for _ in range(120):
        ctx.call("kv.get", lambda key: 1, {"key": "customer-123"})
    alerts = rec.events("alerts")
    assert len(alerts) == 1  # one per incident, not one per call past the count
    alert = alerts[0]
    assert alert["detector"] == "repeat_read" and alert["severity"] == "info"
    assert alert["attributes"]["count"] == "50"
    assert "reads are never refused" in alert["detail"]
    events = rec.events()
    assert [e["status"] for e in events if e["type"] == "ToolResult"] == ["ok"] * 120
    intent = next(e for e in events if e["event_id"] == alert["related_event_ids"][0])
    assert intent["policy_decision"] == "allow" and intent["policy_reason"].startswith(
        "repeat_read: agent-1 called kv.get with the same arguments 50 times"
    )


def test_repeats_are_counted_per_workflow_by_default(recorded):
    emitter, rec = recorded
    emitter.loop_guard = guard("[rules.repeat]\ncount = 3")
    for wf in range(5):  # the same notification in five workflows: not a loop
        ctx = ctx_of(emitter, f"wf-{wf}")
        put(ctx)
        put(ctx)
    ctx = ctx_of(emitter, "wf-0")
    with pytest.raises(LoopRefused, match=r"3 times in \d+\.\d s in workflow wf-0"):
        put(ctx)


def test_a_rule_per_agent_counts_across_the_agents_workflows(recorded):
    emitter, rec = recorded
    emitter.loop_guard = guard('[rules.repeat]\ncount = 3\nper = "agent"')
    put(ctx_of(emitter, "wf-a"))
    put(ctx_of(emitter, "wf-b"))
    put(ctx_of(emitter, "wf-c", agent_id="other-agent"))  # another agent: its own count
    with pytest.raises(LoopRefused, match="across its workflows"):
        put(ctx_of(emitter, "wf-c"))


def test_thresholds_per_tool_and_per_agent_come_from_the_rules(recorded):
    emitter, rec = recorded
    emitter.loop_guard = guard(
        '[rules.repeat]\ncount = 10\n[tools."kv.put".repeat]\ncount = 2\n'
        '[agents."patient".repeat]\ncount = 4'
    )
    ctx = ctx_of(emitter)
    put(ctx)
    with pytest.raises(LoopRefused, match=r"rule repeat: 2 within 10 s"):
        put(ctx)
    patient = ctx_of(emitter, agent_id="patient")
    for _ in range(3):
        put(patient)
    with pytest.raises(LoopRefused, match=r"rule repeat: 4 within 10 s"):
        put(patient)


def test_retries_after_a_failed_call_do_not_count_within_the_budget(recorded):
    emitter, rec = recorded
    emitter.loop_guard = guard("[rules.repeat]\ncount = 3\nretry_budget = 2")
    ctx = ctx_of(emitter)

    def fail(**_):  # noqa: ANN003, ANN202
        raise TimeoutError("upstream timed out")

    for _ in range(3):  # the call, then two retries of the failed call: one counted
        with pytest.raises(TimeoutError):
            put(ctx, fn=fail)
    put(ctx)  # a third retry, past the budget: counted (2nd), and it succeeds
    with pytest.raises(LoopRefused):  # the same call again after a success: the 3rd
        put(ctx)


def test_a_failure_then_success_resets_the_budget_but_repeats_still_count(recorded):
    emitter, rec = recorded
    emitter.loop_guard = guard("[rules.repeat]\ncount = 3\nretry_budget = 1")
    ctx = ctx_of(emitter)

    def fail(**_):  # noqa: ANN003, ANN202
        raise TimeoutError("upstream timed out")

    with pytest.raises(TimeoutError):
        put(ctx, fn=fail)  # counted: 1
    put(ctx)  # a retry: not counted
    put(ctx)  # counted: 2
    with pytest.raises(LoopRefused):
        put(ctx)  # counted: 3, refused


def test_volatile_fields_make_near_duplicates_count_as_the_same_call(recorded):
    emitter, rec = recorded
    emitter.loop_guard = guard("[rules.repeat]\ncount = 3")
    emitter.registry.declare(
        "notify", reversibility="irreversible", volatile_fields={"request_id", "meta.at"}
    )
    ctx = ctx_of(emitter)
    for i in range(2):
        ctx.call("notify", lambda **_: None, {"to": "x", "request_id": i, "meta": {"at": i}})
    with pytest.raises(LoopRefused):
        ctx.call("notify", lambda **_: None, {"to": "x", "request_id": 9, "meta": {"at": 9}})
    ctx.call("notify", lambda **_: None, {"to": "y", "request_id": 9})  # other arguments
    intents = [e for e in rec.events() if e["type"] == "ToolIntent"]
    assert len({i["args_digest"] for i in intents}) == 4  # args_digest covers every field
    assert intents[0]["volatile_fields"] == ["meta.at", "request_id"]
    alert = rec.events("alerts")[0]
    # what the alert names as the loop key, a detector recomputes from the intent alone
    assert (
        alert["attributes"]["loop_digest"]
        == loop_digest(intents[2]["args"], intents[2]["volatile_fields"]).hex()
    )


def test_loop_digest_without_volatile_fields_is_the_args_digest():
    canonical = canonicalise({"b": [1, {"t": 2}], "a": 1.5})
    assert loop_digest(canonical.text, []) == canonical.digest
    assert loop_digest(canonical.text, ["b.t"]) == canonicalise({"b": [1, {}], "a": 1.5}).digest
    assert loop_digest(canonical.text, ["absent.path"]) == canonical.digest


def test_max_repeats_and_window_override_the_repeat_rule_but_never_refuse_reads():
    clock = Clock()
    g = LoopGuard(max_repeats=2, window_s=5, rules=DetectionRules.parse(""), clock=clock)
    assert g.check("a", "t", b"d").allowed
    refused = g.check("a", "t", b"d")
    assert not refused.allowed and refused.rule == "repeat" and refused.count == 2
    for _ in range(10):
        assert g.check("a", "t", b"r", read=True).allowed
    assert g.rule("t", "a", read=True)[1].count == 50  # repeat_read keeps its own count


def test_a_disabled_rule_counts_nothing():
    g = guard("[rules.repeat]\nenabled = false")
    assert all(g.check("a", "t", b"d").allowed for _ in range(20))
    assert not g._seen


def test_the_default_guard_reads_the_rules_file_named_in_the_environment(tmp_path, monkeypatch):
    rules = tmp_path / "rules.toml"
    rules.write_text("[rules.repeat]\ncount = 7\n")
    monkeypatch.setenv("WAKELINE_DETECTION_RULES", str(rules))
    assert LoopGuard().rule("t", "a", read=False)[1].count == 7
