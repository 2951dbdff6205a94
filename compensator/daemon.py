"""The compensation daemon: quarantine -> reverse saga -> human escalation.

Two halves share the state in PostgreSQL (compensator/store.py):

    events topic --> CompensatorProcessor (on the runner, processors/stream.py)
                       records intents, results, quarantines, releases, its own events;
                       on a Quarantine: publishes it to the compacted quarantines topic (SDK
                       gates refuse the workflow's calls from then on), computes the plan
                       (compensator/plan.py) and stores it: actions to run, tasks to file;
                       on a Release: tombstones the quarantine, cancels what has not started;
                       late intents and results of a quarantined workflow join its plan
                 --> Executor (its own threads)
                       runs each plan's actions newest first, one at a time, each under a
                       lease (store.lease); records CompensationStarted and
                       CompensationResult on the workflow's partition; retries transient
                       failures with exponential backoff and jitter; escalates the rest;
                       publishes each task's Escalation event and notifies the webhook

The compensator's own events come back to the processor on the same partition; a
CompensationResult seen there settles its action, so an attempt whose process died after
recording its result is not run again. Delivery is at least once everywhere; what makes a
repeated action harmless is the idempotency key every handler passes to the outside world.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import blake3

from wakeline.compensator.plan import Scope, Step, build_plan
from wakeline.compensator.registry import (
    CompensationRegistry,
    CompensationRequest,
    Done,
    Failed,
    NothingToUndo,
    Outcome,
)
from wakeline.compensator.settings import CompensatorSettings
from wakeline.compensator.store import (
    TERMINAL,
    CompensatorStore,
    Lease,
    Plan,
    StoredEvent,
    pg_text,
    workflow_key,
)
from wakeline.infra.settings import Topics
from wakeline.ledger.records import LedgerRecord
from wakeline.processors.audit import clip
from wakeline.processors.stream import COMMITTED, Applied, Assigned, Output, PublishError, deliver
from wakeline.schemas import cloudevents_headers, encode_event, new_event_id

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
    }
)
_SCOPE_WIDTH = {"run": 0, "tainted": 1, "workflow": 2}


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


@dataclass
class _Republish:
    plans: list[Plan]


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
        self.executor.assigned(epochs)
        # republish what is in force: a crash between storing a quarantine and publishing
        # it must not leave SDK gates open
        works: list[Any] = [_Republish(plans)] if plans else []
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
        for w in works:
            if isinstance(w, _Republish):
                outputs = [self._quarantine_output(p.workflow_key, p.value) for p in w.plans]
                out.append(Applied(w, [o for o in outputs if o is not None], {}))
                continue
            outputs = self._apply_batch(w)
            out.append(Applied(w, outputs, {w.partition: w.items[-1][0].offset + 1}))
        return out

    def delivered(self, applied: list[Applied], refused: list[tuple[Output, str]]) -> list[Output]:
        for out, why in refused:
            log.error("compensator output refused topic=%s reason=%s", out.topic, why)
        self.executor.wake()
        return []

    def reset(self) -> None:
        self.store.reset()

    def close(self) -> None:
        self.store.close()

    # -- a batch of one partition ----------------------------------------------------------
    def _apply_batch(self, batch: _Batch) -> list[Output]:
        p = batch.partition
        epoch = self.epochs.get(p)
        if epoch is None:
            raise PublishError(f"partition {p} is not assigned here")
        outputs: list[Output] = []
        changed: set[bytes] = set()
        with self.store.transaction() as cur:
            self.store.check_epoch(cur, p, epoch)
            rows = []
            for r, e, error in batch.items:
                if e is None:
                    outputs.append(self._dead_letter(r, error or "does not decode"))
                elif e.get("type") in KEPT:
                    rows.append(
                        (
                            p,
                            r.offset,
                            workflow_key(e["workflow_id"]),
                            pg_text(e["event_id"]),
                            e["type"],
                            int(e["time"]),
                            r.value,
                        )
                    )
            self.store.insert_events(cur, rows)
            active = {
                plan.workflow_key
                for plan in self.store.active_plans(cur, partitions=[p])
                if plan.state in ("running", "done")
            }
            for r, e, _ in batch.items:
                if e is None:
                    continue
                kind, key = e.get("type"), workflow_key(e.get("workflow_id", ""))
                if kind == "Quarantine":
                    outputs += self._on_quarantine(cur, r, e)
                    active.add(key)
                elif kind == "Release":
                    outputs += self._on_release(cur, e)
                elif kind == "CompensationResult":
                    self._on_result_event(cur, e)
                elif kind in ("ToolIntent", "ToolResult") and key in active:
                    changed.add(key)
            for key in changed:
                for plan in self.store.active_plans(cur, key=key):
                    self._replan(cur, plan)
        if changed:
            self.executor.changed(changed)
        return outputs

    def _dead_letter(self, r: LedgerRecord, reason: str) -> Output:
        self.dead_lettered += 1
        log.error(
            "compensator: undecodable event sent to the DLQ partition=%d offset=%d reason=%s",
            r.partition,
            r.offset,
            clip(reason, 300),
        )
        headers = [
            ("wakeline_dlq_reason", (clip(reason, 4000) or "").encode("utf-8", "replace")),
            ("wakeline_dlq_component", b"compensator"),
            ("wakeline_dlq_topic", self.topics.events.encode()),
            ("wakeline_dlq_partition", str(r.partition).encode()),
            ("wakeline_dlq_offset", str(r.offset).encode()),
        ]
        value, key = r.value, r.key
        if len(value or b"") + len(key or b"") + 16_384 > self.max_record_bytes:
            digest = blake3.blake3(value or b"").hexdigest()
            headers.append(("wakeline_dlq_value_blake3", digest.encode()))
            value, key = None, None if key is None else key[:1024]
        else:
            headers = [*r.headers, *headers]
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
        scope = Scope.of(q)
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
                return []
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
        return [own] if own is not None and _SCOPE_WIDTH[scope.kind] >= widest else []

    def _plan_steps(
        self, cur: Any, key: bytes, scope: Scope
    ) -> tuple[list[Step], list[dict[str, Any]], dict[str, tuple[int, int]]]:
        events, positions = decode_frames(self.store.workflow_events(cur, key), self.decode)
        steps = build_plan(
            events,
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
                report = call_report(q, s, positions)
                self.store.insert_task(cur, self.executor.task_row(q, partition, "call", s, report))

    def _replan(self, cur: Any, plan: Plan) -> None:
        """Late intents and results of a quarantined workflow join its plan."""
        if plan.value is None:
            return
        q = self.decode(plan.value)
        steps, events, positions = self._plan_steps(cur, plan.workflow_key, Scope.of(q))
        self.store.set_steps(cur, plan.quarantine_id, [s.to_json() for s in steps])
        self._store_steps(cur, q, plan.partition, steps, events, positions)

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
        self.store.settle_from_event(cur, e["run_id"], e["original_event_id"], state, detail)


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
    if active.kind == "run":
        return new.kind == "run" and new.run_id == active.run_id
    return new.kind == "tainted" and new.tainted <= active.tainted


# -- reports (plain language; compensator/report.py renders them in full) ---------------------


@dataclass(frozen=True)
class Report:
    title: str
    text: str
    data: dict[str, Any] = field(default_factory=dict)
    undone: list[str] = field(default_factory=list)
    not_undone: list[str] = field(default_factory=list)
    recommended: list[str] = field(default_factory=list)
    related_event_ids: list[str] = field(default_factory=list)


def call_report(
    q: Mapping[str, Any], step: Step, positions: Mapping[str, tuple[int, int]]
) -> Report:
    at = positions.get(step.intent_id)
    where = f" (partition {at[0]}, offset {at[1]})" if at else ""
    line = f"{step.tool} in run {step.run_id}, intent {step.intent_id}{where}: {step.why}"
    return Report(
        title=f"{q['workflow_id']}: {step.tool} not undone ({step.reason})",
        text=line,
        data={"step": step.to_json()},
        not_undone=[line],
        recommended=[f"check {step.tool} and undo it by hand if needed"],
        related_event_ids=[step.intent_id],
    )


def plan_report(q: Mapping[str, Any], steps: Sequence[Step], actions: Mapping[str, Any]) -> Report:
    undone, not_undone = [], []
    for s in steps:
        a = actions.get(s.intent_id)
        if a is not None and a.state in ("done", "nothing"):
            undone.append(f"{s.tool} undone by {a.compensation}: {a.detail or a.state}")
        elif a is not None:
            not_undone.append(f"{s.tool}: compensation {a.state} ({a.detail or 'no detail'})")
        elif s.action == "escalate":
            not_undone.append(f"{s.tool}: {s.why}")
    text = "\n".join(
        [f"Workflow {q['workflow_id']} quarantined by {q.get('by')}: {q.get('reason')}"]
        + [f"undone: {u}" for u in undone]
        + [f"not undone: {n}" for n in not_undone]
    )
    return Report(
        title=f"{q['workflow_id']}: {len(undone)} undone, {len(not_undone)} need a human",
        text=text,
        undone=undone,
        not_undone=not_undone,
        related_event_ids=[s.intent_id for s in steps],
    )


# -- the executor ----------------------------------------------------------------------------


@dataclass
class _Context:
    """A plan's quarantine and the workflow's events, decoded once per change."""

    quarantine: dict[str, Any]
    events: list[dict[str, Any]]
    positions: dict[str, tuple[int, int]]
    intents: dict[str, dict[str, Any]]
    results: dict[str, dict[str, Any]]


class Executor:
    """Runs the actions of the running plans on this process's partitions."""

    def __init__(
        self,
        store: CompensatorStore,
        handlers: CompensationRegistry,
        *,
        topics: Topics,
        producer: Any,
        decode: Callable[[bytes], dict[str, Any]],
        settings: CompensatorSettings,
        owner: str,
        notifier: Any = None,
        source: str | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self.store = store
        self.handlers = handlers
        self.topics = topics
        self.producer = producer
        self.decode = decode
        self.settings = settings
        self.owner = owner
        self.notifier = notifier
        self.source = source or f"wakeline://compensator/{socket.gethostname()}"
        self.poll_s = poll_s
        self._epochs: dict[int, int] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._inflight: set[str] = set()
        self._leases: dict[tuple[str, str], Lease] = {}
        self._contexts: dict[str, _Context] = {}
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="compensate")
        self._threads: list[threading.Thread] = []
        #: counters for tests and metrics
        self.attempts = 0
        self.escalations = 0

    # -- partitions (called by the processor) --------------------------------------------
    def assigned(self, epochs: Mapping[int, int]) -> None:
        with self._lock:
            self._epochs.update(epochs)
        self.wake()

    def revoked(self, partitions: Sequence[int]) -> None:
        with self._lock:
            for p in partitions:
                self._epochs.pop(p, None)

    def changed(self, keys: set[bytes]) -> None:
        with self._lock:
            for qid, ctx in list(self._contexts.items()):
                if workflow_key(ctx.quarantine["workflow_id"]) in keys:
                    del self._contexts[qid]
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> Executor:
        for target, name in ((self._schedule, "schedule"), (self._heartbeat, "leases")):
            t = threading.Thread(target=target, name=f"compensator-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for t in self._threads:
            t.join(timeout)

    # -- scheduling ------------------------------------------------------------------------------
    def _schedule(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.tick()
            except Exception as e:  # noqa: BLE001 - the database may be away: try again
                log.warning("compensator: scheduling failed, retrying: %s", e)
                self.store.reset()
                self._stop.wait(1.0)

    def tick(self) -> None:
        """Start the running plans not in flight; publish tasks; notify."""
        with self._lock:
            epochs = dict(self._epochs)
        for qid, partition in self.store.runnable(epochs):
            with self._lock:
                if qid in self._inflight:
                    continue
                self._inflight.add(qid)
            self._pool.submit(self._run_plan_guarded, qid, partition)
        self._publish_tasks(epochs)
        if self.notifier is not None:
            self._notify(epochs)

    def _run_plan_guarded(self, qid: str, partition: int) -> None:
        try:
            self._run_plan(qid, partition)
        except Exception as e:  # noqa: BLE001 - retried on the next tick
            log.warning("compensator: plan %s interrupted, will resume: %s", qid, e)
            self.store.reset()
        finally:
            with self._lock:
                self._inflight.discard(qid)

    def _run_plan(self, qid: str, partition: int) -> None:
        while not self._stop.is_set():
            with self._lock:
                epoch = self._epochs.get(partition)
            if epoch is None:
                return  # revoked: the next owner goes on
            actions = self.store.actions(qid)
            todo = [a for a in actions if a.state not in TERMINAL]
            if not todo:
                self._finish(qid, partition, actions)
                return
            action = todo[0]
            if action.waiting or (action.state == "running" and action.lease_live):
                return  # a backoff, or another process's attempt: look again later
            lease = self.store.lease(
                qid,
                action.intent_id,
                owner=self.owner,
                partition=partition,
                epoch=epoch,
                lease_s=self.settings.lease_s,
            )
            if lease is None:
                return
            self._attempt(qid, partition, action, lease)

    def _context(self, qid: str, partition: int) -> _Context:
        with self._lock:
            ctx = self._contexts.get(qid)
        if ctx is not None:
            return ctx
        plan_rows = [p for p in self._active_plans_of(qid)]
        if not plan_rows or plan_rows[0].value is None:
            raise LookupError(f"plan {qid} has no stored quarantine")
        q = self.decode(plan_rows[0].value)
        events, positions = decode_frames(
            self.store.events_of(workflow_key(q["workflow_id"])), self.decode
        )
        intents = {e["event_id"]: e for e in events if e["type"] == "ToolIntent"}
        results: dict[str, dict[str, Any]] = {}
        for e in events:
            if e["type"] == "ToolResult":
                prior = results.get(e["intent_id"])
                if prior is None or (e["status"] == "ok" and prior["status"] != "ok"):
                    results[e["intent_id"]] = e
        ctx = _Context(q, events, positions, intents, results)
        with self._lock:
            self._contexts[qid] = ctx
        return ctx

    def _active_plans_of(self, qid: str) -> list[Plan]:
        with self.store.transaction() as cur:
            cur.execute(
                "SELECT p.quarantine_id, p.partition, p.workflow_key, p.workflow_id, p.state, "
                "e.value FROM compensator_plans p LEFT JOIN compensator_events e ON "
                'e.topic = p.topic AND e.partition = p.partition AND e."offset" = p."offset"'
                " WHERE p.quarantine_id = %s",
                (qid,),
            )
            rows = cur.fetchall()
        return [
            Plan(r[0], int(r[1]), bytes(r[2]), r[3], r[4], None if r[5] is None else bytes(r[5]))
            for r in rows
        ]

    # -- one attempt ---------------------------------------------------------------------------
    def _attempt(self, qid: str, partition: int, action: Any, lease: Lease) -> None:
        key = (qid, action.intent_id)
        with self._lock:
            self._leases[key] = lease
        try:
            ctx = self._context(qid, partition)
            intent = ctx.intents.get(action.intent_id)
            if intent is None:
                missing = Failed("the original intent is not in the compensator's history")
                self._end(lease, ctx, partition, action, None, missing, 0)
                return
            request = CompensationRequest.of(
                action.compensation,
                intent,
                ctx.results.get(action.intent_id),
                attempt=lease.attempt,
                quarantine_id=qid,
            )
            handler = self.handlers.get(action.compensation)
            started = self._event(
                "CompensationStarted",
                ctx,
                intent,
                partition,
                original_event_id=intent["event_id"],
                compensation=action.compensation,
                idempotency_key=request.idempotency_key,
                attempt=lease.attempt,
                quarantine_id=qid,
            )
            self._produce(started, partition, ctx)
            self.attempts += 1
            t0 = time.monotonic()
            if handler is None:
                outcome: Outcome = Failed(f"no loaded handler provides {action.compensation}")
            else:
                outcome = handler.invoke(request)
            took_us = int((time.monotonic() - t0) * 1_000_000)
            self._end(lease, ctx, partition, action, request, outcome, took_us)
        finally:
            with self._lock:
                self._leases.pop(key, None)

    def _end(
        self,
        lease: Lease,
        ctx: _Context,
        partition: int,
        action: Any,
        request: CompensationRequest | None,
        outcome: Outcome,
        took_us: int,
    ) -> None:
        retry_in = None
        external: Mapping[str, str] = {}
        if isinstance(outcome, Done):
            state, status, final, detail = "done", "ok", True, outcome.detail or "done"
            external = dict(outcome.external_ids)
        elif isinstance(outcome, NothingToUndo):
            state, status, final = "nothing", "skipped", True
            detail = outcome.detail or "nothing to undo"
        else:
            status, detail = "failed", outcome.reason
            if outcome.transient and lease.failures + 1 < self.settings.max_attempts:
                state, final = "pending", False
                retry_in = self.backoff(lease.failures + 1)
            else:
                state, final = "failed", True
                if outcome.transient:
                    detail = f"{detail} (gave up after {lease.failures + 1} transient failures)"
        intent = ctx.intents.get(action.intent_id) or {"workflow_id": ctx.quarantine["workflow_id"]}
        result = self._event(
            "CompensationResult",
            ctx,
            intent,
            partition,
            original_event_id=action.intent_id,
            compensation=action.compensation,
            idempotency_key=action.idempotency_key,
            attempt=lease.attempt,
            status=status,
            error_type=None
            if status != "failed"
            else (
                "transient" if isinstance(outcome, Failed) and outcome.transient else "permanent"
            ),
            error_message=None if status != "failed" else clip(detail, 4000),
            final=final,
            duration_us=took_us,
            external_ids=dict(external),
        )
        self._produce(result, partition, ctx, wait=True)
        if not self.store.finish(
            lease,
            state,
            detail,
            external_ids=external,
            retry_in_s=retry_in,
            failed=status == "failed",
        ):
            log.error(
                "compensator: lease lost during %s of %s (another process may have run it)",
                action.compensation,
                action.intent_id,
            )
        level = logging.INFO if status != "failed" else logging.WARNING
        log.log(
            level,
            "compensation %s intent=%s attempt=%d status=%s final=%s: %s",
            action.compensation,
            action.intent_id,
            lease.attempt,
            status,
            final,
            clip(detail, 300),
        )
        if state == "failed":
            step = self._failed_step(ctx, action, detail)
            report = call_report(ctx.quarantine, step, ctx.positions)
            with self.store.transaction() as cur:
                self.store.insert_task(
                    cur, self.task_row(ctx.quarantine, partition, "call", step, report)
                )
            self.wake()

    def _failed_step(self, ctx: _Context, action: Any, detail: str) -> Step:
        intent = ctx.intents.get(action.intent_id) or {
            "event_id": action.intent_id,
            "tool": action.tool,
            "run_id": action.run_id,
            "compensation": action.compensation,
        }
        why = (
            f"the compensating action {action.compensation} failed for good ({clip(detail, 200)})"
            ": undo it by hand"
        )
        return Step("escalate", "failed_for_good", why, intent, ctx.results.get(action.intent_id))

    def backoff(self, failures: int) -> float:
        """Exponential, capped, with full jitter in its upper half: initial * 2^(n-1)."""
        s = self.settings
        base = min(s.backoff_max_s, s.backoff_initial_s * 2 ** (failures - 1))
        return base * random.uniform(0.5, 1.0)

    # -- events ----------------------------------------------------------------------------------
    def _event(
        self,
        type_name: str,
        ctx: _Context,
        about: Mapping[str, Any],
        partition: int,
        **fields: Any,
    ) -> dict[str, Any]:
        q = ctx.quarantine
        parents = [p for p in (about.get("event_id"), q["event_id"]) if p]
        return {
            "event_id": new_event_id(),
            "type": type_name,
            "time": time.time_ns() // 1000,
            "source": self.source,
            "workflow_id": q["workflow_id"],
            "run_id": q["event_id"],
            "step_id": about.get("event_id"),
            "agent_id": AGENT,
            "tenant": about.get("tenant", q.get("tenant")),
            "boundary": about.get("boundary", q.get("boundary")),
            "parent_event_ids": parents,
            "correlation_id": q.get("correlation_id"),
            "principal": AGENT,
            "trace_id": about.get("trace_id"),
            "span_id": None,
            **fields,
        }

    def _produce(
        self, event: dict[str, Any], partition: int, ctx: _Context, *, wait: bool = False
    ) -> None:
        out = Output(
            self.topics.events,
            encode_event(event),
            workflow_key(event["workflow_id"]),
            cloudevents_headers(event),
            partition,
        )
        if wait:
            refused = deliver(self.producer, [out], timeout=30)
            if refused:
                raise PublishError(f"{event['type']} refused by the broker: {refused[0][1]}")
        else:
            self.producer.produce(
                out.topic, out.value, out.key, partition, headers=list(out.headers)
            )
            self.producer.poll(0)

    # -- tasks -------------------------------------------------------------------------------------
    def task_row(
        self, q: Mapping[str, Any], partition: int, kind: str, step: Step | None, report: Report
    ) -> dict[str, Any]:
        intent_id = None if step is None else step.intent_id
        return {
            "task_id": task_id(q["event_id"], kind, intent_id),
            "kind": kind,
            "quarantine_id": q["event_id"],
            "intent_id": intent_id,
            "workflow_key": workflow_key(q["workflow_id"]),
            "workflow_id": q["workflow_id"],
            "partition": partition,
            "reason": step.reason if step is not None else "plan",
            "title": report.title,
            "report": report.text,
            "report_json": {
                **report.data,
                "undone": report.undone,
                "not_undone": report.not_undone,
                "recommended": report.recommended,
                "related_event_ids": report.related_event_ids,
            },
            "escalation_event_id": new_event_id(),
        }

    def _finish(self, qid: str, partition: int, actions: Sequence[Any]) -> None:
        """Every action ended: file what is left to escalate (calls still running when the
        quarantine came have had their grace), close the plan, file its incident report."""
        ctx = self._context(qid, partition)
        now_us = time.time_ns() // 1000
        steps = build_plan(ctx.events, self.handlers, scope=Scope.of(ctx.quarantine), now_us=now_us)
        grace = self.settings.unknown_grace_s
        if any(young_unknown(s, now_us, grace) for s in steps):
            return  # a result may still come and join the plan: look again on the next tick
        with self.store.transaction() as cur:
            for s in steps:
                if to_file(s, now_us, grace):
                    report = call_report(ctx.quarantine, s, ctx.positions)
                    self.store.insert_task(
                        cur, self.task_row(ctx.quarantine, partition, "call", s, report)
                    )
        if not self.store.finish_plan(qid):
            return
        report = plan_report(ctx.quarantine, steps, {a.intent_id: a for a in actions})
        task = self.task_row(ctx.quarantine, partition, "plan", None, report)
        with self.store.transaction() as cur:
            if not self.store.insert_task(cur, task):
                self.store.refresh_plan_task(cur, task)
        log.warning("compensator: plan finished quarantine=%s: %s", qid, report.title)
        self.wake()

    def _publish_tasks(self, epochs: Mapping[int, int]) -> None:
        tasks = self.store.unpublished_tasks(epochs)
        if not tasks:
            return
        outs, ids = [], []
        for t in tasks:
            data = t["report_json"] or {}
            event = {
                "event_id": t["escalation_event_id"],
                "type": "Escalation",
                "time": time.time_ns() // 1000,
                "source": self.source,
                "workflow_id": t["workflow_id"],
                "run_id": t["quarantine_id"],
                "step_id": t["intent_id"],
                "agent_id": AGENT,
                "tenant": None,
                "boundary": None,
                "parent_event_ids": [p for p in (t["intent_id"], t["quarantine_id"]) if p],
                "correlation_id": None,
                "principal": AGENT,
                "trace_id": None,
                "span_id": None,
                "summary": clip(t["title"] + "\n" + t["report"], 60_000),
                "undone": list(data.get("undone") or []),
                "not_undone": list(data.get("not_undone") or []),
                "recommended_actions": list(data.get("recommended") or []),
                "related_event_ids": list(data.get("related_event_ids") or []),
                "quarantine_id": t["quarantine_id"],
                "task_id": t["task_id"],
            }
            outs.append(
                Output(
                    self.topics.events,
                    encode_event(event),
                    workflow_key(t["workflow_id"]),
                    cloudevents_headers(event),
                    t["partition"],
                )
            )
            ids.append(t["task_id"])
        refused = deliver(self.producer, outs, timeout=30)
        for _out, why in refused:
            log.error("escalation event refused by the broker: %s", why)
        self.escalations += len(ids)
        self.store.mark_published(ids)

    def _notify(self, epochs: Mapping[int, int]) -> None:
        for t in self.store.unnotified_tasks(epochs, 0):
            try:
                used = self.notifier.send(t)
            except Exception as e:  # noqa: BLE001 - recorded on the task, never fatal
                self.store.mark_notified(t["task_id"], getattr(e, "attempts", 1), str(e))
                log.error("webhook notification failed task=%s: %s", t["task_id"], e)
                continue
            self.store.mark_notified(t["task_id"], int(used or 1), None)

    # -- leases ----------------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        every = self.settings.lease_s / 3
        while not self._stop.wait(every):
            with self._lock:
                leases = list(self._leases.values())
            if not leases:
                continue
            try:
                lost = self.store.renew(leases, self.settings.lease_s)
            except Exception as e:  # noqa: BLE001
                log.error("compensator: could not renew %d lease(s): %s", len(leases), e)
                continue
            for lease in lost:
                log.error(
                    "compensator: lease lost for %s of plan %s",
                    lease.intent_id,
                    lease.quarantine_id,
                )


def process_owner() -> str:
    """Who holds leases: host, pid and a random part (pids repeat across restarts)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# -- the daemon --------------------------------------------------------------------------------


class Compensator:
    """The processor on a Kafka runner, and its executor: `start()` / `stop()`, or `run()`."""

    def __init__(
        self,
        kafka: Any,
        dsn: str,
        handlers: CompensationRegistry,
        settings: CompensatorSettings | None = None,
        *,
        notifier: Any = None,
        decode: Callable[[bytes], dict[str, Any]] | None = None,
        runner_settings: Any = None,
    ) -> None:
        from confluent_kafka import Producer

        from wakeline.processors.stream import KafkaRunner, RunnerSettings
        from wakeline.schemas import decode_event

        self.settings = settings or CompensatorSettings()
        s = self.settings
        self.owner = process_owner()
        decode = decode or decode_event
        self.producer = Producer(
            kafka.client_config(**{"enable.idempotence": True, "acks": "all", "linger.ms": 1})
        )
        topics = kafka.topics
        self.store = CompensatorStore(dsn, topics.events)
        self.executor = Executor(
            CompensatorStore(dsn, topics.events),
            handlers,
            topics=topics,
            producer=self.producer,
            decode=decode,
            settings=s,
            owner=self.owner,
            notifier=notifier,
        )
        self.processor = CompensatorProcessor(
            self.store,
            handlers,
            topics=topics,
            executor=self.executor,
            decode=decode,
            owner=self.owner,
            max_record_bytes=s.max_record_bytes,
            unknown_grace_s=s.unknown_grace_s,
        )
        consumer_config: dict[str, Any] = {}
        if s.instance_id:
            consumer_config["group.instance.id"] = s.instance_id
        self.runner = KafkaRunner(
            self.processor,
            topics.events,
            kafka.client_config,
            runner_settings
            or RunnerSettings(
                group_id=s.group_for(topics.prefix),
                batch_size=1000,
                poll_timeout_s=0.01,
                consumer_config=consumer_config,
            ),
        )

    def start(self) -> Compensator:
        self.executor.start()
        self.runner.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.runner.stop(timeout)
        self.executor.stop(timeout)
        self.producer.flush(10)
        self.executor.store.close()

    def run(self) -> None:
        """Block until `stop()` (from a signal handler) or a failure of the runner."""
        self.executor.start()
        try:
            self.runner.run()
        finally:
            self.executor.stop()
            self.producer.flush(10)
            self.executor.store.close()
