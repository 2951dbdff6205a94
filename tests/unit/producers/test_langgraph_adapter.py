"""The LangGraph adapter without a broker (producers/adapters/langgraph.py): every LangGraph
checkpoint is a WorkflowSnapshot, recorded before the next step's tool calls; a checkpoint
saved with LangGraph's default (async) durability, and a replay that did not go back
through `WakelineGraph.invoke`, are refused. The rollback itself is tested on the real stack
(tests/integration/compensator/test_langgraph.py)."""

from __future__ import annotations

import json
from typing import Any, TypedDict

import pytest

pytest.importorskip("langgraph")

from langchain_core.tools import tool  # noqa: E402
from langgraph.graph import END, START, StateGraph  # noqa: E402

from wakeline.producers import Emitter, SdkError  # noqa: E402
from wakeline.producers.adapters.langgraph import (  # noqa: E402
    TimeTravelRefused,
    WakelineGraph,
    snapshot_name,
)

from .conftest import Recorder  # noqa: E402


class S(TypedDict, total=False):
    n: int
    key: str


def graph(wl: WakelineGraph) -> Any:
    wl.emitter.loop_guard = None  # the replays repeat calls on purpose
    store: dict[str, int] = {}

    def put(key: str, value: int) -> int:
        store[key] = value
        return value

    def node(name: str) -> Any:
        def run(s: S) -> S:
            wl.call("kv.put", put, {"key": f"{s.get('key', 'k')}-{name}", "value": s.get("n", 0)})
            return {"n": s.get("n", 0) + 1}

        return run

    g = StateGraph(S)
    g.add_node("a", node("a"))
    g.add_node("b", node("b"))
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", END)
    return g.compile(checkpointer=wl.checkpointer)


def test_each_checkpoint_is_a_snapshot_before_the_next_steps_calls(
    recorded: tuple[Emitter, Recorder],
) -> None:
    emitter, rec = recorded
    wl = WakelineGraph(emitter, "wf-lg", agent_id="a", principal="p")
    app = graph(wl)
    cfg = wl.config("t1")
    assert wl.invoke(app, {"n": 0}, cfg) == {"n": 2}
    events = rec.events()
    kinds = [(e["type"], e.get("tool") or e.get("name", "")) for e in events]
    history = list(app.get_state_history(cfg))
    ids = [h.config["configurable"]["checkpoint_id"] for h in reversed(history)]
    assert [k for k in kinds if k[0] == "WorkflowSnapshot"] == [
        ("WorkflowSnapshot", snapshot_name(i)) for i in ids
    ]
    # input, before a, a's call, after a, b's call, after b
    assert [k[0] for k in kinds] == ["WorkflowSnapshot", "WorkflowSnapshot", "ToolIntent",
                                     "ToolResult", "WorkflowSnapshot", "ToolIntent",
                                     "ToolResult", "WorkflowSnapshot"]  # fmt: skip
    after_a = json.loads(events[4]["state"])
    assert after_a["values"] == {"n": 1} and after_a["step"] == 1
    assert after_a["thread_id"] == "t1" and after_a["parent_checkpoint_id"] == ids[1]
    assert wl.snapshots[ids[2]] == events[4]["event_id"]


def test_async_durability_and_an_unrolled_replay_are_refused(
    recorded: tuple[Emitter, Recorder],
) -> None:
    emitter, _ = recorded
    wl = WakelineGraph(emitter, "wf-lg", agent_id="a", principal="p", on_time_travel="refuse")
    app = graph(wl)
    with pytest.raises(SdkError, match="durability='sync'"):
        app.invoke({"n": 0}, wl.config("t0"))
    cfg = wl.config("t1")
    wl.invoke(app, {"n": 0}, cfg)
    past = next(s for s in app.get_state_history(cfg) if s.next == ("b",))
    with pytest.raises(TimeTravelRefused, match="on_time_travel='refuse'"):
        wl.invoke(app, None, past.config)
    with pytest.raises(TimeTravelRefused, match="without undoing what came after it"):
        app.invoke(None, past.config, durability="sync")


def test_allow_replays_as_langgraph_does(recorded: tuple[Emitter, Recorder]) -> None:
    emitter, rec = recorded
    wl = WakelineGraph(emitter, "wf-lg", agent_id="a", principal="p", on_time_travel="allow")
    app = graph(wl)
    cfg = wl.config("t1")
    wl.invoke(app, {"n": 0}, cfg)
    past = next(s for s in app.get_state_history(cfg) if s.next == ("b",))
    assert wl.invoke(app, None, past.config) == {"n": 2}
    assert sum(e["type"] == "ToolIntent" for e in rec.events()) == 3  # b ran again


def test_tools_go_through_the_current_context_with_the_emitters_specs(
    recorded: tuple[Emitter, Recorder],
) -> None:
    emitter, rec = recorded
    wl = WakelineGraph(emitter, "wf-lg", agent_id="a", principal="p")

    @tool("kv.get")
    def kv_get(key: str) -> str:
        """Read a key."""
        return "v"

    (audited,) = wl.tools([kv_get])
    assert audited.invoke({"key": "x"}) == "v"
    (intent, _) = rec.events()
    assert intent["tool"] == "kv.get" and intent["reversibility"] == "read"
    assert intent["run_id"] == wl.context.run_id


def test_ainvoke_saves_through_aput_the_same_way(recorded: tuple[Emitter, Recorder]) -> None:
    import asyncio

    emitter, rec = recorded
    wl = WakelineGraph(emitter, "wf-lg", agent_id="a", principal="p", on_time_travel="refuse")
    app = graph(wl)
    cfg = wl.config("t1")
    assert asyncio.run(wl.ainvoke(app, {"n": 0}, cfg)) == {"n": 2}
    kinds = [e["type"] for e in rec.events()]
    assert kinds.count("WorkflowSnapshot") == 4 and kinds.count("ToolIntent") == 2
    past = next(s for s in app.get_state_history(cfg) if s.next == ("b",))
    with pytest.raises(TimeTravelRefused):
        asyncio.run(wl.ainvoke(app, None, past.config))


def test_going_back_runs_the_injected_rollback_and_nothing_more_when_it_fails(
    recorded: tuple[Emitter, Recorder],
) -> None:
    emitter, rec = recorded
    asked: list[tuple[str, str, float, str]] = []

    def rollback(workflow_id: str, checkpoint: str, *, wait_s: float, reason: str) -> Any:
        asked.append((workflow_id, checkpoint, wait_s, reason))
        raise SdkError("no compensator here")

    wl = WakelineGraph(emitter, "wf-lg", agent_id="a", principal="p", wait_s=7, rollback=rollback)
    app = graph(wl)
    cfg = wl.config("t1")
    wl.invoke(app, {"n": 0}, cfg)
    past = next(s for s in app.get_state_history(cfg) if s.next == ("b",))
    before = len(rec.events())
    with pytest.raises(SdkError, match="no compensator here"):
        wl.invoke(app, None, past.config)
    snap = wl.snapshots[past.config["configurable"]["checkpoint_id"]]
    assert asked == [("wf-lg", snap, 7, f"LangGraph went back to checkpoint {snap}")]
    assert len(rec.events()) == before and wl.rollbacks == []  # b did not run again
