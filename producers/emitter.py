"""The call path: gates -> ToolIntent -> the tool -> ToolResult.

    emitter = Emitter.from_env(registry=registry)
    ctx = emitter.workflow("wf-42", agent_id="billing-bot", principal="alice@example.com")
    charge = ctx.call("stripe.charge", stripe_charge, {"customer": 123, "amount": 1299})
    ctx.complete_workflow("succeeded")
    emitter.close()

Input errors (no workflow id, arguments that do not serialise, too large) are raised before
anything is written. Gate refusals are recorded first (an intent carrying the decision, then a
`denied` result) and then raised. A tool's own exception is recorded as an `error` result and
re-raised unchanged; a cancellation or interrupt as `aborted`.

Durability (per tool, default from its reversibility): *strict* waits for the broker's
acknowledgement of the intent (or its fsync into the spool) before the tool runs; *relaxed*
only enqueues it. Results are enqueued in both modes: the tool has already run, and since one
producer keeps per-partition order, the next strict intent of the workflow is acknowledged only
after the results before it. `flush()`/`close()` wait for everything.

Policy: `Emitter(policy=Policy.load("policy.toml"), authorizer=Approvals(kafka))`
(wakeline.policy.engine, wakeline.producers.approvals) or the environment variable
WAKELINE_POLICY (a file, or `default`: the built-in policy; the emitter then makes the
`Approvals` authorizer itself) puts the policy engine in the `PolicyGate`; otherwise every call
is allowed, and recorded as such.

Metrics are opt-in: `Emitter(..., metrics=PrometheusMetrics())` (wakeline.infra.metrics)
counts calls by tool and status and refusals by gate; serve them with `metrics.serve(port)`
or hand `metrics.registry` to an exporter of your own. Without it prometheus-client is never
imported and a call pays one attribute check.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wakeline.infra.settings import KafkaSettings, StackSettings
from wakeline.producers.canonical import DEFAULT_MAX_PAYLOAD
from wakeline.producers.gates import (
    Authorizer,
    Gate,
    LoopGuard,
    PolicyGate,
    PolicyHook,
    QuarantineGate,
    allow_all,
)
from wakeline.producers.registry import ToolRegistry
from wakeline.producers.snapshots import SnapshotError
from wakeline.producers.spool import Spool, WaitJournal
from wakeline.producers.transport import (
    KafkaTransport,
    SpoolTransport,
    Transport,
    TransportOptions,
)
from wakeline.producers.workflow import ToolCall, WorkflowContext
from wakeline.schemas import cloudevents_headers, encode_event

if TYPE_CHECKING:
    from wakeline.infra.metrics import Metrics

__all__ = ["Emitter", "Resumed", "ToolCall", "WorkflowContext"]

log = logging.getLogger(__name__)


class Emitter:
    """One per agent process: a producer, a spool, the gates. Thread- and asyncio-safe."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        spool_dir: Path,
        registry: ToolRegistry | None = None,
        source: str = "wakeline-sdk",
        policy: PolicyHook | None = None,
        authorizer: Authorizer | None = None,
        loop_guard: LoopGuard | bool = True,
        quarantine_gate: QuarantineGate | bool = True,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD,
        transport: TransportOptions | Transport | None = None,
        spool_only: bool = False,
        alerts_topic: bool = True,
        publish_schemas: bool = True,
        gates: Sequence[Gate] = (),
        metrics: Metrics | None = None,
    ) -> None:
        self.kafka = kafka
        self.registry = registry if registry is not None else ToolRegistry()
        self.source = source
        #: an authorizer this emitter made (and closes), not one it was given
        self._own_authorizer: Any = None
        if policy is None:
            policy = _policy_from_env()
            if authorizer is None and getattr(policy, "asks_approvals", False):
                # a policy from the environment that can ask for approvals waits for them on
                # the brokers the emitter writes to, as `Emitter(policy=...,
                # authorizer=Approvals(kafka))`; one that never asks follows no topics
                from wakeline.producers.approvals import Approvals

                authorizer = self._own_authorizer = Approvals(kafka)
        #: `authorizer` turns require_approval into a wait for a signed approval (or an
        #: allow by a standing grant); without one such calls are refused
        self._policy_gate = PolicyGate(policy, authorizer)
        self._loop_guard: LoopGuard | None = LoopGuard() if loop_guard is True else None
        if isinstance(loop_guard, LoopGuard):
            self._loop_guard = loop_guard
        self.max_payload_bytes = max_payload_bytes
        self.events_topic = kafka.topics.events
        self.alerts_topic = kafka.topics.alerts if alerts_topic else None
        self.spool = Spool(spool_dir)
        #: calls waiting on a gate (an approval); what a dead process left is aborted when
        #: its run is opened again (`workflow(..., run_id=...)`)
        self.waiting = WaitJournal(Path(spool_dir) / "waiting")
        self.transport: Transport
        try:
            if spool_only:
                self.transport = SpoolTransport(self.spool)
            elif transport is None or isinstance(transport, TransportOptions):
                self.transport = KafkaTransport(kafka, self.spool, transport)
            else:
                self.transport = transport
        except Exception:
            self.spool.close()
            raise
        if publish_schemas:
            threading.Thread(
                target=_publish_schemas, args=(kafka,), name="wakeline-schemas", daemon=True
            ).start()
        if quarantine_gate is True:
            self.gate: QuarantineGate | None = QuarantineGate(kafka)
        else:
            self.gate = quarantine_gate or None
        #: the gate pipeline, in order: quarantine, loop guard, policy, then `gates`. A plain
        #: list: insert a gate where it belongs (an approvals gate before the policy, say)
        self.gates: list[Gate] = [
            g for g in (self.gate, self._loop_guard, self._policy_gate) if g is not None
        ]
        self.gates.extend(gates)
        #: opt-in counters of calls (by tool and status) and refusals (by gate), e.g. a
        #: `wakeline.infra.metrics.PrometheusMetrics()`; None (the default) costs one check
        self.metrics: Metrics | None = metrics if metrics is not None and metrics.enabled else None

    @property
    def policy(self) -> PolicyHook:
        return self._policy_gate.policy

    @policy.setter
    def policy(self, hook: PolicyHook) -> None:
        self._policy_gate.policy = hook

    @property
    def loop_guard(self) -> LoopGuard | None:
        return self._loop_guard

    @loop_guard.setter
    def loop_guard(self, guard: LoopGuard | None) -> None:
        """Replace (or, with None, remove) the loop guard, in its place in the pipeline."""
        old = self._loop_guard
        if old is not None and old in self.gates:
            at = self.gates.index(old)
            self.gates.pop(at)
        else:
            at = 1 if self.gate is not None and self.gate in self.gates else 0
        if guard is not None:
            self.gates.insert(at, guard)
        self._loop_guard = guard

    @classmethod
    def from_env(cls, *, spool_name: str = "default", **kwargs: Any) -> Emitter:
        """Broker and state dir from `WAKELINE_*`; the spool in `<home>/spool/<spool_name>`."""
        home = StackSettings.from_env().home
        return cls(KafkaSettings.from_env(), spool_dir=home / "spool" / spool_name, **kwargs)

    def workflow(
        self, workflow_id: str | None, *, agent_id: str, principal: str, **fields: Any
    ) -> WorkflowContext:
        ctx = WorkflowContext(self, workflow_id, agent_id=agent_id, principal=principal, **fields)
        if fields.get("run_id"):
            for entry in self.waiting.leftovers(ctx.workflow_id, ctx.run_id):
                ctx._abort_left(entry)
                self.waiting.clear(entry["intent_id"])
        return ctx

    def resume(
        self,
        workflow_id: str,
        checkpoint: str,
        *,
        agent_id: str | None = None,
        principal: str | None = None,
        dsn: str | None = None,
        ledger_store: Any = None,
        wait_s: float = 0.0,
        **fields: Any,
    ) -> Resumed:
        """Go on with a workflow from one of its checkpoints (`WorkflowContext.checkpoint`):
        the saved state and a new run's context, whose first event is a `WorkflowSnapshot`
        of the same name and state naming the one resumed from as its parent.

        Where it reads from: the PostgreSQL ledger (`dsn`, default `WAKELINE_DSN` or the
        local stack; tests may pass a `ledger_store`), never the events topic, so only a
        ledgered checkpoint can be resumed (`wait_s`: how long to wait for it to be). What
        it trusts: the ledger's stored leaf bytes once they hash to its stored leaf hash,
        and then the `state_digest` in that ledgered event: the state is returned only if
        its BLAKE3 is that digest (else `SnapshotError`, and nothing is written). It does
        not check the leaf's Merkle inclusion against a signed checkpoint: `wakeline ledger
        proof EVENT_ID` does, nor who wrote the snapshot: anyone who can write the events
        topic can write one, so resume by the event id `checkpoint()` returned when a later
        snapshot of the same name must not win. `checkpoint`: a snapshot's event id, or the
        newest snapshot of that name. Redacted values come back as they were saved (`[REDACTED]`).
        `agent_id`, `principal`, `tenant`, `boundary` default to the snapshot's; the other
        `fields` are those of `workflow()`."""
        import time

        from wakeline.producers.snapshots import (
            checked_state,
            find_snapshot,
            ledgered_snapshots,
            open_ledger,
        )

        deadline = time.monotonic() + wait_s
        with open_ledger(dsn, ledger_store) as (store, decode, _url):
            while True:
                try:
                    snap = find_snapshot(
                        ledgered_snapshots(store, workflow_id, decode), checkpoint, workflow_id
                    )
                    break
                except SnapshotError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.2)
        state = checked_state(snap.event)
        e = snap.event
        fields.setdefault("tenant", e.get("tenant"))
        fields.setdefault("boundary", e.get("boundary"))
        ctx = self.workflow(
            workflow_id,
            agent_id=agent_id or e["agent_id"],
            principal=principal or e["principal"],
            **fields,
        )
        resumed_id = ctx.checkpoint(snap.name, state, parents=[snap.event_id])
        return Resumed(state, ctx, snap.event_id, resumed_id)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait until every event is on the broker; returns how many are not (0 = all)."""
        return self.transport.flush(timeout)

    def close(self, timeout: float = 30.0) -> int:
        """Flush up to `timeout`; what is still undelivered stays durable in the spool."""
        if self.gate is not None:
            self.gate.close()
        if self._own_authorizer is not None:
            self._own_authorizer.close()
        left = self.transport.close(timeout)
        self.spool.close()  # a transport of one's own may not use it
        return left

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals shared by every context ------------------------------------------------
    def _frame(self, event: dict[str, Any]) -> tuple[bytes, list[tuple[str, bytes]]]:
        return encode_event(event), cloudevents_headers(event)


def _policy_from_env() -> PolicyHook:
    """The policy engine when WAKELINE_POLICY names a file (or `default`), else allow-all:
    calls do not change under an application that never asked for a policy."""
    if not os.environ.get("WAKELINE_POLICY", "").strip():
        return allow_all
    from wakeline.policy.engine import Policy  # only then: tomllib and the engine

    policy = Policy.from_env()
    return allow_all if policy is None else policy


@dataclass(frozen=True)
class Resumed:
    """What `Emitter.resume` hands back: the checked state, the context to go on with."""

    state: dict[str, Any]
    context: WorkflowContext
    #: the WorkflowSnapshot resumed from, and the one the new run starts with
    snapshot_id: str
    resumed_id: str

    def __iter__(self) -> Iterator[Any]:
        """`state, ctx = emitter.resume(...)`."""
        return iter((self.state, self.context))


def _publish_schemas(kafka: KafkaSettings) -> None:
    """Best effort, in the background: the writer schemas on the compacted schemas topic, so
    any consumer can decode what this process emits (the worker copies them into PostgreSQL:
    an agent needs Kafka only). Idempotent: a fingerprint names one schema forever."""
    try:
        from wakeline.infra.schema_registry import publish_to_kafka
        from wakeline.schemas import default_codec

        publish_to_kafka(kafka, default_codec().current().values(), timeout=60)
    except Exception as e:  # noqa: BLE001 - never break the agent over this
        log.warning("could not publish schemas to %s: %s", kafka.topics.schemas, e)
