"""After a segment is persisted: its header to the ledger topic, one audit record per leaf,
and each undecodable record to the DLQ.

What has been published is recorded in PostgreSQL (`processor_publications`, migration
0005) only after the producer confirmed delivery, so a builder killed between the
database commit and the broker's acknowledgement republishes on resume (at-least-once:
a consumer may see a header or audit record twice, identical; dedupe by ledger position).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from wakeline.errors import StoreError, WakelineError
from wakeline.ledger.segments import SegmentHeader
from wakeline.ledger.store import LedgerStore

from .audit import audit_headers, encode_audit, key_text
from .builder import Ingested, SealedSegment, ingest
from .summary import IntentCache, IntentMemo, intent_memo, summarize, summarize_undecodable

log = logging.getLogger(__name__)


class PublishError(WakelineError):
    """The broker did not acknowledge what the builder published."""


def header_record(header: SegmentHeader) -> tuple[int, bytes, bytes]:
    """(ledger-topic partition, key, value) of a segment header: the events partition's
    number as key (ASCII decimal) and the header's exact bytes as value, on the same
    partition number of the ledger topic so each partition's chain stays in order."""
    return header.partition, str(header.partition).encode(), header.to_bytes()


def dlq_headers(item: Ingested, events_topic: str, leaf_hash: bytes) -> list[tuple[str, Any]]:
    r = item.record
    return [
        *r.headers,
        ("wakeline_dlq_reason", (item.error or "").encode()),
        ("wakeline_dlq_topic", events_topic.encode()),
        ("wakeline_dlq_partition", str(r.partition).encode()),
        ("wakeline_dlq_offset", str(r.offset).encode()),
        ("wakeline_leaf_hash", leaf_hash.hex().encode()),
    ]


class Publisher:
    """Publishes sealed segments through one confluent-kafka Producer."""

    def __init__(
        self,
        producer: Any,
        *,
        events_topic: str,
        ledger_topic: str,
        audit_topic: str,
        dlq_topic: str,
        suite_name: str,
        audit: bool = True,
        intent_cache_size: int = 200_000,
        store: Callable[[], LedgerStore] | None = None,
    ) -> None:
        self.producer = producer
        self.events_topic = events_topic
        self.ledger_topic = ledger_topic
        self.audit_topic = audit_topic
        self.dlq_topic = dlq_topic
        self.suite_name = suite_name
        self.audit = audit
        self.intents = IntentCache(intent_cache_size)
        self._store = store
        self._errors: list[str] = []
        self._lock = threading.Lock()

    # confluent-kafka calls this for failed deliveries only (delivery.report.only.error)
    def on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            with self._lock:
                self._errors.append(f"{msg.topic()}: {err}")

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
        item = ingest(entry.record())
        if item.event is None or item.event.get("type") != "ToolIntent":
            return None
        memo = intent_memo(item.event)
        self.intents.put(intent_id, memo)
        return memo

    def publish(self, segments: Sequence[SealedSegment]) -> None:
        """Produce everything for `segments`, wait for the broker, raise PublishError if any
        record was not acknowledged."""
        produce = self.producer.produce
        for seg in segments:
            part, key, value = header_record(seg.header)
            produce(self.ledger_topic, value=value, key=key, partition=part)
            if self.audit or any(i.error for i in seg.items):
                self._items(seg, produce)
        remaining = self.producer.flush(60)
        with self._lock:
            errors, self._errors = self._errors, []
        if remaining or errors:
            raise PublishError(
                f"{remaining} records unacknowledged, {len(errors)} failed"
                + (f"; first: {errors[0]}" if errors else "")
            )

    def _items(self, seg: SealedSegment, produce: Callable[..., None]) -> None:
        h = seg.header
        first = h.first_leaf_index
        for n, (item, leaf_hash) in enumerate(zip(seg.items, seg.leaf_hashes, strict=True)):
            r = item.record
            if item.error is not None:
                produce(
                    self.dlq_topic, value=r.value, key=r.key,
                    headers=dlq_headers(item, self.events_topic, leaf_hash),
                )  # fmt: skip
            if not self.audit:
                continue
            record = self.audit_record(item, h, first + n, leaf_hash, seg.persisted_at_us)
            produce(
                self.audit_topic, value=encode_audit(record), key=r.key,
                headers=audit_headers(record),
            )  # fmt: skip

    def audit_record(
        self, item: Ingested, h: SegmentHeader, leaf_index: int, leaf_hash: bytes, at_us: int
    ) -> dict[str, Any]:
        r = item.record
        e = item.event
        position = {
            "topic": self.events_topic,
            "partition": r.partition,
            "offset": r.offset,
            "leaf_index": leaf_index,
            "leaf_hash": leaf_hash,
            "hash_suite": self.suite_name,
            "segment": h.segment_number,
            "tree_size": h.tree_size,
        }
        if e is None:
            return {
                "summary": summarize_undecodable(r.partition, r.offset, item.error or ""),
                "workflow_id": key_text(r.key),
                "event": r.value,
                "decode_error": item.error,
                "ledger": position,
                "ledgered_at": at_us,
            }
        tool = None
        etype = e.get("type")
        if etype == "ToolIntent":
            memo = intent_memo(e)
            self.intents.put(e["event_id"], memo)
            tool = memo.tool
        elif etype == "ToolResult":
            memo = self._lookup(e.get("intent_id") or "")
            tool = memo.tool if memo else None
        return {
            "summary": summarize(e, self._lookup),
            "event_id": e.get("event_id"),
            "event_type": etype,
            "event_time": e.get("time"),
            "workflow_id": e.get("workflow_id"),
            "run_id": e.get("run_id"),
            "agent_id": e.get("agent_id"),
            "principal": e.get("principal"),
            "tenant": e.get("tenant"),
            "tool": tool,
            "status": e.get("status") if etype in ("ToolResult", "CompensationResult") else None,
            "event": r.value,
            "decode_error": None,
            "ledger": position,
            "ledgered_at": at_us,
        }


class PublicationLog:
    """Which segments have been published, per ledger topic and partition (migration 0005)."""

    def __init__(self, dsn: str, ledger_topic: str) -> None:
        self.dsn = dsn
        self.ledger_topic = ledger_topic
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            except psycopg.Error as e:
                raise StoreError(f"cannot connect for publication log: {e}") from e
        return self._conn

    def mark(self, headers: Sequence[SegmentHeader]) -> None:
        if not headers:
            return
        rows = [(self.ledger_topic, h.partition, h.segment_number) for h in headers]
        try:
            with self._connection().cursor() as cur:
                cur.executemany(
                    "INSERT INTO processor_publications (ledger_topic, partition, segment_number)"
                    " VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    rows,
                )
        except psycopg.Error as e:
            self.close()
            raise StoreError(f"cannot record publication: {e}") from e

    def last_published(self, partition: int) -> int:
        """Highest segment number published for `partition`; -1 if none."""
        try:
            row = (
                self._connection()
                .execute(
                    "SELECT coalesce(max(segment_number), -1) FROM processor_publications"
                    " WHERE ledger_topic = %s AND partition = %s",
                    (self.ledger_topic, partition),
                )
                .fetchone()
            )
        except psycopg.Error as e:
            self.close()
            raise StoreError(f"cannot read publication log: {e}") from e
        return int(row[0]) if row else -1

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
