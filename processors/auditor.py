"""The audit publisher: for every ledgered record, an audit record; for each undecodable
one, a copy on the DLQ with the reason.

It follows the segment headers the builder publishes on the ledger topic (a faust agent
in app.py, one event per segment, so faust's per-event cost does not matter here), reads
the segment's entries back from PostgreSQL, decodes them and publishes. Auditing only what
a published header commits to means an audit record never names a leaf that is not
persisted. Delivery is at-least-once: a header seen twice (a builder republishing after a
crash, a worker restarting before faust committed) gives identical audit records again;
consumers dedupe by (topic, partition, leaf_index).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from wakeline.errors import WakelineError
from wakeline.ledger.records import LedgerRecord
from wakeline.ledger.segments import SegmentHeader
from wakeline.ledger.store import Entry, LedgerStore
from wakeline.schemas import decode_event, rfc3339_micros

from .audit import AUDIT_FIXED_HEADERS, encode_audit, key_text
from .publisher import wait_for_delivery
from .summary import (
    IntentCache,
    IntentMemo,
    intent_memo,
    intent_summary,
    result_summary,
    summarize,
    summarize_undecodable,
)

log = logging.getLogger(__name__)


def decode_record(record: LedgerRecord) -> tuple[dict[str, Any] | None, str | None]:
    """(event, None) or (None, why it does not decode)."""
    if record.value is None:
        return None, "record has no value (tombstone)"
    try:
        return decode_event(record.value), None
    except Exception as e:  # SchemaError, and anything fastavro throws on garbage
        return None, f"{type(e).__name__}: {e}"


def dlq_headers(
    record: LedgerRecord, reason: str, events_topic: str, leaf_hash: bytes
) -> list[tuple[str, Any]]:
    return [
        *record.headers,
        ("wakeline_dlq_reason", reason.encode()),
        ("wakeline_dlq_topic", events_topic.encode()),
        ("wakeline_dlq_partition", str(record.partition).encode()),
        ("wakeline_dlq_offset", str(record.offset).encode()),
        ("wakeline_leaf_hash", leaf_hash.hex().encode()),
    ]


class Auditor:
    """Turns one persisted segment into audit records (and DLQ records)."""

    def __init__(
        self,
        producer: Any,
        *,
        events_topic: str,
        audit_topic: str,
        dlq_topic: str,
        store: Callable[[], LedgerStore] | None = None,
        intent_cache_size: int = 200_000,
    ) -> None:
        self.producer = producer
        self.events_topic = events_topic
        self.audit_topic = audit_topic
        self.dlq_topic = dlq_topic
        self.intents = IntentCache(intent_cache_size)
        self._store = store
        self._errors: list[str] = []
        self._lock = threading.Lock()
        self.records_audited = 0

    def on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            with self._lock:
                self._errors.append(f"{msg.topic()}: {err}")

    def audit_segment(self, header: SegmentHeader, at_us: int | None = None) -> int:
        """Read the segment's entries from the store, publish, wait for the broker."""
        if self._store is None:
            raise WakelineError("the auditor has no store to read entries from")
        first = header.first_leaf_index
        entries = list(self._store().entries(header.partition, first, first + header.leaf_count))
        if len(entries) != header.leaf_count:
            raise WakelineError(
                f"partition {header.partition} segment {header.segment_number}: store holds "
                f"{len(entries)} entries, header says {header.leaf_count}"
            )
        self.publish(header, entries, at_us)
        wait_for_delivery(self.producer, self)
        self.records_audited += len(entries)
        return len(entries)

    def publish(
        self, header: SegmentHeader, entries: Sequence[Entry], at_us: int | None = None
    ) -> None:
        """Produce audit (and DLQ) records for `entries` of the segment `header`."""
        at_us = at_us if at_us is not None else header.max_timestamp * 1000
        fixed = {
            "topic": self.events_topic,
            "partition": header.partition,
            "hash_suite": header.suite.name,
            "segment": header.segment_number,
            "tree_size": header.tree_size,
            "ledgered_at": at_us,
        }
        ce_time = ("ce_time", rfc3339_micros(at_us).encode())
        ce_prefix = f"{self.events_topic}/{header.partition}/"
        produce = self.producer.produce
        for entry in entries:
            r = entry.record()
            event, error = decode_record(r)
            if error is not None:
                produce(
                    self.dlq_topic, value=r.value, key=r.key,
                    headers=dlq_headers(r, error, self.events_topic, entry.leaf_hash),
                )  # fmt: skip
            record = self.audit_record(r, event, error, fixed, entry.leaf_index, entry.leaf_hash)
            headers = [
                *AUDIT_FIXED_HEADERS,
                ("ce_id", (ce_prefix + str(entry.leaf_index)).encode()),
                ce_time,
                ("ce_subject", (record["workflow_id"] or "").encode()),
            ]
            produce(self.audit_topic, value=encode_audit(record), key=r.key, headers=headers)

    def _lookup(self, intent_id: str) -> IntentMemo | None:
        memo = self.intents.get(intent_id)
        if memo is not None or self._store is None or not intent_id:
            return memo
        try:
            entry = self._store().entry_by_event_id(intent_id)
        except WakelineError:
            return None
        if entry is None:
            return None
        event, _ = decode_record(entry.record())
        if event is None or event.get("type") != "ToolIntent":
            return None
        memo = intent_memo(event)
        self.intents.put(intent_id, memo)
        return memo

    def audit_record(
        self,
        r: LedgerRecord,
        e: dict[str, Any] | None,
        error: str | None,
        fixed: dict[str, Any],
        leaf_index: int,
        leaf_hash: bytes,
    ) -> dict[str, Any]:
        """The AuditRecord (schemas/AuditRecord.avsc) of one ledgered record."""
        if e is None:
            return {
                "summary": summarize_undecodable(r.partition, r.offset, error or ""),
                "event_id": None,
                "event_type": None,
                "event_time": None,
                "workflow_id": key_text(r.key),
                "run_id": None,
                "agent_id": None,
                "principal": None,
                "tenant": None,
                "tool": None,
                "status": None,
                "event": r.value,
                "decode_error": error,
                "offset": r.offset,
                "leaf_index": leaf_index,
                "leaf_hash": leaf_hash,
                **fixed,
            }
        tool = status = None
        etype = e["type"]
        if etype == "ToolIntent":
            memo = intent_memo(e)
            self.intents.put(e["event_id"], memo)
            tool = memo.tool
            summary = intent_summary(e, memo)
        elif etype == "ToolResult":
            found = self._lookup(e["intent_id"])
            tool = found.tool if found else None
            status = e["status"]
            summary = result_summary(e, found)
        else:
            summary = summarize(e, self._lookup)
            status = e.get("status") if etype == "CompensationResult" else None
        return {
            "summary": summary,
            "event_id": e["event_id"],
            "event_type": etype,
            "event_time": e["time"],
            "workflow_id": e["workflow_id"],
            "run_id": e["run_id"],
            "agent_id": e["agent_id"],
            "principal": e["principal"],
            "tenant": e["tenant"],
            "tool": tool,
            "status": status,
            "event": r.value,
            "decode_error": None,
            "offset": r.offset,
            "leaf_index": leaf_index,
            "leaf_hash": leaf_hash,
            **fixed,
        }
