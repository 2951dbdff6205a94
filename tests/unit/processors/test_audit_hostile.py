"""The audit publisher under hostile records: every ledgered record gets its audit record
or a DLQ record saying why not; nothing it derives passes the broker's size limit; a header
that disagrees with the body is reported."""

from __future__ import annotations

from typing import Any

import pytest

from wakeline.ledger.hashing import BLAKE3
from wakeline.ledger.records import LedgerRecord
from wakeline.ledger.store_memory import MemoryLedgerStore
from wakeline.processors.audit import decode_audit, record_size
from wakeline.processors.auditor import Auditor
from wakeline.processors.builder import LedgerBuilder
from wakeline.testkit.samples import frames, intent

LIMIT = 50_000


class Producer:
    """Records what is produced; can refuse records like librdkafka does."""

    def __init__(self, *, max_bytes: int | None = None, refuse_audit: bool = False) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, list]] = []
        self.max_bytes = max_bytes
        self.refuse_audit = refuse_audit
        self.on_delivery: Any = None
        self._failed: list[Any] = []

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None, **kw):  # type: ignore[no-untyped-def]
        headers = list(headers or [])
        if self.max_bytes is not None and record_size(key, value, headers) > self.max_bytes:
            raise RuntimeError("KafkaError{code=MSG_SIZE_TOO_LARGE}")
        if self.refuse_audit and topic.endswith("audit"):
            self._failed.append(on_delivery)
            return
        self.sent.append((topic, key, value, headers))

    def flush(self, timeout: float) -> int:
        failed, self._failed = self._failed, []
        for callback in failed:  # librdkafka's delivery report of a refused record
            callback(_Err(), None)
        return 0


class _Err:
    def name(self) -> str:
        return "MSG_SIZE_TOO_LARGE"

    def __str__(self) -> str:
        return "KafkaError{code=MSG_SIZE_TOO_LARGE}"


def audit(records: list[LedgerRecord], producer: Producer) -> tuple[Auditor, Any]:
    store = MemoryLedgerStore()
    b = LedgerBuilder(store, BLAKE3, max_leaves=100, max_age_s=1)
    b.assign([0])
    b.add(records)
    (seg,) = b.seal([0])
    auditor = Auditor(
        producer, events_topic="p.events", audit_topic="p.audit", dlq_topic="p.dlq",
        store=lambda: store, max_record_bytes=LIMIT,
    )  # fmt: skip
    assert auditor.audit_segment(seg.header, at_us=5_000_000) == len(records)
    return auditor, seg


def rec(offset: int, key: bytes | None, value: bytes | None, headers=()) -> LedgerRecord:
    return LedgerRecord(0, offset, 1, key, value, tuple(headers))


def test_a_header_that_disagrees_with_the_body_is_a_warning_of_the_audit_record() -> None:
    i = intent("wf-1", 0)
    key, value, headers = frames(i)
    forged = [(k, b"someone-else" if k == "ce_id" else v) for k, v in headers]
    missing = [(k, v) for k, v in headers if k != "ce_id"]
    p = Producer()
    audit(
        [rec(0, key, value, headers), rec(1, key, value, forged), rec(2, b"x", value, missing)], p
    )
    records = [decode_audit(v) for t, _, v, _ in p.sent if t == "p.audit"]
    assert records[0]["warnings"] == []
    assert records[1]["event_id"] == i["event_id"]  # the body, not the header
    assert any("ce_id header 'someone-else' disagrees" in w for w in records[1]["warnings"])
    assert "[warning:" in records[1]["summary"]
    assert "no ce_id header" in records[2]["warnings"]
    assert "the record key is not the body's workflow_id" in records[2]["warnings"]


def test_large_records_keep_their_audit_and_dlq_records_within_the_limit() -> None:
    i = intent("wf-1", 0)
    i["args"] = '{"blob":"' + "x" * 200_000 + '"}'
    key, value, headers = frames(i)
    junk = b"\xc3\x01" + b"\x00" * 300_000
    huge_headers = [("big", b"h" * 100_000), ("ce_id", b"\x00\xff")]
    p = Producer(max_bytes=LIMIT)
    auditor, seg = audit(
        [rec(0, key, value, headers), rec(1, b"k" * 80_000, junk, huge_headers)], p
    )
    topics = [t for t, *_ in p.sent]
    assert topics == ["p.audit", "p.dlq", "p.audit"]
    for _, k, v, h in p.sent:
        assert record_size(k, v, h) <= LIMIT
    first = decode_audit(p.sent[0][2])
    assert first["event"] is None and len(first["event_digest"]) == 32
    assert any("event bytes left out" in w for w in first["warnings"])
    dlq = dict(p.sent[1][3])
    assert p.sent[1][2] is None and dlq["wakeline_dlq_value_size"] == b"300002"
    assert dlq["wakeline_dlq_headers_dropped"] == b"2"
    assert p.sent[1][1].startswith(b"blake3:")
    assert decode_audit(p.sent[2][2])["leaf_hash"] == seg.leaf_hashes[1]


def test_an_audit_record_the_broker_refuses_is_dead_lettered_with_the_reason() -> None:
    i = intent("wf-1", 0)
    key, value, headers = frames(i)
    p = Producer(refuse_audit=True)
    auditor, seg = audit([rec(0, key, value, headers), rec(1, key, b"junk", headers)], p)
    dlq = [dict(h) for t, _, _, h in p.sent if t == "p.dlq"]
    reasons = sorted(d["wakeline_dlq_reason"].decode() for d in dlq)
    assert len(dlq) == 3  # the undecodable one, then both refused audit records
    assert sum("the broker refused the audit record" in r for r in reasons) == 2
    assert {d["wakeline_dlq_offset"] for d in dlq} == {b"0", b"1"}
    assert auditor.records_dead_lettered == 3


@pytest.mark.parametrize("limit_hit", ["produce-raises"])
def test_an_audit_record_refused_at_produce_time_is_dead_lettered(limit_hit: str) -> None:
    class Tight(Producer):
        def produce(self, topic, value=None, key=None, headers=None, **kw):  # type: ignore[no-untyped-def]
            if topic == "p.audit":
                raise RuntimeError("KafkaError{code=MSG_SIZE_TOO_LARGE}")
            super().produce(topic, value, key, headers, **kw)

    i = intent("wf-1", 0)
    key, value, headers = frames(i)
    p = Tight()
    audit([rec(0, key, value, headers)], p)
    ((topic, _, _, h),) = p.sent
    assert (
        topic == "p.dlq"
        and b"the broker refused the audit record" in dict(h)["wakeline_dlq_reason"]
    )
