"""One workflow run's context and one tool call's life: envelope, gates, intent, result.

`WorkflowContext` holds who acts (workflow, run, agent, principal, tenant, boundary, causal
parents, W3C trace context) and runs calls; `ToolCall` is one call between its intent and its
result. Both are created through an `Emitter` (see `wakeline.producers.emitter`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from wakeline.infra.metrics import SDK_CALLS, SDK_REFUSALS
from wakeline.producers.canonical import Canonical, canonical_result, canonicalise
from wakeline.producers.errors import MissingWorkflow, SdkError
from wakeline.producers.framing import Headers, checked_framer, intent_tail
from wakeline.producers.gates import (
    ALLOW_ALL,
    AlertSpec,
    GateCall,
    PolicyDecision,
    Verdict,
    timed_out,
)
from wakeline.producers.redaction import NOTHING, Scrubber, error_message, scrub_text
from wakeline.producers.registry import Durability, ToolSpec
from wakeline.schemas import cloudevents_headers, decode_event, encode_event, new_event_id

if TYPE_CHECKING:
    from wakeline.producers.emitter import Emitter

log = logging.getLogger(__name__)

T = TypeVar("T")
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_SPAN_ID = re.compile(r"^[0-9a-f]{16}$")
_ABORTS = (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError)
MAX_ERROR_MESSAGE = 2000


def _require(name: str, value: Any, error: type[SdkError] = SdkError) -> str:
    if not isinstance(value, str) or not value:
        raise error(f"{name} is required (a non-empty string), got {value!r}")
    return value


class WorkflowContext:
    """Who acts, in which workflow and run: the envelope of every event of its calls."""

    def __init__(
        self,
        emitter: Emitter,
        workflow_id: str | None,
        *,
        agent_id: str,
        principal: str,
        run_id: str | None = None,
        tenant: str | None = None,
        boundary: str | None = None,
        step_id: str | None = None,
        correlation_id: str | None = None,
        parent_event_ids: Iterable[str] = (),
        trace_id: str | None = None,
        span_id: str | None = None,
    ) -> None:
        self.emitter = emitter
        self.workflow_id = _require("workflow id", workflow_id, MissingWorkflow)
        self.agent_id = _require("agent_id", agent_id)
        self.principal = _require("principal", principal)
        self.run_id = run_id or str(uuid.uuid4())
        if trace_id is not None and (not _TRACE_ID.match(trace_id) or set(trace_id) == {"0"}):
            raise SdkError(f"trace_id {trace_id!r} is not a W3C trace id (32 lowercase hex)")
        if span_id is not None and (not _SPAN_ID.match(span_id) or set(span_id) == {"0"}):
            raise SdkError(f"span_id {span_id!r} is not a W3C span id (16 lowercase hex)")
        self.tenant = tenant
        self.boundary = boundary
        self.step_id = step_id
        self.correlation_id = correlation_id
        self.parent_event_ids = list(parent_event_ids)
        self.trace_id = trace_id
        self.span_id = span_id
        self.key = self.workflow_id.encode()
        #: the envelope fields every event of this context shares, in schema order
        self._template: dict[str, Any] = {
            "event_id": "",
            "type": "",
            "time": 0,
            "source": emitter.source,
            "workflow_id": self.workflow_id,
            "run_id": self.run_id,
            "step_id": step_id,
            "agent_id": self.agent_id,
            "tenant": tenant,
            "boundary": boundary,
            "parent_event_ids": [],
            "correlation_id": correlation_id,
            "principal": self.principal,
            "trace_id": trace_id,
            "span_id": span_id,
        }
        self.event_count = 0
        self.last_event_id: str | None = None
        self.sealed = False
        self._lock = threading.Lock()
        #: tool events are framed from pre-encoded pieces (None: by the codec, field by field)
        self._own_parents = list(self.parent_event_ids)
        self._framer = checked_framer({**self._template, "parent_event_ids": self._own_parents})

    # -- events ---------------------------------------------------------------------------
    def envelope(
        self, type_name: str, *, step_id: str | None = None, parents: Iterable[str] = ()
    ) -> dict[str, Any]:
        return self._event(type_name, new_event_id(), time.time_ns() // 1000, step_id, parents)

    def _event(
        self,
        type_name: str,
        event_id: str,
        time_us: int,
        step_id: str | None,
        parents: Iterable[str],
    ) -> dict[str, Any]:
        event = self._template.copy()
        event["event_id"] = event_id
        event["type"] = type_name
        event["time"] = time_us
        if step_id is not None:
            event["step_id"] = step_id
        event["parent_event_ids"] = [*self.parent_event_ids, *parents]
        return event

    def _envelope_bytes(self, step_id: str | None, parents: list[str]) -> bytes | None:
        """The framer's envelope for a call; None when the run's default applies."""
        own = self.parent_event_ids
        if step_id is None and not parents and own == self._own_parents:
            return None
        if step_id is None:
            step_id = self._template["step_id"]
        return self._framer.envelope(step_id, [*own, *parents])  # type: ignore[union-attr]

    def _frame(self, event: dict[str, Any]) -> tuple[bytes, Headers]:
        value = encode_event(event)  # encode first: a bad event writes nothing
        return value, cloudevents_headers(event)

    def _send(self, event_id: str, value: bytes, headers: Headers, wait: bool) -> str:
        self._count(event_id)
        self.emitter.transport.send(self.emitter.events_topic, self.key, value, headers, wait=wait)
        return event_id

    async def _asend(self, event_id: str, value: bytes, headers: Headers, wait: bool) -> str:
        self._count(event_id)
        await self.emitter.transport.send_async(
            self.emitter.events_topic, self.key, value, headers, wait=wait
        )
        return event_id

    def _count(self, event_id: str) -> None:
        with self._lock:
            if self.sealed:
                raise SdkError(f"workflow {self.workflow_id} run {self.run_id} is sealed")
            self.event_count += 1
            self.last_event_id = event_id

    def emit(self, event: dict[str, Any], *, wait: bool = False) -> str:
        """Encode and send one event of this run on the events topic; returns its id."""
        value, headers = self._frame(event)
        return self._send(event["event_id"], value, headers, wait)

    async def aemit(self, event: dict[str, Any], *, wait: bool = False) -> str:
        value, headers = self._frame(event)
        return await self._asend(event["event_id"], value, headers, wait)

    def _abort_left(self, entry: Mapping[str, str]) -> str:
        """The `aborted` result of a call a dead process left waiting in this run."""
        event = self.envelope("ToolResult")
        event.update(
            intent_id=entry["intent_id"],
            status="aborted",
            duration_us=0,
            error_type="Aborted",
            error_message=(
                f"{entry.get('tool', 'the tool')} was waiting (for an approval) when its "
                "process ended; it never ran. Aborted when the run was opened again."
            ),
        )
        log.warning(
            "workflow %s run %s: intent %s was left waiting by a process that ended; aborted",
            self.workflow_id,
            self.run_id,
            entry["intent_id"],
        )
        return self.emit(event)

    def _alert(self, event: dict[str, Any]) -> None:
        self.emit(event)
        topic = self.emitter.alerts_topic
        if topic is not None:
            value, headers = self.emitter._frame(event)
            self.emitter.transport.send(topic, self.key, value, headers, wait=False)

    # -- the call path --------------------------------------------------------------------
    def begin(
        self,
        tool: str | ToolSpec,
        args: Mapping[str, Any] | None = None,
        *,
        parents: Iterable[str] = (),
        step_id: str | None = None,
        durability: Durability | None = None,
    ) -> ToolCall:
        """Gates, then the intent (acknowledged first when strict). Refusals raise."""
        call = self._prepare(tool, args, parents, step_id, durability)
        self._send(call.intent_id, *call.frame, call.strict)
        if call.alert is not None:
            call._alert(call.alert)
        call._started()
        while call.verdict is not None and call.verdict.outcome == "wait":
            v = call.verdict
            call.verdict = self._after_wait(call, v.waiter.wait(v.timeout_s))  # type: ignore[union-attr]
        if call.verdict is not None:
            call._refuse()
        return call

    async def abegin(
        self,
        tool: str | ToolSpec,
        args: Mapping[str, Any] | None = None,
        *,
        parents: Iterable[str] = (),
        step_id: str | None = None,
        durability: Durability | None = None,
    ) -> ToolCall:
        call = self._prepare(tool, args, parents, step_id, durability)
        await self._asend(call.intent_id, *call.frame, call.strict)
        if call.alert is not None:
            call._alert(call.alert)
        call._started()
        while call.verdict is not None and call.verdict.outcome == "wait":
            v = call.verdict
            got = await v.waiter.wait_async(v.timeout_s)  # type: ignore[union-attr]
            call.verdict = self._after_wait(call, got)
        if call.verdict is not None:
            call._refuse()
        return call

    def call(
        self,
        tool: str | ToolSpec,
        fn: Callable[..., T],
        args: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> T:
        """Run `fn(**args)` as an audited tool call; returns what it returns."""
        call = self.begin(tool, args, **options)
        started = time.perf_counter_ns()
        try:
            result = fn(**call.args)
        except BaseException as e:
            call.fail(e, (time.perf_counter_ns() - started) // 1000)
            raise
        call.ok(result, (time.perf_counter_ns() - started) // 1000)
        return result

    async def acall(
        self,
        tool: str | ToolSpec,
        fn: Callable[..., Awaitable[T] | T],
        args: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> T:
        """Async twin of `call`: `fn` may be a coroutine function or a plain one."""
        call = await self.abegin(tool, args, **options)
        started = time.perf_counter_ns()
        try:
            result = fn(**call.args)
            if inspect.isawaitable(result):
                result = await result
        except BaseException as e:
            call.fail(e, (time.perf_counter_ns() - started) // 1000)
            raise
        call.ok(result, (time.perf_counter_ns() - started) // 1000)
        return result  # type: ignore[return-value]

    def checkpoint(
        self,
        name: str,
        state: Mapping[str, Any],
        *,
        redact: Iterable[str] = (),
        digest_only: Iterable[str] = (),
        step_id: str | None = None,
        parents: Iterable[str] = (),
        wait: bool = True,
    ) -> str:
        """Save the run's `state` at the named point: a `WorkflowSnapshot` of its canonical
        JSON (redaction as for tool arguments: `redact` and `digest_only` are dotted paths)
        and its BLAKE3 digest; returns the snapshot's event id. `wakeline workflow rollback`
        undoes the calls after it, `Emitter.resume` goes on from it. Acknowledged by the
        broker before it returns (`wait`). Raises before anything is written for a bad name,
        a state that does not serialise, or one over the emitter's `max_payload_bytes`."""
        from wakeline.producers.snapshots import snapshot_event

        if self.sealed:
            raise SdkError(f"workflow {self.workflow_id} run {self.run_id} is sealed")
        event = snapshot_event(
            self.envelope("WorkflowSnapshot", step_id=step_id, parents=parents),
            name,
            state,
            redact=redact,
            digest_only=digest_only,
            max_bytes=self.emitter.max_payload_bytes,
        )
        return self.emit(event, wait=wait)

    def complete_workflow(self, outcome: str | None = None, *, wait: bool = True) -> str:
        """Seal this run: `WorkflowCompleted` counting the run's events before it.

        Call it after every call of the run has returned: the count and `last_event_id`
        are of the events this context emitted, in the order it sent them.
        """
        event = self.envelope("WorkflowCompleted")
        with self._lock:
            if self.sealed:
                raise SdkError(f"workflow {self.workflow_id} run {self.run_id} is sealed")
            event["event_count"] = self.event_count
            event["last_event_id"] = self.last_event_id
            event["outcome"] = outcome
            value, headers = self.emitter._frame(event)
            self.sealed = True
        self.emitter.transport.send(self.emitter.events_topic, self.key, value, headers, wait=wait)
        return event["event_id"]

    def _prepare(
        self,
        tool: str | ToolSpec,
        args: Mapping[str, Any] | None,
        parents: Iterable[str],
        step_id: str | None,
        durability: Durability | None,
    ) -> ToolCall:
        if self.sealed:
            raise SdkError(f"workflow {self.workflow_id} run {self.run_id} is sealed")
        em = self.emitter
        spec = tool if isinstance(tool, ToolSpec) else em.registry.get(tool)
        args = {} if args is None else args
        canonical = canonicalise(
            args, redact=spec.redact, digest_only=spec.digest_only, max_bytes=em.max_payload_bytes
        )
        reads = spec.resources_read(args) if spec.reads else []
        writes = spec.resources_written(args) if spec.writes else []
        version = spec.expected_version(args) if spec.version_arg is not None else None
        scrub = NOTHING
        if spec.redacted_fields:
            scrub = Scrubber.for_call(spec, args)
            _check_resource_keys(spec, scrub, reads, writes, [version] if version else [])
        gate_call = None
        decision, verdict, gate_index, alert = ALLOW_ALL, None, -1, None
        if em.gates:
            gate_call = GateCall(
                spec,
                args,
                canonical.text,
                canonical.digest,
                self.workflow_id,
                self.run_id,
                self.agent_id,
                self.principal,
                self.tenant,
                self.boundary,
                scrub,
            )
            for gate_index, gate in enumerate(em.gates):  # noqa: B007 - kept for a wait
                v = gate.decide(gate_call)
                if v is None:
                    continue
                decision = v.decision
                if v.outcome != "allow":
                    verdict = v
                    break
                if v.alert is not None:  # allowed, with an alert (the loop guard's reads)
                    alert = v.alert
        mode = durability or spec.effective_durability
        reason = _reason(decision)
        event_id = new_event_id()
        now = time.time_ns() // 1000
        parents = list(parents)
        frame = None
        if self._framer is not None:
            try:
                tail, after = intent_tail(spec, decision, reason, mode)
                frame = self._framer.intent(
                    event_id,
                    now,
                    self._envelope_bytes(step_id, parents),
                    spec.name,
                    canonical,
                    reads,
                    writes,
                    tail,
                    version,
                    after,
                )
            except Exception:  # noqa: BLE001 - the codec below frames it, or says why not
                frame = None
        if frame is None:
            intent = self._event("ToolIntent", event_id, now, step_id, parents)
            intent.update(
                tool=spec.name,
                args=canonical.text,
                args_digest=canonical.digest,
                resources_read=reads,
                resources_written=writes,
                reversibility=spec.reversibility,
                impact=spec.impact,
                compensation=spec.compensation,
                policy_decision=decision.outcome,
                policy_reason=reason,
                durability=mode,
                redacted_fields=spec.redacted_fields,
                undo_window_us=spec.undo_window_us,
                volatile_fields=spec.volatile_list,
                expected_version=version,
                approval_id=decision.approval_id,
                policy_rule=decision.rule or None,
                policy_version=decision.version or None,
                policy_shadow=list(decision.shadow),
                grant_id=decision.grant_id,
            )
            frame = self._frame(intent)
        # a call that will wait has its intent acknowledged first: the ApprovalRequested and
        # the journal entry (producers/spool.py) name it, so it must not be lost meanwhile
        strict = mode == "strict" or (verdict is not None and verdict.outcome == "wait")
        return ToolCall(
            self,
            spec,
            args,
            canonical,
            event_id,
            frame,
            strict,
            step_id,
            verdict,
            scrub,
            gate_call,
            gate_index,
            alert,
        )

    def _after_wait(self, call: ToolCall, got: Verdict | None) -> Verdict | None:
        """What a call does once the gate it waited on answered (None: it timed out).

        An allow runs the gates after the waiting one, and again those before it that ask
        for it (`recheck_after_wait`); the first refuse or wait among them decides."""
        gates = self.emitter.gates
        waited = call.verdict
        assert waited is not None
        name = getattr(gates[call.gate_index], "name", "gate")
        if got is None:
            return timed_out(name, waited, call.spec.name)
        if got.outcome == "refuse":
            return got
        assert call.gate_call is not None
        for i, gate in enumerate(gates):
            if i == call.gate_index:
                continue
            if i < call.gate_index and not getattr(gate, "recheck_after_wait", False):
                continue
            v = gate.decide(call.gate_call)
            if v is not None and v.outcome != "allow":
                call.gate_index = i
                return v
        return None


class ToolCall:
    """One call between its intent and its result. `ok`/`fail`/`abort` emit the result."""

    __slots__ = (
        "ctx",
        "spec",
        "args",
        "canonical",
        "intent_id",
        "frame",
        "strict",
        "step_id",
        "verdict",
        "scrub",
        "gate_call",
        "gate_index",
        "alert",
        "done",
        "journaled",
    )

    def __init__(
        self,
        ctx: WorkflowContext,
        spec: ToolSpec,
        args: Mapping[str, Any],
        canonical: Canonical,
        intent_id: str,
        frame: tuple[bytes, Headers],
        strict: bool,
        step_id: str | None,
        verdict: Verdict | None,
        scrub: Scrubber = NOTHING,
        gate_call: GateCall | None = None,
        gate_index: int = -1,
        alert: AlertSpec | None = None,
    ) -> None:
        self.ctx = ctx
        self.spec = spec
        self.args = args
        self.canonical = canonical
        self.intent_id = intent_id
        #: the intent as sent: Avro frame and CloudEvents headers
        self.frame = frame
        self.strict = strict
        self.step_id = step_id
        #: None when the gates allowed the call; else the refusal or wait that stopped them
        self.verdict = verdict
        #: what the gates saw, and which of them gave `verdict`
        self.gate_call = gate_call
        self.gate_index = gate_index
        #: removes the call's redacted and digest-only values from what it records
        self.scrub = scrub
        #: an Alert an allowing gate asked for (sent after the intent)
        self.alert = alert
        self.done = False
        #: in the emitter's journal of waiting calls until its result
        self.journaled = False

    @property
    def intent(self) -> dict[str, Any]:
        """The intent event, as its frame decodes."""
        return decode_event(self.frame[0])

    def _result(self, status: str, duration_us: int = 0, **fields: Any) -> str:
        if self.done:
            raise SdkError(f"tool call {self.intent_id} already has a result")
        self.done = True
        ctx = self.ctx
        event_id = new_event_id()
        now = time.time_ns() // 1000
        frame = None
        if ctx._framer is not None:
            try:
                frame = ctx._framer.result(
                    event_id,
                    now,
                    ctx._envelope_bytes(self.step_id, []),
                    self.intent_id,
                    status,
                    duration_us,
                    **fields,
                )
            except Exception:  # noqa: BLE001 - the codec below frames it, or says why not
                frame = None
        if frame is None:
            event = ctx._event("ToolResult", event_id, now, self.step_id, ())
            event.update(intent_id=self.intent_id, status=status, duration_us=duration_us, **fields)
            frame = ctx._frame(event)
        sent = ctx._send(event_id, *frame, False)
        if self.journaled:
            ctx.emitter.waiting.clear(self.intent_id)
        gate_call = self.gate_call
        if gate_call is not None and gate_call.loop_state is not None:
            gate_call.loop_state.result(status)  # the loop guard learns of failed calls
        metrics = ctx.emitter.metrics  # None unless enabled: one attribute check per call
        if metrics is not None:
            metrics.inc(SDK_CALLS, self.spec.name, status)
        return sent

    def ok(self, result: Any = None, duration_us: int = 0) -> str:
        spec = self.spec
        canonical = canonical_result(result, max_bytes=self.ctx.emitter.max_payload_bytes)
        summary = ids = None
        scrub = self.scrub
        try:
            if spec.summarise is not None:
                summary = scrub_text(str(spec.summarise(result)), scrub, MAX_ERROR_MESSAGE)
            if spec.external_ids is not None:
                ids = {
                    scrub(str(k)): scrub(str(v)) for k, v in dict(spec.external_ids(result)).items()
                }
        except Exception as e:  # noqa: BLE001 - the tool ran; never lose its result over a summary
            # no traceback: its text is the exception's, which may quote the arguments
            log.error(
                "tool %s: summarise/external_ids failed (intent %s): %s",
                spec.name,
                self.intent_id,
                error_message(e, _NO_SCRUBBER, scrub, MAX_ERROR_MESSAGE),
            )
        return self._result(
            "ok",
            duration_us,
            result_digest=None if canonical is None else canonical.digest,
            result_summary=summary,
            external_ids=ids or {},
        )

    def fail(self, error: BaseException, duration_us: int = 0) -> str:
        status = "aborted" if isinstance(error, _ABORTS) else "error"
        return self._result(
            status,
            duration_us,
            error_type=self.scrub(_type_name(error)),
            error_message=error_message(error, self.spec, self.scrub, MAX_ERROR_MESSAGE),
        )

    def abort(self, reason: str = "aborted") -> str:
        return self._result(
            "aborted",
            error_type="Aborted",
            error_message=scrub_text(reason, self.scrub, MAX_ERROR_MESSAGE),
        )

    def _started(self) -> None:
        """The intent is sent: a waiting call is journaled (a process dying while it waits
        leaves it for the run's next opening to abort), then its waiter told if it wants
        to know (`Waiter.started`)."""
        verdict = self.verdict
        if verdict is not None and verdict.outcome == "wait":
            ctx = self.ctx
            ctx.emitter.waiting.add(self.intent_id, ctx.workflow_id, ctx.run_id, self.spec.name)
            self.journaled = True
            started = getattr(verdict.waiter, "started", None)
            if started is not None:
                started(self)

    def _refuse(self) -> None:
        verdict = self.verdict
        assert verdict is not None and verdict.error is not None
        refusal = verdict.error
        refusal.intent_id = self.intent_id
        metrics = self.ctx.emitter.metrics
        if metrics is not None:
            gates = self.ctx.emitter.gates
            gate = gates[self.gate_index] if 0 <= self.gate_index < len(gates) else None
            metrics.inc(SDK_REFUSALS, getattr(gate, "name", "gate"))
        self._result(
            "denied",
            error_type=type(refusal).__name__,
            error_message=scrub_text(str(refusal), self.scrub, MAX_ERROR_MESSAGE),
        )
        if verdict.alert is not None:
            self._alert(verdict.alert)
        raise refusal

    def _alert(self, spec: AlertSpec) -> None:
        """An Alert about this call (its intent the evidence), on the events and alerts topics."""
        alert = self.ctx.envelope("Alert", step_id=self.step_id)
        alert.update(
            kind=spec.kind,
            severity=spec.severity,
            detail=scrub_text(spec.detail, self.scrub, MAX_ERROR_MESSAGE),
            detector=spec.detector,
            related_event_ids=[self.intent_id],
            attributes={k: self.scrub(v) for k, v in spec.attributes.items()},
        )
        self.ctx._alert(alert)


#: `error_message` for the SDK's own texts: no spec scrubber, only the call's values
_NO_SCRUBBER = ToolSpec("wakeline.sdk")


def _check_resource_keys(spec: ToolSpec, scrub: Scrubber, *keys: list[str]) -> None:
    """Resource keys are written in clear: one that holds a secret value refuses the call
    (templates are checked at registration; this catches key functions)."""
    for key in (k for group in keys for k in group):
        if scrub.contains(key):
            raise SdkError(
                f"tool {spec.name}: a resource key contains the value of a redacted or "
                "digest-only argument; resource keys are written in clear, so the call is "
                "refused before anything is written"
            )


def _reason(decision: PolicyDecision) -> str:
    if decision.reason:
        return f"{decision.policy}: {decision.reason}"
    return decision.policy


def _type_name(error: BaseException) -> str:
    cls = type(error)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
