from __future__ import annotations

import asyncio

import pytest
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, ToolException, tool

from wakeline.producers import PolicyDecision, PolicyDenied, ToolSpec
from wakeline.producers.adapters.langchain import AuditedTool, audit_tool, audit_tools


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@tool
def login(user: str, password: str) -> str:
    """Log in."""
    return f"session-for-{user}"


def ctx_of(emitter):
    return emitter.workflow("wf-lc", agent_id="lc-agent", principal="alice")


def test_invocations_are_audited_and_the_tool_is_unchanged(recorded):
    emitter, rec = recorded
    audited = audit_tool(
        add, ctx_of(emitter), spec=ToolSpec("add", reversibility="read", impact="low")
    )
    assert isinstance(audited, BaseTool)
    assert (audited.name, audited.description, audited.args) == (
        add.name,
        add.description,
        add.args,
    )
    assert audited.invoke({"a": 2, "b": 3}) == 5
    assert asyncio.run(audited.ainvoke({"a": 4, "b": 4})) == 8
    msg = audited.invoke(
        {"type": "tool_call", "id": "call-1", "name": "add", "args": {"a": 1, "b": 1}}
    )
    assert msg.content == "2" and msg.tool_call_id == "call-1"
    events = rec.events()
    assert [e["type"] for e in events] == ["ToolIntent", "ToolResult"] * 3
    assert [e["args"] for e in events[::2]] == ['{"a":2,"b":3}', '{"a":4,"b":4}', '{"a":1,"b":1}']
    assert all(e["tool"] == "add" for e in events[::2])
    assert all(
        r["status"] == "ok" and r["intent_id"] == i["event_id"]
        for i, r in zip(events[::2], events[1::2], strict=True)
    )
    before = len(rec.records)
    assert add.invoke({"a": 1, "b": 2}) == 3  # the original is not audited: untouched
    assert len(rec.records) == before


def test_config_reaches_the_tool_and_stays_out_of_the_log(recorded):
    emitter, rec = recorded

    @tool
    def whoami(x: int, config: RunnableConfig) -> str:
        """Report the user from the config."""
        return f"{x}:{config['configurable']['user']}"

    audited = audit_tool(whoami, ctx_of(emitter))
    assert audited.invoke({"x": 1}, config={"configurable": {"user": "bob"}}) == "1:bob"
    assert rec.events()[0]["args"] == '{"x":1}'


def test_registry_spec_applies_redaction(recorded):
    emitter, rec = recorded
    emitter.registry.declare(
        "login", reversibility="reversible", impact="medium", redact={"password"}
    )
    [audited] = audit_tools([login], ctx_of(emitter))
    assert audited.invoke({"user": "bob", "password": "hunter2"}) == "session-for-bob"
    assert all(b"hunter2" not in value for _, _, value, _, _ in rec.records)
    intent = rec.events()[0]
    assert intent["durability"] == "strict" and intent["redacted_fields"] == ["password"]


def test_tool_errors_are_recorded_and_langchain_error_handling_still_applies(recorded):
    emitter, rec = recorded

    @tool
    def flaky(x: int) -> int:
        """Always fails."""
        raise ToolException(f"backend down for {x}")

    audited = audit_tool(flaky, ctx_of(emitter))
    with pytest.raises(ToolException, match="backend down"):
        audited.invoke({"x": 1})
    handled = audit_tool(flaky, ctx_of(emitter))
    handled.handle_tool_error = True
    assert handled.invoke({"x": 2}) == "backend down for 2"
    results = [e for e in rec.events() if e["type"] == "ToolResult"]
    assert [r["status"] for r in results] == ["error", "error"]
    assert results[0]["error_type"].endswith("ToolException")


def test_a_refused_call_never_runs_the_tool(recorded):
    emitter, rec = recorded
    emitter.policy = lambda req: PolicyDecision("deny", "no adding on sundays", "calendar")
    ran = []

    @tool
    def effect(x: int) -> int:
        """Has an effect."""
        ran.append(x)
        return x

    with pytest.raises(PolicyDenied):
        audit_tool(effect, ctx_of(emitter)).invoke({"x": 1})
    assert ran == []
    assert [e.get("status") for e in rec.events()] == [None, "denied"]


def test_context_can_be_resolved_per_call(recorded):
    emitter, rec = recorded
    contexts = [emitter.workflow(f"wf-{i}", agent_id="a", principal="p") for i in range(2)]
    current = iter(contexts)
    audited = audit_tool(add, lambda: next(current))
    assert isinstance(audited, AuditedTool)
    audited.invoke({"a": 1, "b": 1})
    audited.invoke({"a": 1, "b": 1})
    assert [e["workflow_id"] for e in rec.events()] == ["wf-0", "wf-0", "wf-1", "wf-1"]
