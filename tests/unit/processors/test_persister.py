"""The persister thread: order, publication bookkeeping, and what a failure leaves behind."""

from __future__ import annotations

from wakeline.errors import StoreError
from wakeline.ledger.hashing import BLAKE3
from wakeline.ledger.records import LedgerRecord
from wakeline.ledger.segments import SegmentHeader
from wakeline.ledger.store_memory import MemoryLedgerStore
from wakeline.processors.builder import LedgerBuilder
from wakeline.processors.persister import Persister
from wakeline.processors.publisher import HeaderPublisher


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def produce(self, topic, value=None, key=None, partition=None, headers=None):  # type: ignore[no-untyped-def]
        self.sent.append((topic, key, value, partition))

    def flush(self, timeout: float) -> int:
        return 0


class FakeLog:
    def __init__(self) -> None:
        self.marked: list[tuple[int, int]] = []

    def mark(self, headers) -> None:  # type: ignore[no-untyped-def]
        self.marked += [(h.partition, h.segment_number) for h in headers]

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


def make(store: MemoryLedgerStore):  # type: ignore[no-untyped-def]
    builder = LedgerBuilder(store, BLAKE3, max_leaves=5, max_age_s=10)
    producer, log, commits = FakeProducer(), FakeLog(), []
    persister = Persister(
        builder, lambda: store, HeaderPublisher(producer, "p.ledger"), log, commits.append
    )  # type: ignore[arg-type]
    return builder, persister, producer, log, commits


def test_segments_are_stored_published_marked_and_committed_in_order() -> None:
    store = MemoryLedgerStore()
    builder, persister, producer, log, commits = make(store)
    builder.assign([0, 1])
    builder.add(recs(0, 0, 12) + recs(1, 0, 3))
    persister.submit(builder.prepare([0, 1]))
    persister.close()
    assert persister.failure is None
    assert [h.leaf_count for h in store.headers(0)] == [5, 5, 2]
    published = [(p, SegmentHeader.from_bytes(v).segment_number) for _, _, v, p in producer.sent]
    assert published == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert log.marked == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert {p: o for c in commits for p, o in c.items()} == {0: 12, 1: 3}
    assert persister.records_stored == 15


def test_a_failure_stops_storing_until_reset_and_the_store_holds_a_prefix() -> None:
    store = FlakyStore()
    store.fail_at = 1
    builder, persister, producer, log, _ = make(store)
    builder.assign([0])
    builder.add(recs(0, 0, 20))
    persister.submit(builder.prepare([0]))
    persister.drain()
    assert isinstance(persister.failure, StoreError)
    assert [h.segment_number for h in store.headers(0)] == [0]  # nothing after the failure
    assert log.marked == [] and producer.sent == []  # the batch failed before publishing
    # the consumer thread's recovery: reset, reload from the store, carry on from there
    store.fail_at = None
    persister.reset()
    builder.revoke([0])
    assert builder.assign([0]) == {0: 5}
    builder.add(recs(0, 5, 15))
    persister.submit(builder.prepare([0]))
    persister.close()
    assert persister.failure is None
    assert [e.offset for e in store.entries(0)] == list(range(20))
