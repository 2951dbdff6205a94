"""The processor runner's contract, through the in-memory runner: the ledger builder as a
processor (order, publication bookkeeping, what a failure leaves behind, republishing), and
the audit publisher replacing refused records with DLQ records."""

from __future__ import annotations

import pytest

from wakeline.errors import StoreError
from wakeline.ledger.records import LedgerRecord
from wakeline.ledger.segments import SegmentHeader
from wakeline.ledger.store_memory import MemoryLedgerStore
from wakeline.processors.auditor import Auditor, AuditProcessor
from wakeline.processors.service import LedgerProcessor
from wakeline.processors.settings import BuilderSettings
from wakeline.processors.stream import FROM_BEGINNING, MemoryRunner, PublishError
from wakeline.testkit.samples import frames, intent, result


class FakeLog:
    def __init__(self) -> None:
        self.marked: list[tuple[int, int]] = []
        self.published: dict[int, int] = {}

    def mark(self, headers) -> None:  # type: ignore[no-untyped-def]
        self.marked += [(h.partition, h.segment_number) for h in headers]
        for h in headers:
            self.published[h.partition] = max(self.published.get(h.partition, -1), h.segment_number)

    def last_published(self, partition: int) -> int:
        return self.published.get(partition, -1)

    def close(self) -> None:
        pass


class FlakyStore(MemoryLedgerStore):
    fail_at: int | None = None

    def append_segment(self, header, entries, frontier, **kw):  # type: ignore[no-untyped-def]
        if header.segment_number == self.fail_at:
            raise StoreError("connection lost")
        return super().append_segment(header, entries, frontier, **kw)


def recs(partition: int, start: int, count: int) -> list[LedgerRecord]:
    return [LedgerRecord(partition, o, o, b"k", b"v%d" % o) for o in range(start, start + count)]


def ledger(store: MemoryLedgerStore, log: FakeLog | None = None) -> LedgerProcessor:
    settings = BuilderSettings(segment_max_leaves=5, segment_max_age_s=10)
    log = log or FakeLog()
    return LedgerProcessor(settings, lambda: store, lambda: log, "p.ledger")  # type: ignore[arg-type,return-value]


def published(outputs) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    return [(o.partition, SegmentHeader.from_bytes(o.value).segment_number) for o in outputs]


def test_segments_are_stored_published_marked_and_committed_in_order() -> None:
    store, log = MemoryLedgerStore(), FakeLog()
    proc = ledger(store, log)
    run = MemoryRunner(proc, [0, 1])
    assert run.starts == {0: FROM_BEGINNING, 1: FROM_BEGINNING}
    run.feed(recs(0, 0, 12) + recs(1, 0, 3))  # two full segments of partition 0 are due
    out = run.drain()  # and the rest, as on revoke or stop
    assert [h.leaf_count for h in store.headers(0)] == [5, 5, 2]
    assert sorted(published(run.outputs)) == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert out and all(o.topic == "p.ledger" for o in run.outputs)
    assert sorted(log.marked) == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert run.committed == {0: 12, 1: 3}
    assert proc.records_stored == 15


def test_a_failure_leaves_a_prefix_and_a_restore_carries_on_from_the_store() -> None:
    store, log = FlakyStore(), FakeLog()
    store.fail_at = 1
    proc = ledger(store, log)
    run = MemoryRunner(proc, [0])
    with pytest.raises(StoreError):
        run.feed(recs(0, 0, 20))
    assert [h.segment_number for h in store.headers(0)] == [0]  # nothing after the failure
    assert log.marked == [] and run.outputs == []  # the batch failed before publishing
    # what KafkaRunner does next: reset, revoke, assign again (reload), seek there
    store.fail_at = None
    proc.reset()
    proc.revoke([0])
    again = MemoryRunner(proc, [0])
    assert again.starts == {0: 5}
    # segment 0 was stored but never published: it is republished first
    assert published(again.outputs) == [(0, 0)] and log.marked == [(0, 0)]
    again.feed(recs(0, 5, 15))
    again.drain()
    assert [e.offset for e in store.entries(0)] == list(range(20))
    assert published(again.outputs)[1:] == [(0, 1), (0, 2), (0, 3)]


def test_a_refused_header_is_redone_never_skipped() -> None:
    store = MemoryLedgerStore()
    proc = ledger(store)
    run = MemoryRunner(proc, [0], refuse=lambda o: "MSG_SIZE_TOO_LARGE")
    with pytest.raises(PublishError, match="segment headers refused"):
        run.feed(recs(0, 0, 5))
    assert run.committed == {}


def test_the_audit_publisher_dead_letters_what_the_broker_refuses() -> None:
    store = MemoryLedgerStore()
    run = MemoryRunner(ledger(store), [0])
    i = intent("wf-1", 0)
    recs_ = []
    for n, e in enumerate([i, result(i)]):
        key, value, headers = frames(e)
        recs_.append(LedgerRecord(0, n, n, key, value, tuple(headers)))
    run.feed(recs_)
    (header_out,) = run.drain()
    auditor = Auditor(None, events_topic="p.events", audit_topic="p.audit", dlq_topic="p.dlq")
    audit = MemoryRunner(
        AuditProcessor(auditor, lambda: store),
        [0],
        refuse=lambda o: "MSG_SIZE_TOO_LARGE" if o.topic == "p.audit" else None,
    )
    ledger_record = LedgerRecord(0, 7, 1000, header_out.key, header_out.value)
    out = audit.feed([ledger_record])
    assert [o.topic for o in out] == ["p.dlq", "p.dlq"]
    reasons = [dict(o.headers)["wakeline_dlq_reason"] for o in out]
    assert all(b"the broker refused the audit record" in r for r in reasons)
    assert audit.committed == {0: 8}
    # the same header again (a republish): nothing is audited twice by this process
    assert audit.feed([ledger_record]) == []
    # not a header at all: skipped with an error in the log, and the position moves on
    assert audit.feed([LedgerRecord(0, 8, 1, b"0", b"junk")]) == []
    assert audit.committed == {0: 9}
