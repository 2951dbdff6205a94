"""Builds one workflow's decoded events, in partition order, as the compensator reads them."""

from __future__ import annotations

from typing import Any

from wakeline.compensator.plan import Scope
from wakeline.compensator.registry import CompensationRegistry, Done, NothingToUndo
from wakeline.ledger import BLAKE3
from wakeline.ledger.records import LedgerRecord
from wakeline.ledger.segments import PartitionChain
from wakeline.ledger.store import make_entries
from wakeline.ledger.store_memory import MemoryLedgerStore
from wakeline.schemas import cloudevents_headers, encode_event

T0 = 1_780_000_000_000_000  # 2026-05-28T20:26:40Z
WORKFLOW = Scope()


def refund(req: Any) -> Done:
    return Done(f"refunded {req.external_ids.get('charge_id')}")


def restore(req: Any) -> NothingToUndo:
    return NothingToUndo("already restored")


def handlers(*, safe_if_unknown: bool = False) -> CompensationRegistry:
    reg = CompensationRegistry()
    reg.register("stripe.refund", refund, safe_if_unknown=safe_if_unknown)
    reg.register("crm.restore", restore)
    reg.register("email.recall", restore)
    return reg


class Events:
    """`intent`/`result`/`call`/... append an event and return it; `.events` is the list."""

    def __init__(self, workflow: str = "wf-1", run: str = "run-1") -> None:
        self.workflow = workflow
        self.run = run
        self.events: list[dict[str, Any]] = []
        self._n = 0

    def _event(self, kind: str, run: str | None = None, **fields: Any) -> dict[str, Any]:
        self._n += 1
        event = {
            "event_id": f"0190a0b0-0000-7000-8000-{self._n:012d}",
            "type": kind,
            "time": T0 + self._n * 1_000_000,
            "source": "wakeline-sdk/test",
            "workflow_id": self.workflow,
            "run_id": run or self.run,
            "step_id": None,
            "agent_id": "billing-bot",
            "tenant": None,
            "boundary": None,
            "parent_event_ids": [],
            "correlation_id": None,
            "principal": "alice@example.com",
            "trace_id": None,
            "span_id": None,
            **fields,
        }
        self.events.append(event)
        return event

    def intent(
        self,
        tool: str = "stripe.charge",
        *,
        compensation: str | None = "stripe.refund",
        reversibility: str = "compensable",
        args: str = '{"amount":1299,"customer":"cus_1"}',
        undo_window_us: int | None = None,
        run: str | None = None,
        parents: list[str] | None = None,
    ) -> dict[str, Any]:
        return self._event(
            "ToolIntent",
            run,
            parent_event_ids=parents or [],
            tool=tool,
            args=args,
            args_digest=b"\x11" * 32,
            resources_read=[],
            resources_written=[f"{tool}:1"],
            reversibility=reversibility,
            impact="high",
            compensation=compensation,
            policy_decision="allow",
            policy_reason=None,
            durability="strict",
            redacted_fields=[],
            approval_id=None,
            undo_window_us=undo_window_us,
        )

    def result(
        self,
        intent: dict[str, Any],
        status: str = "ok",
        *,
        external_ids: dict[str, str] | None = None,
        summary: str | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
    ) -> dict[str, Any]:
        if status != "ok" and error_type is None:
            error_type = {"error": "ValueError", "denied": "Refused", "aborted": "Aborted"}.get(
                status
            )
        return self._event(
            "ToolResult",
            intent["run_id"],
            intent_id=intent["event_id"],
            status=status,
            result_digest=None,
            result_summary=summary,
            error_type=error_type,
            error_message=error_message,
            external_ids=external_ids if external_ids is not None else {"charge_id": "ch_1"},
            duration_us=1000,
        )

    def call(self, tool: str = "stripe.charge", status: str = "ok", **intent: Any) -> dict:
        """An intent and its result; returns the intent."""
        i = self.intent(tool, **intent)
        self.result(i, status)
        return i

    def quarantine(
        self, scope: str = "workflow", *, run: str | None = None, tainted: list[str] | None = None
    ) -> dict[str, Any]:
        return self._event(
            "Quarantine",
            run,
            scope=scope,
            reason="runaway refunds",
            by="ops@example.com",
            alert_id=None,
            tainted_event_ids=tainted or [],
        )

    def release(self, quarantine: dict[str, Any] | None = None) -> dict[str, Any]:
        q = None if quarantine is None else quarantine["event_id"]
        return self._event("Release", reason="fixed", by="ops@example.com", quarantine_id=q)

    def started(self, intent: dict[str, Any], attempt: int = 1) -> dict[str, Any]:
        return self._event(
            "CompensationStarted",
            intent["run_id"],
            original_event_id=intent["event_id"],
            compensation=intent["compensation"],
            idempotency_key="k",
            attempt=attempt,
            quarantine_id=None,
        )

    def compensated(
        self,
        intent: dict[str, Any],
        status: str = "ok",
        *,
        attempt: int = 1,
        final: bool = True,
        error: str | None = None,
    ) -> dict[str, Any]:
        return self._event(
            "CompensationResult",
            intent["run_id"],
            original_event_id=intent["event_id"],
            compensation=intent["compensation"],
            idempotency_key="k",
            attempt=attempt,
            status=status,
            error_type=None if error is None else "RuntimeError",
            error_message=error,
            final=final,
            duration_us=10,
            external_ids={},
        )

    def escalation(self, *intents: dict[str, Any]) -> dict[str, Any]:
        return self._event(
            "Escalation",
            summary="a human must act",
            undone=[],
            not_undone=[],
            recommended_actions=[],
            related_event_ids=[i["event_id"] for i in intents],
            quarantine_id=None,
            task_id=None,
        )


def store_of(events: list[dict[str, Any]], partition: int = 3) -> MemoryLedgerStore:
    """The events ledgered on one partition, one segment, as the ledger builder stores them."""
    store = MemoryLedgerStore()
    chain = PartitionChain(BLAKE3, partition)
    leaves = [
        LedgerRecord(
            partition,
            offset,
            e["time"] // 1000,
            e["workflow_id"].encode(),
            encode_event(e),
            tuple(cloudevents_headers(e)),
        ).leaf_bytes()
        for offset, e in enumerate(events)
    ]
    header, hashes = chain.seal(leaves)
    store.append_segment(header, make_entries(header, leaves, hashes), chain.tree.nodes)
    return store
