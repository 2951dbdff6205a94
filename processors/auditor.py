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

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import blake3

from wakeline.errors import SchemaError, WakelineError
from wakeline.ledger.records import LedgerRecord
from wakeline.ledger.segments import SegmentHeader
from wakeline.ledger.store import Entry, LedgerStore
from wakeline.schemas import ce_type, decode_event, rfc3339_micros

from .audit import (
    AUDIT_FIXED_HEADERS,
    DEFAULT_MAX_RECORD_BYTES,
    clip,
    clip_bytes,
    encode_audit,
    fit_audit_record,
    key_text,
    record_size,
)
from .stream import COMMITTED, Applied, Assigned, Output, PublishError, deliver
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


def _dlq_position(
    record: LedgerRecord,
    reason: str,
    events_topic: str,
    leaf_hash: bytes | None,
    component: str | None,
) -> list[tuple[str, bytes]]:
    headers = [
        ("wakeline_dlq_reason", (clip(reason, 4000) or "").encode("utf-8", "replace")),
        ("wakeline_dlq_topic", events_topic.encode()),
        ("wakeline_dlq_partition", str(record.partition).encode()),
        ("wakeline_dlq_offset", str(record.offset).encode()),
    ]
    if leaf_hash is not None:
        headers.append(("wakeline_leaf_hash", leaf_hash.hex().encode()))
    if component is not None:
        headers.append(("wakeline_dlq_component", component.encode()))
    return headers


def dlq_record(
    record: LedgerRecord,
    reason: str,
    events_topic: str,
    leaf_hash: bytes | None,
    max_bytes: int,
    *,
    component: str | None = None,
) -> tuple[bytes | None, bytes | None, list[tuple[str, Any]]]:
    """(value, key, headers) of the DLQ copy of a consumed record, within `max_bytes`.

    The copy carries the record's value, key and headers as they came, plus where it sits
    (its leaf hash when it is ledgered), which component sent it (`component`, when not the
    audit publisher) and why it is here. Too large, it keeps only what fits: the value is
    replaced by its BLAKE3 (`wakeline_dlq_value_blake3`), the original headers are dropped
    (`wakeline_dlq_headers_dropped` says how many) and a long key is replaced by its digest;
    the ledger leaf holds every byte."""
    position = _dlq_position(record, reason, events_topic, leaf_hash, component)
    headers = [*record.headers, *position]
    if record_size(record.key, record.value, headers) <= max_bytes:
        return record.value, record.key, headers
    headers = position
    value = record.value
    if value is not None and len(value) + 16_384 > max_bytes:
        headers.append(("wakeline_dlq_value_blake3", blake3.blake3(value).hexdigest().encode()))
        headers.append(("wakeline_dlq_value_size", str(len(value)).encode()))
        value = None
    headers.append(("wakeline_dlq_headers_dropped", str(len(record.headers)).encode()))
    return value, clip_bytes(record.key), headers


_CE_TYPES: dict[str, bytes] = {}


def _header_findings(record: LedgerRecord, event: dict[str, Any]) -> list[str]:
    """What the CloudEvents headers and the key say that the body does not (the body is the
    truth: lookups use its event id; a disagreeing header is reported, never trusted)."""
    etype = event["type"]
    want_type = _CE_TYPES.get(etype)
    if want_type is None:
        want_type = _CE_TYPES.setdefault(etype, ce_type(etype).encode())
    want_id = event["event_id"].encode("utf-8", "surrogatepass")
    want_subject = event["workflow_id"].encode("utf-8", "surrogatepass")
    got: dict[str, bytes | None] = {}
    for name, value in record.headers:
        if name in _CE_CHECKED and name not in got:
            got[name] = value
    if (
        got.get("ce_id") == want_id
        and got.get("ce_type") == want_type
        and got.get("ce_subject") == want_subject
        and record.key == want_subject
    ):
        return []  # the usual case: everything agrees
    found = []
    for name, body in (("ce_id", want_id), ("ce_type", want_type), ("ce_subject", want_subject)):
        raw = got.get(name)
        if raw is None:
            found.append(f"no {name} header")
        elif raw != body:
            shown = clip(raw.decode("utf-8", "replace"), 80)
            said = clip(body.decode("utf-8", "replace"), 80)
            found.append(f"{name} header {shown!r} disagrees with the body's {said!r}")
    if record.key != want_subject:
        found.append("the record key is not the body's workflow_id")
    return found


_CE_CHECKED = frozenset({"ce_id", "ce_type", "ce_subject"})


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
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    ) -> None:
        self.producer = producer
        self.max_record_bytes = max_record_bytes
        self.events_topic = events_topic
        self.audit_topic = audit_topic
        self.dlq_topic = dlq_topic
        self.intents = IntentCache(intent_cache_size)
        self._store = store
        self.records_audited = 0
        self.records_dead_lettered = 0

    def entries_of(self, header: SegmentHeader) -> list[Entry]:
        """The segment's entries, read back from the store."""
        if self._store is None:
            raise WakelineError("the auditor has no store to read entries from")
        first = header.first_leaf_index
        entries = list(self._store().entries(header.partition, first, first + header.leaf_count))
        if len(entries) != header.leaf_count:
            raise WakelineError(
                f"partition {header.partition} segment {header.segment_number}: store holds "
                f"{len(entries)} entries, header says {header.leaf_count}"
            )
        return entries

    def audit_segment(self, header: SegmentHeader, at_us: int | None = None) -> int:
        """Read the segment's entries from the store, publish through `self.producer`, wait
        for the broker; records it refuses are dead-lettered. Returns the entries audited."""
        entries = self.entries_of(header)
        refused = deliver(self.producer, self.outputs(header, entries, at_us))
        extra = self.replacements(refused)
        if extra and deliver(self.producer, extra):
            raise PublishError("the DLQ refused a record")
        self.records_audited += len(entries)
        return len(entries)

    def replacements(self, refused: Sequence[tuple[Output, str]]) -> list[Output]:
        """DLQ records for audit records the broker refused: no ledgered record is left
        without its audit record or a DLQ record saying why. A refused DLQ record raises."""
        out = []
        for o, why in refused:
            if o.topic != self.audit_topic or o.tag is None:
                raise PublishError(f"{o.topic} refused a record: {why}")
            r, leaf_hash = o.tag
            out.append(
                self._dead_letter(r, f"the broker refused the audit record: {why}", leaf_hash)
            )
        return out

    def _dead_letter(self, r: LedgerRecord, reason: str, leaf_hash: bytes) -> Output:
        value, key, headers = dlq_record(
            r, reason, self.events_topic, leaf_hash, self.max_record_bytes
        )
        self.records_dead_lettered += 1
        return Output(self.dlq_topic, value, key, headers)

    def outputs(
        self, header: SegmentHeader, entries: Sequence[Entry], at_us: int | None = None
    ) -> Iterator[Output]:
        """Audit (and DLQ) records for `entries` of the segment `header`, in leaf order,
        made as they are produced (a segment holds up to tens of thousands). Each audit
        record's tag is (record, leaf hash), for a DLQ record if it is refused."""
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
        limit = self.max_record_bytes
        for entry in entries:
            r = entry.record()
            event, error = decode_record(r)
            if error is not None:
                yield self._dead_letter(r, error, entry.leaf_hash)
            record = self.audit_record(r, event, error, fixed, entry.leaf_index, entry.leaf_hash)
            value, key = encode_audit(record), r.key
            subject = record["workflow_id"] or ""
            if len(value) + len(key or b"") + len(subject) + 512 > limit or len(subject) > 1024:
                try:
                    value, key, headers = fit_audit_record(record, key, limit)
                except SchemaError as e:
                    reason = f"audit record cannot be produced: {e}"
                    yield self._dead_letter(r, reason, entry.leaf_hash)
                    continue
            else:
                headers = [
                    *AUDIT_FIXED_HEADERS,
                    ("ce_id", (ce_prefix + str(entry.leaf_index)).encode()),
                    ce_time,
                    ("ce_subject", subject.encode()),
                ]
            yield Output(self.audit_topic, value, key, headers, tag=(r, entry.leaf_hash))

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
                "warnings": [],
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
                "authorized_by": None,
                "event": r.value,
                "decode_error": clip(error, 4000),
                "offset": r.offset,
                "leaf_index": leaf_index,
                "leaf_hash": leaf_hash,
                **fixed,
            }
        tool = status = authorized = None
        etype = e["type"]
        if etype == "ToolIntent":
            memo = intent_memo(e)
            self.intents.put(e["event_id"], memo)
            tool, authorized = memo.tool, memo.authorized_by
            summary = intent_summary(e, memo)
        elif etype == "ToolResult":
            found = self._lookup(e["intent_id"])
            tool = found.tool if found else None
            authorized = found.authorized_by if found and e["status"] != "denied" else None
            status = e["status"]
            summary = result_summary(e, found)
        else:
            summary = summarize(e, self._lookup)
            status = e.get("status") if etype == "CompensationResult" else None
        warnings = _header_findings(r, e)
        if warnings:
            summary += " [warning: " + "; ".join(warnings) + "]"
        return {
            "summary": clip(summary, 4000),
            "warnings": warnings,
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
            "authorized_by": authorized,
            "event": r.value,
            "decode_error": None,
            "offset": r.offset,
            "leaf_index": leaf_index,
            "leaf_hash": leaf_hash,
            **fixed,
        }


@dataclass(frozen=True)
class _Audit:
    """One record of the ledger topic: a segment header to audit (or `None`: skip it)."""

    record: LedgerRecord
    header: SegmentHeader | None
    problem: str | None = None


class AuditProcessor:
    """Segment headers of the ledger topic -> audit and DLQ records (runs on the Kafka
    runner, processors/stream.py). Its position is the consumer group's committed offset:
    committed once a header's records are delivered, so at-least-once; a header seen twice
    (a builder republishing after a crash) gives identical audit records again."""

    name = "audit-publisher"
    fatal: tuple[type[BaseException], ...] = ()

    def __init__(self, auditor: Auditor, store_factory: Callable[[], LedgerStore]) -> None:
        self.auditor = auditor
        self._store_factory = store_factory
        self._stores: list[LedgerStore] = []
        auditor._store = self._store
        #: events partition -> newest segment number audited by this process
        self._done: dict[int, int] = {}
        self.wait_for_sink: Callable[[], None] = lambda: None

    def _store(self) -> LedgerStore:
        if not self._stores:
            self._stores.append(self._store_factory())
        return self._stores[0]

    def assign(self, partitions: list[int]) -> Assigned:
        return Assigned(dict.fromkeys(partitions, COMMITTED))

    def revoke(self, partitions: list[int]) -> None:
        for p in partitions:
            self._done.pop(p, None)

    def handle(self, records: list[LedgerRecord], now: float) -> list[Any]:
        out = []
        for r in records:
            try:
                header = SegmentHeader.from_bytes(r.value or b"")
            except Exception as e:  # not a header: reported, never audited
                out.append(_Audit(r, None, f"not a segment header: {type(e).__name__}: {e}"))
                continue
            out.append(_Audit(r, header))
        return out

    def due(self, now: float) -> list[Any]:
        return []

    def drain(self, partitions: list[int]) -> list[Any]:
        return []

    def apply(self, works: list[Any]) -> list[Applied]:
        out = []
        for w in works:
            commit = {w.record.partition: w.record.offset + 1}
            h = w.header
            if h is None:
                log.error(
                    "ledger topic record skipped partition=%d offset=%d reason=%s",
                    w.record.partition, w.record.offset, w.problem,
                )  # fmt: skip
                out.append(Applied(w, [], commit))
                continue
            if self._done.get(h.partition, -1) >= h.segment_number:
                out.append(Applied(w, [], commit))  # republished: audited already
                continue
            at_us = w.record.timestamp * 1000
            entries = self.auditor.entries_of(h)
            out.append(Applied(w, self.auditor.outputs(h, entries, at_us), commit))
        return out

    def delivered(self, applied: list[Applied], refused: list[tuple[Output, str]]) -> list[Output]:
        extra = self.auditor.replacements(refused)
        for a in applied:
            h = a.work.header
            if h is not None and self._done.get(h.partition, -1) < h.segment_number:
                self._done[h.partition] = h.segment_number
                self.auditor.records_audited += h.leaf_count
        return extra

    def reset(self) -> None:
        for s in self._stores:
            with contextlib.suppress(Exception):
                s.close()
        self._stores.clear()

    def close(self) -> None:
        self.reset()
