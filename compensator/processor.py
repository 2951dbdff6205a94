"""The compensator's stream processor: the events topic -> the compensator's state.

It runs on the shared runner (processors/stream.py) in its own consumer group on the events
topic. For each round of the runner's sink (the batches of every partition read meanwhile),
one PostgreSQL transaction (fenced by each partition's epoch, compensator/store.py): the
events a plan is computed from are recorded; a Quarantine is published to the compacted
quarantines topic (SDK gates refuse the workflow's calls from then on) and its plan is
computed (compensator/plan.py) and stored, actions to run and tasks to file; a Release
tombstones the quarantine and cancels the actions not started; late intents and results of
a quarantined workflow join its plan; the compensator's own CompensationResult settles its
action. Undecodable records go to the DLQ with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import blake3

from wakeline.compensator import scopes
from wakeline.compensator.plan import Scope, Step, build_plan
from wakeline.compensator.registry import (
    CompensationRegistry,
)
from wakeline.compensator.store import (
    CompensatorStore,
    Plan,
    StoredEvent,
    pg_text,
    workflow_key,
)
from wakeline.infra.settings import Topics
from wakeline.ledger.records import LedgerRecord
from wakeline.processors.audit import clip
from wakeline.processors.auditor import dlq_record
from wakeline.processors.stream import COMMITTED, Applied, Assigned, Output, PublishError

if TYPE_CHECKING:
    from wakeline.compensator.executor import Executor

log = logging.getLogger(__name__)

AGENT = "wakeline-compensator"
#: the event types a plan is computed from (everything else is only read past)
KEPT = frozenset(
    {
        "ToolIntent",
        "ToolResult",
        "Quarantine",
        "Release",
        "CompensationStarted",
        "CompensationResult",
        "Escalation",
        "WorkflowSnapshot",  # where a rollback starts (plan.after_checkpoint)
    }
)
_MISPLACED = (
    "{kind} ignored: the record key is not the event's workflow_id, so it is not on the "
    "workflow's partition (write it keyed by the workflow id, as the SDK and `wakeline "
    "quarantine` do)"
)
_SCOPE_WIDTH = {"run": 0, "tainted": 1, "agent": 1, "boundary": 1, "workflow": 2}


def task_id(quarantine_id: str, kind: str, intent_id: str | None) -> str:
    """`inc-` + 16 hex digits, the same for the same plan and call in every process."""
    h = blake3.blake3(f"{quarantine_id}\x00{kind}\x00{intent_id or ''}".encode())
    return "inc-" + h.hexdigest(length=8)


def decode_frames(
    stored: Sequence[StoredEvent], decode: Callable[[bytes], dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, tuple[int, int]]]:
    """Decoded events in partition order, and event id -> (partition, offset)."""
    events, positions = [], {}
    for s in stored:
        try:
            event = decode(s.value)
        except Exception as e:  # noqa: BLE001 - stored frames decoded once already
            log.error(
                "stored event does not decode partition=%d offset=%d: %s", s.partition, s.offset, e
            )
            continue
        events.append(event)
        positions.setdefault(event["event_id"], (s.partition, s.offset))
    return events, positions


# -- the processor ---------------------------------------------------------------------------


@dataclass
class _Batch:
    partition: int
    #: (record, event or None, why it does not decode)
    items: list[tuple[LedgerRecord, dict[str, Any] | None, str | None]]

    @property
    def next_offset(self) -> int:
        return self.items[-1][0].offset + 1


@dataclass
class _Republish:
    plans: list[Plan]
    #: (gate key, frame) of the agent and boundary quarantines in force (compensator/scopes.py)
    gates: list[tuple[bytes, bytes]] = field(default_factory=list)


class CompensatorProcessor:
    """Events topic -> compensator state (runs on the Kafka runner, processors/stream.py)."""

    name = "compensator"
    fatal: tuple[type[BaseException], ...] = ()

    def __init__(
        self,
        store: CompensatorStore,
        handlers: CompensationRegistry,
        *,
        topics: Topics,
        executor: Executor,
        decode: Callable[[bytes], dict[str, Any]],
        owner: str,
        max_record_bytes: int = 900_000,
        unknown_grace_s: float = 5.0,
        now_us: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        self.unknown_grace_s = unknown_grace_s
        self.store = store
        self.handlers = handlers
        self.topics = topics
        self.executor = executor
        self.decode = decode
        self.owner = owner
        self.max_record_bytes = max_record_bytes
        self.now_us = now_us
        self.epochs: dict[int, int] = {}
        self.wait_for_sink: Callable[[], None] = lambda: None
        #: the sink's round stored or changed a plan, an action or a task: wake the executor
        self._plans_touched = False
        #: the active origins (compensator/scopes.py), re-read every second at most
        self._origins = scopes.ActiveOrigins()
        #: plans started, duplicates ignored, records sent to the DLQ (for tests and metrics)
        self.plans_started = 0
        self.duplicates = 0
        self.dead_lettered = 0

    # -- runner protocol (consumer thread) ----------------------------------------------------
    def assign(self, partitions: list[int]) -> Assigned:
        epochs = self.store.claim(partitions, self.owner)
        self.epochs.update(epochs)
        with self.store.transaction() as cur:
            plans = self.store.active_plans(cur, partitions=partitions)
            gates = scopes.active_gates(cur, self.topics.events, partitions)
        self.executor.assigned(epochs)
        # republish what is in force: a crash between storing a quarantine and publishing
        # it must not leave SDK gates open
        works: list[Any] = [_Republish(plans, gates)] if plans or gates else []
        return Assigned(dict.fromkeys(partitions, COMMITTED), works)

    def revoke(self, partitions: list[int]) -> None:
        self.executor.revoked(partitions)
        for p in partitions:
            self.epochs.pop(p, None)

    def handle(self, records: list[LedgerRecord], now: float) -> list[Any]:
        by_partition: dict[int, _Batch] = {}
        for r in records:
            batch = by_partition.get(r.partition)
            if batch is None:
                batch = by_partition[r.partition] = _Batch(r.partition, [])
            if r.value is None:
                batch.items.append((r, None, "record has no value (tombstone)"))
                continue
            try:
                event = self.decode(r.value)
            except Exception as e:  # noqa: BLE001 - any bad frame goes to the DLQ
                batch.items.append((r, None, f"{type(e).__name__}: {e}"))
                continue
            batch.items.append((r, event, None))
        return list(by_partition.values())

    def due(self, now: float) -> list[Any]:
        return []

    def drain(self, partitions: list[int]) -> list[Any]:
        return []

    # -- runner protocol (sink thread) ---------------------------------------------------------
    def apply(self, works: list[Any]) -> list[Applied]:
        out = []
        batches = []
        for w in works:
            if isinstance(w, _Republish):
                outputs = [self._quarantine_output(p.workflow_key, p.value) for p in w.plans]
                outputs += [self._quarantine_output(k, v) for k, v in w.gates]
                out.append(Applied(w, [o for o in outputs if o is not None], {}))
            else:
                batches.append(w)
        if batches:
            outputs = self._apply_batches(batches)
            for b in batches:
                out.append(Applied(b, outputs.pop(b.partition, []), {b.partition: b.next_offset}))
        return out

    def delivered(self, applied: list[Applied], refused: list[tuple[Output, str]]) -> list[Output]:
        for out, why in refused:
            log.error("compensator output refused topic=%s reason=%s", out.topic, why)
        if self._plans_touched:  # not on every round: under load a round comes every 10 ms
            self._plans_touched = False
            self.executor.wake()
        return []

    def reset(self) -> None:
        self.store.reset()

    def close(self) -> None:
        self.store.close()

    # -- the batches of one sink round ---------------------------------------------------------
    def _apply_batches(self, batches: list[_Batch]) -> dict[int, list[Output]]:
        """Every batch of a sink round in one transaction (a handful of round trips, however
        many partitions and records: under load the sink keeps up with the topic), fenced by
        each partition's epoch; outputs per partition, in record order. Which of the round's
        workflows are quarantined is asked about those workflows only: every plan not
        released, read each round, grew with the plans the process ever ran."""
        epochs = {}
        for b in batches:
            epoch = self.epochs.get(b.partition)
            if epoch is None:
                raise PublishError(f"partition {b.partition} is not assigned here")
            epochs[b.partition] = epoch
        outputs: dict[int, list[Output]] = {p: [] for p in epochs}
        changed: set[bytes] = set()
        with self.store.transaction() as cur:
            self.store.check_epochs(cur, epochs)
            origins = self._origins.get(cur, self.topics.events)  # before the round's writes
            rows = []
            for b in batches:
                for r, e, _ in b.items:
                    if e is not None and e.get("type") in KEPT and not _misplaced(r, e):
                        rows.append(
                            (
                                b.partition,
                                r.offset,
                                workflow_key(e["workflow_id"]),
                                pg_text(e["event_id"]),
                                e["type"],
                                int(e["time"]),
                                r.value,
                            )
                        )
            self.store.insert_events(cur, rows)
            edges, new_calls = scopes.index_events(
                cur,
                self.topics.events,
                ((b.partition, e) for b in batches for r, e, _ in b.items
                 if e is not None and "event_id" in e and not _misplaced(r, e)),
            )  # fmt: skip
            calls = {row[2] for row in rows if row[4] in ("ToolIntent", "ToolResult")}
            active = self.store.quarantined(cur, calls)
            for b in batches:
                out = outputs[b.partition]
                for r, e, error in b.items:
                    if e is None:
                        out.append(self._dead_letter(r, error or "does not decode"))
                        continue
                    kind, key = e.get("type"), workflow_key(e.get("workflow_id", ""))
                    if _misplaced(r, e):
                        # not on the workflow's partition: its place in the workflow's order
                        # is unknown, and whoever wrote it did not write it where we look
                        out.append(self._dead_letter(r, _MISPLACED.format(kind=kind)))
                        continue
                    if kind == "Quarantine":
                        out += self._on_quarantine(cur, r, e)
                        active.add(key)
                    elif kind == "Release":
                        out += self._on_release(cur, e)
                        gates = scopes.on_release(cur, self.topics.events, e, key)
                        out += [Output(self.topics.quarantines, None, g) for g in gates]
                        self._origins.invalidate()
                    elif kind == "CompensationResult":
                        self._on_result_event(cur, e)
                    elif kind in ("ToolIntent", "ToolResult") and key in active:
                        changed.add(key)
                    else:
                        continue
                    self._plans_touched = True
            added, grew = scopes.join_late(
                cur, edges, new_calls, self.decode, origins, self.topics.events
            )
            if added:
                self._plans_touched = True  # fan-outs to produce: wake the executor
            # a workflow reached already whose taint grew (its event came first, its tainted
            # parent in another workflow later): its plans are computed again
            changed |= self.store.quarantined(cur, grew)
            for key in changed:
                for plan in self.store.active_plans(cur, key=key):
                    self._replan(cur, plan)
        if changed:
            self.executor.changed(changed)
        return outputs

    def _dead_letter(self, r: LedgerRecord, reason: str) -> Output:
        self.dead_lettered += 1
        log.error(
            "compensator: record sent to the DLQ partition=%d offset=%d reason=%s",
            r.partition,
            r.offset,
            clip(reason, 300),
        )
        value, key, headers = dlq_record(
            r, reason, self.topics.events, None, self.max_record_bytes, component="compensator"
        )
        return Output(self.topics.dlq, value, key, headers)

    def _quarantine_output(self, key: bytes, value: bytes | None) -> Output | None:
        if value is None:
            return None
        return Output(self.topics.quarantines, value, key)

    def _on_quarantine(self, cur: Any, r: LedgerRecord, q: dict[str, Any]) -> list[Output]:
        qid, key = q["event_id"], workflow_key(q["workflow_id"])
        own = self._quarantine_output(key, r.value)
        existing = self.store.plan(cur, qid)
        if existing is not None:  # this very Quarantine again (a redelivery, a redo)
            return [own] if existing.state != "released" and own is not None else []
        gate: list[Output] = []
        gkey = scopes.gate_key(q) if scopes.is_origin(q) else None  # children: their workflow
        if gkey is not None and r.value is not None:
            gate = [Output(self.topics.quarantines, r.value, gkey)]
        if scopes.is_origin(q) and r.value is not None:
            # it spans workflows: record it and fan it out (compensator/scopes.py); again
            # (a redelivery, a redo) it changes nothing and is published again
            if scopes.on_origin(cur, self.topics.events, q, r.partition, r.value):
                self._origins.invalidate()
            elif not self._origin_active(cur, qid):
                return []  # released meanwhile
            if scopes.is_pseudo(q["workflow_id"]):
                # no workflow of its own, nothing to plan; its own key shows it is in force
                # (`wakeline quarantine --wait`, `wakeline release taint:<event>`)
                return gate or ([own] if own is not None else [])
        scope = scopes.plan_scope(cur, q)
        active = self.store.active_plans(cur, key=key)
        for plan in active:
            other = Scope.of(self.decode(plan.value)) if plan.value else None
            if other is not None and _covers(other, scope):
                self.duplicates += 1
                log.info(
                    "duplicate quarantine ignored workflow=%s quarantine=%s in_force=%s",
                    q["workflow_id"],
                    qid,
                    plan.quarantine_id,
                )
                return gate
        steps, events, positions = self._plan_steps(cur, key, scope)
        self.store.insert_plan(
            cur,
            quarantine=q,
            partition=r.partition,
            offset=r.offset,
            key=key,
            steps=[s.to_json() for s in steps],
        )
        self._store_steps(cur, q, r.partition, steps, events, positions)
        self.plans_started += 1
        log.warning(
            "quarantine: plan started workflow=%s quarantine=%s scope=%s compensate=%d escalate=%d",
            q["workflow_id"],
            qid,
            scope.kind,
            sum(s.action == "compensate" for s in steps),
            sum(s.action == "escalate" for s in steps),
        )
        widest = max(
            (_SCOPE_WIDTH.get(Scope.of(self.decode(p.value)).kind, 2) for p in active if p.value),
            default=-1,
        )
        publish = own is not None and _SCOPE_WIDTH[scope.kind] >= widest
        return gate + ([own] if publish and own is not None else [])

    def _plan_steps(
        self, cur: Any, key: bytes, scope: Scope
    ) -> tuple[list[Step], list[dict[str, Any]], dict[str, tuple[int, int]]]:
        events, positions = decode_frames(self.store.workflow_events(cur, key), self.decode)
        steps = build_plan(
            tool_events(events),
            self.handlers,
            scope=scope,
            now_us=self.now_us(),
            compensated=self.store.compensated_intents(cur, key),
        )
        return steps, events, positions

    def _store_steps(
        self,
        cur: Any,
        q: Mapping[str, Any],
        partition: int,
        steps: list[Step],
        events: list[dict[str, Any]],
        positions: Mapping[str, tuple[int, int]],
    ) -> None:
        qid = q["event_id"]
        actions = [
            {
                "intent_id": s.intent_id,
                "compensation": s.compensation,
                "idempotency_key": s.request.idempotency_key,
                "tool": s.tool,
                "run_id": s.run_id,
            }
            for s in steps
            if s.action == "compensate" and s.request is not None
        ]
        added = self.store.insert_actions(cur, qid, actions)
        if added:
            self.store.reopen(cur, qid)
        now_us = self.now_us()
        for s in steps:
            if to_file(s, now_us, self.unknown_grace_s):
                report = self.executor.call_report(q, s, positions)
                self.store.insert_task(cur, self.executor.task_row(q, partition, "call", s, report))

    def _replan(self, cur: Any, plan: Plan) -> None:
        """Late intents and results of a quarantined workflow join its plan."""
        if plan.value is None:
            return
        q = self.decode(plan.value)
        steps, events, positions = self._plan_steps(
            cur, plan.workflow_key, scopes.plan_scope(cur, q)
        )
        self.store.set_steps(cur, plan.quarantine_id, [s.to_json() for s in steps])
        self._store_steps(cur, q, plan.partition, steps, events, positions)

    def _origin_active(self, cur: Any, qid: str) -> bool:
        cur.execute(
            "SELECT 1 FROM compensator_origins WHERE origin_id = %s AND state = 'active'", (qid,)
        )
        return cur.fetchone() is not None

    def _on_release(self, cur: Any, e: dict[str, Any]) -> list[Output]:
        key = workflow_key(e["workflow_id"])
        lifted = e.get("quarantine_id")
        active = self.store.active_plans(cur, key=key)
        left = []
        for plan in active:
            if lifted is None or lifted == plan.quarantine_id:
                cancelled = self.store.release(cur, plan.quarantine_id, e)
                log.warning(
                    "release: quarantine lifted workflow=%s quarantine=%s by=%s cancelled=%d",
                    e["workflow_id"],
                    plan.quarantine_id,
                    e.get("by"),
                    cancelled,
                )
            else:
                left.append(plan)
        if left:  # another quarantine stays in force: publish it again
            out = self._quarantine_output(key, left[-1].value)
            return [out] if out is not None else []
        return [Output(self.topics.quarantines, None, key)]

    def _on_result_event(self, cur: Any, e: dict[str, Any]) -> None:
        status = e.get("status")
        if status in ("ok", "skipped"):
            state = "done" if status == "ok" else "nothing"
        elif e.get("final"):
            state = "failed"
        else:
            return
        detail = e.get("error_message") or f"recorded by event {e['event_id']}"
        if e.get("agent_id") == AGENT:
            self.store.settle_from_event(cur, e, state, detail)


#: the compensator's own event types: anyone who can write the events topic can forge them
COMPENSATOR_EVENTS = frozenset({"CompensationStarted", "CompensationResult", "Escalation"})


def tool_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events a plan is computed from in the daemon: what is compensated, escalated and
    attempted comes from the compensator's own state in PostgreSQL, never from events on the
    topic, so a forged CompensationResult or Escalation cannot make it skip a call."""
    return [e for e in events if e.get("type") not in COMPENSATOR_EVENTS]


def _misplaced(r: LedgerRecord, e: Mapping[str, Any]) -> bool:
    """An event the compensator acts on that is not keyed by its workflow id: it is not on
    the workflow's partition, so its place in the workflow's order is unknown."""
    return e.get("type") in KEPT and r.key != workflow_key(e.get("workflow_id", ""))


def young_unknown(step: Step, now_us: int, grace_s: float) -> bool:
    """A call with no result yet whose intent is too recent to call its outcome unknown."""
    return (
        step.reason == "outcome_unknown"
        and step.result is None
        and now_us - int(step.intent.get("time") or 0) < grace_s * 1_000_000
    )


def to_file(step: Step, now_us: int, grace_s: float) -> bool:
    """Whether a step gets a human task now (escalated, not by an earlier Escalation)."""
    return (
        step.action == "escalate"
        and step.escalated_by is None
        and not young_unknown(step, now_us, grace_s)
    )


def _covers(active: Scope, new: Scope) -> bool:
    """A quarantine in force already covers everything `new` would."""
    if active.kind == "workflow":
        return True
    if active.after_event_id is not None and active.after_event_id != new.after_event_id:
        return False  # a rollback covers only what comes after its checkpoint
    if active.kind == "run":
        return new.kind == "run" and new.run_id == active.run_id
    if active.kind in ("agent", "boundary"):
        return (
            new.kind == active.kind
            and new.target == active.target
            and (new.since or 0) >= (active.since or 0)
        )
    return new.kind == "tainted" and new.tainted <= active.tainted
