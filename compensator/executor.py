"""The compensator's executor: runs the actions of the plans on this process's partitions.

Each running plan is run by one thread of a pool, its actions newest first, one at a time,
each attempt under a lease (compensator/store.py): CompensationStarted is recorded on the
workflow's partition, the handler runs with the action's idempotency key, CompensationResult
is recorded and acknowledged by the broker, then the attempt ends in PostgreSQL. Transient
failures are retried after an exponential backoff with jitter, up to `max_attempts`; a
permanent failure, or the last transient one, files a human task. When every action has
ended the plan gets its incident report. Tasks' Escalation events are published from their
rows, and the webhook is notified.
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
from dataclasses import dataclass, replace
from typing import Any

from wakeline.compensator import report as reports
from wakeline.compensator import scopes
from wakeline.compensator.plan import Step, build_plan, supersedes
from wakeline.compensator.processor import (
    AGENT,
    decode_frames,
    task_id,
    to_file,
    tool_events,
    young_unknown,
)
from wakeline.compensator.registry import (
    CompensationRegistry,
    CompensationRequest,
    Done,
    Failed,
    NothingToUndo,
    Outcome,
)
from wakeline.compensator.report import ActionOutcome, Position, Report
from wakeline.compensator.settings import CompensatorSettings
from wakeline.compensator.store import (
    TERMINAL,
    CompensatorStore,
    Lease,
    workflow_key,
)
from wakeline.infra.settings import Topics
from wakeline.processors.audit import clip
from wakeline.processors.stream import Output, PublishError, deliver
from wakeline.schemas import cloudevents_headers, encode_event, new_event_id

# -- reports (plain language; compensator/report.py renders them in full) ---------------------


log = logging.getLogger(__name__)


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
        tools: Any = None,
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
        #: the tool registry the handler modules declare (advice in incident reports)
        self.tools = tools
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
        self.fanouts_sent = 0
        self._swept = 0.0
        #: plan -> why its next action waits (logged when it changes)
        self._waiting: dict[str, str] = {}

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
        if epochs and time.monotonic() - self._swept >= 1.0:
            self._swept = time.monotonic()
            with self.store.transaction() as cur:
                scopes.sweep(cur, self.topics.events, list(epochs), self.decode)
        self._publish_fanouts(epochs)
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
        # The actions are read once, and again only when what this loop knows may be stale
        # (an attempt that did not end its action, nothing left to run): re-reading them
        # before every action made a 100-action plan read 5,050 rows in 100 round trips.
        actions = self.store.actions(qid)
        fresh = True
        while not self._stop.is_set():
            with self._lock:
                epoch = self._epochs.get(partition)
            if epoch is None:
                return  # revoked: the next owner goes on
            todo = [a for a in actions if a.state not in TERMINAL]
            if not todo and not fresh:  # late calls may have joined the plan meanwhile
                actions, fresh = self.store.actions(qid), True
                continue
            if not todo:
                self._finish(qid, partition, actions)
                return
            action = todo[0]
            if action.waiting or (action.state == "running" and action.lease_live):
                return  # a backoff, or another process's attempt: look again later
            if action.state == "pending" and self._waits(qid, action.intent_id):
                return  # children first, across workflows: look again on the next tick
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
            ended = self._attempt(qid, partition, action, lease)
            if ended in TERMINAL:
                actions = [replace(a, state=ended) if a is action else a for a in actions]
                fresh = False
            else:  # to be retried, or the lease was lost: what the database says
                actions, fresh = self.store.actions(qid), True

    def _context(self, qid: str, partition: int) -> _Context:
        with self._lock:
            ctx = self._contexts.get(qid)
        if ctx is not None:
            return ctx
        plan = self.store.plan_with_frame(qid)
        if plan is None or plan.value is None:
            raise LookupError(f"plan {qid} has no stored quarantine")
        q = self.decode(plan.value)
        events, positions = decode_frames(
            self.store.events_of(workflow_key(q["workflow_id"])), self.decode
        )
        intents = {e["event_id"]: e for e in events if e["type"] == "ToolIntent"}
        results: dict[str, dict[str, Any]] = {}
        for e in events:
            if e["type"] == "ToolResult" and supersedes(e, results.get(e["intent_id"])):
                results[e["intent_id"]] = e
        ctx = _Context(q, events, positions, intents, results)
        with self._lock:
            self._contexts[qid] = ctx
        return ctx

    # -- one attempt ---------------------------------------------------------------------------
    def _attempt(self, qid: str, partition: int, action: Any, lease: Lease) -> str | None:
        """One attempt; the state it left the action in (None: the lease was lost)."""
        key = (qid, action.intent_id)
        with self._lock:
            self._leases[key] = lease
        try:
            ctx = self._context(qid, partition)
            intent = ctx.intents.get(action.intent_id)
            if intent is None:
                missing = Failed("the original intent is not in the compensator's history")
                return self._end(lease, ctx, partition, action, None, missing, 0)
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
            return self._end(lease, ctx, partition, action, request, outcome, took_us)
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
    ) -> str | None:
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
        finished = self.store.finish(
            lease,
            state,
            detail,
            external_ids=external,
            retry_in_s=retry_in,
            failed=status == "failed",
        )
        if not finished:
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
            outcome_now = ActionOutcome(
                "failed", detail, lease.attempt, dict(external), action.compensation
            )
            report = self.call_report(ctx.quarantine, step, ctx.positions, outcome_now)
            with self.store.transaction() as cur:
                self.store.insert_task(
                    cur, self.task_row(ctx.quarantine, partition, "call", step, report)
                )
            self.wake()
        return state if finished else None

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

    def call_report(
        self,
        q: Mapping[str, Any],
        step: Step,
        positions: Mapping[str, tuple[int, int]],
        outcome: ActionOutcome | None = None,
    ) -> Report:
        """The incident report of one escalated call."""
        return reports.call_report(
            workflow_id=q["workflow_id"], quarantine=q, step=step,
            positions=_positions(positions), tools=self.tools, outcome=outcome,
        )  # fmt: skip

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
        with self.store.transaction() as cur:
            done = self.store.compensated_intents(cur, workflow_key(ctx.quarantine["workflow_id"]))
        done -= {a.intent_id for a in actions}  # this plan's own: the report tells how
        with self.store.statement() as cur:
            scope = scopes.plan_scope(cur, ctx.quarantine)
        steps = build_plan(
            tool_events(ctx.events),
            self.handlers,
            scope=scope,
            now_us=now_us,
            compensated=done,
        )
        grace = self.settings.unknown_grace_s
        if any(young_unknown(s, now_us, grace) for s in steps):
            return  # a result may still come and join the plan: look again on the next tick
        with self.store.transaction() as cur:
            for s in steps:
                if to_file(s, now_us, grace):
                    report = self.call_report(ctx.quarantine, s, ctx.positions)
                    self.store.insert_task(
                        cur, self.task_row(ctx.quarantine, partition, "call", s, report)
                    )
        if not self.store.finish_plan(qid):
            return
        with self._lock:
            self._contexts.pop(qid, None)  # a late call reopens the plan and loads it again
        actions = self.store.actions(qid)  # as they ended
        report = reports.plan_report(
            workflow_id=ctx.quarantine["workflow_id"],
            quarantine=ctx.quarantine,
            events=ctx.events,
            steps=steps,
            outcomes={a.intent_id: ActionOutcome.of(a) for a in actions},
            positions=_positions(ctx.positions),
            tools=self.tools,
        )
        task = self.task_row(ctx.quarantine, partition, "plan", None, report)
        with self.store.transaction() as cur:
            if not self.store.insert_task(cur, task):
                self.store.refresh_plan_task(cur, task)
        log.warning("compensator: plan finished quarantine=%s: %s", qid, report.title)
        self.wake()

    def _waits(self, qid: str, intent_id: str) -> bool:
        """Whether an action must wait for the compensations of calls depending on it (in
        any workflow: compensator/scopes.py), logged once per plan and reason."""
        young_after_us = int((time.time() - self.settings.unknown_grace_s) * 1_000_000)
        with self.store.statement() as cur:
            why = scopes.waits_for(cur, self.topics.events, qid, intent_id, young_after_us)
        if why is None:
            return False
        with self._lock:
            said = self._waiting.get(qid)
            self._waiting[qid] = why
        if said != why:
            log.info("compensator: plan %s waits before undoing %s: %s", qid, intent_id, why)
        return True

    def _publish_fanouts(self, epochs: Mapping[int, int]) -> None:
        """Produce the fan-out outbox of the origins on our partitions (each child on its
        workflow's partition), then mark the rows the broker acknowledged as sent."""
        if not epochs:
            return
        while not self._stop.is_set():
            with self.store.statement() as cur:
                rows = scopes.unsent(cur, list(epochs))
            if not rows:
                return
            outs, ids = [], []
            for event_id, key, value in rows:
                event = self.decode(value)
                outs.append(Output(self.topics.events, value, key, cloudevents_headers(event)))
                ids.append(event_id)
            refused = deliver(self.producer, outs, timeout=30)
            bad = set()
            for out, why in refused:
                log.error("fan-out refused by the broker key=%r: %s", out.key, why)
                bad.add(out.key)
            sent = [i for i, o in zip(ids, outs, strict=True) if o.key not in bad]
            with self.store.transaction() as cur:
                scopes.mark_sent(cur, sent)
            if refused:
                return  # the next tick tries again
            self.fanouts_sent += len(sent)

    def _publish_tasks(self, epochs: Mapping[int, int]) -> None:
        tasks = self.store.unpublished_tasks(epochs)
        if not tasks:
            return
        outs, ids = [], []
        for t in tasks:
            data = t.report_json or {}
            event = {
                "event_id": t.escalation_event_id,
                "type": "Escalation",
                "time": time.time_ns() // 1000,
                "source": self.source,
                "workflow_id": t.workflow_id,
                "run_id": t.quarantine_id,
                "step_id": t.intent_id,
                "agent_id": AGENT,
                "tenant": None,
                "boundary": None,
                "parent_event_ids": [p for p in (t.intent_id, t.quarantine_id) if p],
                "correlation_id": None,
                "principal": AGENT,
                "trace_id": None,
                "span_id": None,
                "summary": clip(t.title + "\n" + t.report, 60_000),
                "undone": list(data.get("undone") or []),
                "not_undone": list(data.get("not_undone") or []),
                "recommended_actions": list(data.get("recommended") or []),
                "related_event_ids": list(data.get("related_event_ids") or []),
                "quarantine_id": t.quarantine_id,
                "task_id": t.task_id,
            }
            outs.append(
                Output(
                    self.topics.events,
                    encode_event(event),
                    t.workflow_key,
                    cloudevents_headers(event),
                    t.partition,
                )
            )
            ids.append(t.task_id)
        refused = deliver(self.producer, outs, timeout=30)
        for _out, why in refused:
            log.error("escalation event refused by the broker: %s", why)
        self.escalations += len(ids)
        self.store.mark_published(ids)

    def _notify(self, epochs: Mapping[int, int]) -> None:
        for t in self.store.unnotified_tasks(epochs):
            try:
                used = self.notifier.send(t)
            except Exception as e:  # noqa: BLE001 - recorded on the task, never fatal
                self.store.mark_notified(t.task_id, getattr(e, "attempts", 1), str(e))
                log.error("webhook notification failed task=%s: %s", t.task_id, e)
                continue
            self.store.mark_notified(t.task_id, int(used or 1), None)

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
            with self._lock:  # an attempt that ended meanwhile lost nothing
                lost = [x for x in lost if self._leases.get((x.quarantine_id, x.intent_id)) is x]
            for lease in lost:
                log.error(
                    "compensator: lease lost for %s of plan %s",
                    lease.intent_id,
                    lease.quarantine_id,
                )


def _positions(raw: Mapping[str, tuple[int, int]]) -> dict[str, Position]:
    return {event_id: Position(p, o) for event_id, (p, o) in raw.items()}


def process_owner() -> str:
    """Who holds leases: host, pid and a random part (pids repeat across restarts)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
