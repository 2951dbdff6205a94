"""LangGraph integration: a graph's tool calls through the SDK, its checkpoints as Wakeline
checkpoints, and going back to an earlier checkpoint undoes what the graph did after it.

    wl = WakelineGraph(emitter, "wf-42", agent_id="planner", principal="alice@example.com")
    app = graph.compile(checkpointer=wl.checkpointer)     # wraps InMemorySaver() by default
    # in a node: wl.call("payments.charge", charge, {...}); or tools=wl.tools([...])
    wl.invoke(app, inputs, wl.config("thread-1"))        # app.invoke(..., durability="sync")
    past = next(s for s in app.get_state_history(cfg) if s.next == ("bill",))
    wl.invoke(app, None, past.config)  # time travel: the side effects after `past` are undone

The graph must run with `durability="sync"` (`wl.invoke` passes it): LangGraph then saves
each checkpoint before the next step runs, so its snapshot is on the workflow's partition
before that step's tool calls, and a rollback to it undoes exactly the calls after it. With
LangGraph's default ("async") a checkpoint is saved while the next step already runs; the
checkpointer refuses to save one that way (`SdkError`) rather than record it out of order.

LangGraph's own time travel replays a graph from an earlier checkpoint but leaves the
outside world as the later steps changed it. Here every checkpoint LangGraph saves also
becomes a `WorkflowSnapshot` named `langgraph:<checkpoint_id>` (its state: thread, checkpoint
and parent ids, step, source and the channel values, when they are JSON and within the size
limit; otherwise `values` is null and `values_omitted` says why). `wl.invoke` with the config
of a checkpoint that is not the thread's latest (one from `get_state_history`) goes back to
it, before any step runs again, as `on_time_travel` says:

- `"rollback"` (default): `wakeline workflow rollback` to that checkpoint's snapshot (the run
  is quarantined, the compensator undoes its calls after the checkpoint newest first and
  escalates what it cannot, the run is released), then `Emitter.resume` from it: the graph
  goes on in a new run whose calls descend from that snapshot. Needs the PostgreSQL ledger
  (`dsn`, default `WAKELINE_DSN` or the local stack) and a compensator running; it waits up
  to `wait_s` for both and raises `StackError` past it (then nothing runs again). What
  undoes is `rollback=` (a `Rollback`; default compensator/rollback.py
  `rollback_when_ledgered`, loaded only then: building a graph needs Kafka only).
- `"refuse"`: raise `TimeTravelRefused` (nothing runs again).
- `"allow"`: LangGraph's behaviour: replay without undoing anything.

Going back with a plain `app.invoke` cannot be caught before the first step runs again
(LangGraph saves the replay's first checkpoint while that step runs): the checkpointer
refuses that checkpoint (`TimeTravelRefused`), which stops the replay there.

Going back further than an earlier rollback (to a checkpoint of an older run) also undoes
the runs resumed since from a point after that checkpoint (compensator/rollback.py
`resumed_since`). A checkpoint on a branch left by an earlier time travel names state whose
side effects were undone then: going back to it replays from that state, but what was undone
is not redone.
Requires the `langgraph` extra.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.memory import InMemorySaver

from wakeline.producers.emitter import Emitter
from wakeline.producers.errors import NotSerialisable, PayloadTooLarge, SdkError
from wakeline.producers.registry import ToolSpec
from wakeline.producers.workflow import WorkflowContext

log = logging.getLogger(__name__)

T = TypeVar("T")
TimeTravel = Literal["rollback", "refuse", "allow"]
PREFIX = "langgraph:"
#: where LangGraph puts the run's durability mode in the configs it hands a checkpointer
_DURABILITY = "__pregel_durability"


class TimeTravelRefused(SdkError):
    """The graph went back to an earlier checkpoint and `on_time_travel` is "refuse"."""


class Rollback(Protocol):
    """What going back runs (`WakelineGraph(rollback=...)`): undo the workflow's calls after
    its snapshot `checkpoint` (a name or event id), waiting up to `wait_s`, and return the
    report of compensator/rollback.py `rollback`, whose `["checkpoint"]["event_id"]` is the
    snapshot the graph resumes from. It raises when nothing may run again."""

    def __call__(
        self, workflow_id: str, checkpoint: str, *, wait_s: float, reason: str
    ) -> dict[str, Any]: ...


def snapshot_name(checkpoint_id: str) -> str:
    return f"{PREFIX}{checkpoint_id}"


class WakelineGraph:
    """One workflow's LangGraph side: the context its tools call through (replaced by a
    resumed one after a rollback), the checkpointer and what going back does."""

    def __init__(
        self,
        emitter: Emitter,
        workflow_id: str,
        *,
        agent_id: str,
        principal: str,
        saver: BaseCheckpointSaver | None = None,
        on_time_travel: TimeTravel = "rollback",
        dsn: str | None = None,
        wait_s: float = 120.0,
        rollback: Rollback | None = None,
        **fields: Any,
    ) -> None:
        if on_time_travel not in ("rollback", "refuse", "allow"):
            raise SdkError(f"on_time_travel is rollback, refuse or allow, got {on_time_travel!r}")
        self.emitter = emitter
        self.workflow_id = workflow_id
        self.context: WorkflowContext = emitter.workflow(
            workflow_id, agent_id=agent_id, principal=principal, **fields
        )
        self.on_time_travel = on_time_travel
        self.dsn = dsn
        self.wait_s = wait_s
        #: what going back runs; None: the PostgreSQL ledger at `dsn` (`_ledger_rollback`)
        self.rollback = rollback
        #: LangGraph checkpoint id -> the WorkflowSnapshot event id that saved it last
        self.snapshots: dict[str, str] = {}
        #: the rollbacks done (reports of compensator/rollback.py), oldest first
        self.rollbacks: list[dict[str, Any]] = []
        self.checkpointer = WakelineCheckpointer(saver or InMemorySaver(), self)
        #: (thread, checkpoint) `invoke` went back to: its replay's first checkpoint is allowed
        self._gone_back: tuple[Any, str] | None = None

    def config(self, thread_id: str) -> RunnableConfig:
        return {"configurable": {"thread_id": thread_id}}

    def invoke(self, app: Any, inputs: Any, config: RunnableConfig, **kw: Any) -> Any:
        """`app.invoke` with `durability="sync"`, going back first when `config` names an
        earlier checkpoint (see the module docstring)."""
        kw.setdefault("durability", "sync")
        self._travel(config)
        return app.invoke(inputs, config, **kw)

    async def ainvoke(self, app: Any, inputs: Any, config: RunnableConfig, **kw: Any) -> Any:
        kw.setdefault("durability", "sync")
        await asyncio.to_thread(self._travel, config)  # a rollback waits for the compensator
        return await app.ainvoke(inputs, config, **kw)

    def _travel(self, config: RunnableConfig) -> None:
        conf = config.get("configurable", {})
        target = conf.get("checkpoint_id")
        if target and not self.checkpointer.is_latest(conf, target):
            self.going_back(conf, target)
            self._gone_back = (conf.get("thread_id"), target)

    def call(
        self,
        tool: str | ToolSpec,
        fn: Callable[..., T],
        args: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> T:
        """A tool call of a node, through the SDK (gates, intent, the tool, result)."""
        return self.context.call(tool, fn, args, **options)

    def tools(self, tools: Iterable[Any], **kw: Any) -> list[Any]:
        """LangChain tools (for a `ToolNode`) whose calls go through the current context."""
        from wakeline.producers.adapters.langchain import audit_tools

        kw.setdefault("registry", self.emitter.registry)
        return audit_tools(list(tools), lambda: self.context, **kw)

    # -- what the checkpointer calls -------------------------------------------------------
    def saved(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: Any) -> str:
        """A checkpoint LangGraph saved: its WorkflowSnapshot; returns the event id."""
        conf = config.get("configurable", {})
        values = {
            k: v
            for k, v in (checkpoint.get("channel_values") or {}).items()
            if not k.startswith(("__", "branch:"))
        }
        state: dict[str, Any] = {
            "thread_id": conf.get("thread_id"),
            "checkpoint_ns": conf.get("checkpoint_ns", ""),
            "checkpoint_id": checkpoint["id"],
            "parent_checkpoint_id": conf.get("checkpoint_id"),
            "step": (metadata or {}).get("step"),
            "source": (metadata or {}).get("source"),
        }
        name = snapshot_name(checkpoint["id"])
        try:
            event_id = self.context.checkpoint(name, {**state, "values": values})
        except (NotSerialisable, PayloadTooLarge) as e:
            omitted = {**state, "values": None, "values_omitted": str(e)}
            event_id = self.context.checkpoint(name, omitted)
        self.snapshots[checkpoint["id"]] = event_id
        return event_id

    def going_back(self, thread: Mapping[str, Any], parent_id: str) -> None:
        """Go back to checkpoint `parent_id` of the thread, as `on_time_travel` says."""
        if self.on_time_travel == "allow":
            log.warning("langgraph: replay from checkpoint %s without undoing", parent_id)
            return
        if self.on_time_travel == "refuse":
            raise TimeTravelRefused(
                f"workflow {self.workflow_id} thread {thread.get('thread_id')}: going back to "
                f"checkpoint {parent_id} would replay steps whose side effects are not undone "
                "(on_time_travel='refuse')"
            )
        snap = self.snapshots.get(parent_id) or snapshot_name(parent_id)
        report = self._rollback(snap)
        self.rollbacks.append(report)
        resumed = self.emitter.resume(
            self.workflow_id, report["checkpoint"]["event_id"], dsn=self.dsn
        )
        self.context = resumed.context
        self.snapshots[parent_id] = resumed.resumed_id

    def _rollback(self, snapshot: str) -> dict[str, Any]:
        self.emitter.flush(self.wait_s)
        undo = self.rollback or _ledger_rollback(self.emitter.kafka, self.dsn)
        return undo(
            self.workflow_id, snapshot, wait_s=self.wait_s,
            reason=f"LangGraph went back to checkpoint {snapshot}",
        )  # fmt: skip


def _ledger_rollback(kafka: Any, dsn: str | None) -> Rollback:
    """The default `Rollback`: `wakeline workflow rollback` against the PostgreSQL ledger at
    `dsn` once the checkpoint is ledgered (compensator/rollback.py `rollback_when_ledgered`),
    loaded only when a graph goes back: building and running a graph needs Kafka only."""
    from wakeline.compensator.rollback import rollback_when_ledgered

    return functools.partial(rollback_when_ledgered, kafka, dsn)


class WakelineCheckpointer(BaseCheckpointSaver):
    """A LangGraph checkpointer that stores in `inner` and tells Wakeline (`WakelineGraph`)."""

    def __init__(self, inner: BaseCheckpointSaver, graph: WakelineGraph) -> None:
        super().__init__(serde=inner.serde)
        self.inner = inner
        self.graph = graph

    def _before_put(self, config: RunnableConfig) -> None:
        conf = config.get("configurable", {})
        durability = conf.get(_DURABILITY)
        if durability != "sync":
            raise SdkError(
                f"workflow {self.graph.workflow_id}: LangGraph saves this checkpoint with "
                f"durability {durability or 'async'!r}, while the next step already runs, so "
                "its snapshot could be recorded after that step's tool calls; run the graph "
                "with durability='sync' (WakelineGraph.invoke does)"
            )
        parent = conf.get("checkpoint_id")
        if not parent or self.is_latest(conf, parent) or self.graph.on_time_travel == "allow":
            return
        if self.graph._gone_back == (conf.get("thread_id"), parent):
            self.graph._gone_back = None  # the replay `WakelineGraph.invoke` went back for
            return
        raise TimeTravelRefused(
            f"workflow {self.graph.workflow_id} thread {conf.get('thread_id')}: the graph went "
            f"back to checkpoint {parent} without undoing what came after it; go back with "
            "WakelineGraph.invoke(app, None, config), which rolls back first"
        )

    def is_latest(self, conf: Mapping[str, Any], checkpoint_id: str) -> bool:
        """Whether `checkpoint_id` is the thread's newest checkpoint (or it has none)."""
        thread = {"configurable": {"thread_id": conf.get("thread_id"),
                                   "checkpoint_ns": conf.get("checkpoint_ns", "")}}  # fmt: skip
        latest = self.inner.get_tuple(thread)  # type: ignore[arg-type]
        return latest is None or latest.config["configurable"]["checkpoint_id"] == checkpoint_id

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        self._before_put(config)
        saved = self.inner.put(config, checkpoint, metadata, new_versions)
        self.graph.saved(config, checkpoint, metadata)
        return saved

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        self._before_put(config)
        saved = await self.inner.aput(config, checkpoint, metadata, new_versions)
        self.graph.saved(config, checkpoint, metadata)
        return saved

    # -- the rest is the inner saver's ------------------------------------------------------
    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self.inner.get_tuple(config)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self.inner.aget_tuple(config)

    def list(self, config: RunnableConfig | None, **kw: Any) -> Iterator[CheckpointTuple]:
        return self.inner.list(config, **kw)

    def alist(self, config: RunnableConfig | None, **kw: Any) -> AsyncIterator[CheckpointTuple]:
        return self.inner.alist(config, **kw)

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self.inner.put_writes(config, writes, task_id, task_path)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self.inner.aput_writes(config, writes, task_id, task_path)

    def delete_thread(self, thread_id: str) -> None:
        self.inner.delete_thread(thread_id)

    async def adelete_thread(self, thread_id: str) -> None:
        await self.inner.adelete_thread(thread_id)

    def get_next_version(self, current: Any, channel: Any) -> Any:
        return self.inner.get_next_version(current, channel)
