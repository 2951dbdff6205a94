"""The approval queue's processor without services: where the worker hosts it, and which
records it decodes (the rest is skipped on the writer schema's fingerprint)."""

from __future__ import annotations

from tests.approvalkit import Approvers, signed, waiting_call
from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.ledger.records import LedgerRecord
from wakeline.ledger.store_memory import MemoryLedgerStore
from wakeline.processors.app import create_worker
from wakeline.processors.approvals import ApprovalQueueProcessor
from wakeline.processors.settings import BuilderSettings
from wakeline.schemas import decode_event
from wakeline.testkit.samples import frames, intent, result

KAFKA = KafkaSettings(bootstrap="127.0.0.1:1", topics=Topics("u."), partitions=3)


def _names(settings: BuilderSettings) -> list[str]:
    w = create_worker(KAFKA, settings, "", MemoryLedgerStore, None)
    return [r.processor.name for r in w.runners]


def test_the_worker_hosts_the_queue_with_the_audit_publisher_by_default() -> None:
    assert "approval-queue" in _names(BuilderSettings())
    assert "approval-queue" in _names(BuilderSettings(builder=False))
    assert "approval-queue" not in _names(BuilderSettings(audit=False))
    assert "approval-queue" not in _names(BuilderSettings(approvals=False))


def test_only_the_events_of_the_queue_are_decoded() -> None:
    decoded: list[str] = []

    def decode(v: bytes) -> dict:
        e = decode_event(v)
        decoded.append(e["type"])
        return e

    group = Approvers.of("alice@example.com")
    call, request = waiting_call("wf-1", group)
    plain = intent("wf-1", 1)
    events = [plain, result(plain), call, request, signed(request, group, "alice@example.com")]
    events.append(dict(_alert(), workflow_id="wf-1"))
    records = []
    for i, e in enumerate(events):
        key, value, headers = frames(e)
        records.append(LedgerRecord(0, i, 0, key, value, tuple(headers)))
    records.append(LedgerRecord(0, len(records), 0, b"wf-1", b"\xc3\x01garbage", ()))
    p = ApprovalQueueProcessor(lambda: None, decode=decode)
    (batch,) = p.handle(records, 0.0)
    assert batch.commit == {0: len(records)}
    # the alert is never decoded; an intent that was allowed is decoded and dropped
    assert "Alert" not in decoded
    assert [kind for _, kind, _ in batch.items] == [
        "ToolResult", "ToolIntent", "ApprovalRequested", "ApprovalGranted",
    ]  # fmt: skip
    assert p.handle([], 0.0) == []  # nothing read, nothing to commit


def _alert() -> dict:
    from wakeline.schemas import new_event_id

    return {
        "event_id": new_event_id(), "type": "Alert", "time": 1, "source": "test",
        "run_id": "r", "agent_id": "a", "principal": "p", "kind": "other", "detail": "d",
        "detector": "test", "severity": "info",
    }  # fmt: skip
