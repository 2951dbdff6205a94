"""The builder core against the in-memory store: sealing, resuming, re-deliveries."""

from __future__ import annotations

import pytest

from wakeline.ledger.errors import ChainConflict
from wakeline.ledger.hashing import BLAKE3
from wakeline.ledger.merkle import root_of
from wakeline.ledger.records import LedgerRecord, leaf_bytes
from wakeline.ledger.store_memory import MemoryLedgerStore
from wakeline.processors.builder import FROM_BEGINNING, LedgerBuilder, LedgerDivergence
from wakeline.testkit.samples import frames, traffic


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


EVENTS = [frames(e) for e in traffic(64, workflows=4)]


def records(partition: int, offsets: range, *, garbage: set[int] = frozenset()) -> list:
    """The same records for the same offsets, every call (as a topic would hold them)."""
    out = []
    for off in offsets:
        key, value, headers = EVENTS[off]
        if off in garbage:
            value = b"\xc3\x01" + b"\x00" * 8 if off % 2 else b"plain garbage"
        stamp = 1_700_000_000_000 + off
        out.append(LedgerRecord(partition, off, stamp, key, value, tuple(headers)))
    return out


def builder(store: MemoryLedgerStore, clock: Clock | None = None, **kw) -> LedgerBuilder:
    return LedgerBuilder(
        store, BLAKE3, max_leaves=kw.get("max_leaves", 100), max_age_s=kw.get("max_age", 1.0),
        clock=clock or Clock(),
    )  # fmt: skip


def stored_leaves(store: MemoryLedgerStore, partition: int) -> list[bytes]:
    return [e.leaf for e in store.entries(partition)]


def test_new_partition_starts_from_the_beginning_and_seals_by_size() -> None:
    store = MemoryLedgerStore()
    b = builder(store, max_leaves=10)
    assert b.assign([0]) == {0: FROM_BEGINNING}
    recs = records(0, range(25))
    assert b.add(recs) == 25
    sealed = b.seal()
    # 25 pending and max 10 a segment: 10 + 10 + 5
    assert [s.header.leaf_count for s in sealed] == [10, 10, 5]
    assert stored_leaves(store, 0) == [leaf_bytes(r) for r in recs]
    last = sealed[-1].header
    assert last.tree_size == 25
    assert last.tree_root == root_of(BLAKE3, [BLAKE3.leaf_hash(leaf_bytes(r)) for r in recs])
    assert b.next_offset(0) == 25


def test_segment_closes_by_age_not_before() -> None:
    clock = Clock()
    store = MemoryLedgerStore()
    b = builder(store, clock, max_leaves=1000, max_age=0.5)
    b.assign([1])
    b.add(records(1, range(3)))
    clock.now += 0.4
    assert b.seal() == []
    clock.now += 0.1
    sealed = b.seal()
    assert [s.header.leaf_count for s in sealed] == [3]


def test_resume_comes_from_the_store_not_memory() -> None:
    store = MemoryLedgerStore()
    first = builder(store, max_leaves=7)
    first.assign([2])
    first.add(records(2, range(20)))
    first.seal([2])
    first.add(records(2, range(20, 23)))  # pending, never persisted: lost with the process

    second = builder(store, max_leaves=7)
    assert second.assign([2]) == {2: 20}
    second.add(records(2, range(20, 30)))
    second.seal([2])
    all_recs = records(2, range(30))
    assert stored_leaves(store, 2) == [leaf_bytes(r) for r in all_recs]
    headers = list(store.headers(2))
    assert [h.segment_number for h in headers] == list(range(len(headers)))
    assert headers[-1].tree_size == 30


def test_redelivered_records_are_checked_and_skipped_not_appended() -> None:
    store = MemoryLedgerStore()
    b = builder(store)
    b.assign([0])
    recs = records(0, range(12))
    b.add(recs[:8])
    b.seal([0])
    # the broker hands back 5..11 (a seek that raced, a rebalance): 5..7 are stored
    assert b.add(recs[5:]) == 4
    b.add(recs[9:])  # and 9..11 again while they are still pending
    b.seal([0])
    assert stored_leaves(store, 0) == [leaf_bytes(r) for r in recs]
    assert b.skipped_duplicates == 6


def test_a_different_record_at_a_stored_offset_stops_the_builder() -> None:
    store = MemoryLedgerStore()
    b = builder(store)
    b.assign([0])
    recs = records(0, range(5))
    b.add(recs)
    b.seal([0])
    forged = LedgerRecord(0, 3, recs[3].timestamp, recs[3].key, b"forged", recs[3].headers)
    with pytest.raises(LedgerDivergence, match="offset 3"):
        b.add([forged])


def test_undecodable_records_are_ledgered_byte_for_byte_and_flagged_by_the_auditor() -> None:
    from wakeline.processors.auditor import decode_record

    store = MemoryLedgerStore()
    b = builder(store)
    b.assign([0])
    recs = records(0, range(6), garbage={2, 3})
    b.add(recs)
    b.seal([0])
    assert stored_leaves(store, 0) == [leaf_bytes(r) for r in recs]
    errors = [decode_record(e.record())[1] for e in store.entries(0)]
    assert [e is not None for e in errors] == [False, False, True, True, False, False]
    assert errors[2].startswith("MalformedFrame")
    assert errors[3].startswith("UnknownFingerprint")


def test_a_refused_segment_reloads_the_partition_from_the_store() -> None:
    store = MemoryLedgerStore()
    mine, theirs = builder(store), builder(store)
    mine.assign([0])
    theirs.assign([0])
    recs = records(0, range(10))
    theirs.add(recs[:6])
    theirs.seal([0])  # the other worker got there first
    mine.add(recs[:4])
    assert mine.seal([0]) == []
    assert mine.reloaded == [0]
    assert mine.next_offset(0) == 6
    mine.add(recs[6:])
    mine.seal([0])
    assert stored_leaves(store, 0) == [leaf_bytes(r) for r in recs]


def test_store_failure_forgets_the_partition_so_it_is_reloaded() -> None:
    class Failing(MemoryLedgerStore):
        fail = True

        def append_segment(self, header, entries, frontier, **kw):  # type: ignore[no-untyped-def]
            if self.fail:
                raise ChainConflict.__mro__[1]("database went away")  # LedgerError
            return super().append_segment(header, entries, frontier, **kw)

    store = Failing()
    b = builder(store)
    b.assign([0])
    recs = records(0, range(4))
    b.add(recs)
    with pytest.raises(Exception, match="database went away"):
        b.seal([0])
    assert b.assigned() == []
    store.fail = False
    assert b.assign([0]) == {0: FROM_BEGINNING}
    b.add(recs)
    b.seal([0])
    assert stored_leaves(store, 0) == [leaf_bytes(r) for r in recs]


def test_records_of_unassigned_partitions_are_ignored() -> None:
    store = MemoryLedgerStore()
    b = builder(store)
    b.assign([0])
    assert b.add(records(1, range(3))) == 0
    assert b.pending_count() == 0


def test_entries_hashed_by_the_builder_skip_the_rehash_and_others_do_not() -> None:
    from dataclasses import replace as _replace

    from wakeline.ledger.store import check_append

    b = builder(MemoryLedgerStore(), max_leaves=10)
    b.assign([0])
    b.add(records(0, range(5)))
    (prep,) = b.prepare([0])
    assert [e.leaf_hash for e in prep.entries] == [BLAKE3.leaf_hash(e.leaf) for e in prep.entries]
    assert [e.offset for e in prep.entries] == list(range(5))
    check_append(prep.header, prep.entries, None, hashed_by_caller=True)
    # the same entries from elsewhere (the default) are re-hashed, and a wrong hash refused
    forged = list(prep.entries)
    forged[2] = _replace(forged[2], leaf_hash=b"\x00" * 32)
    with pytest.raises(ChainConflict, match="hash or offset"):
        check_append(prep.header, forged, None)
    check_append(prep.header, forged, None, hashed_by_caller=True)  # the builder's own word
    # positions are checked either way
    moved = list(prep.entries)
    moved[1] = _replace(moved[1], leaf_index=7)
    with pytest.raises(ChainConflict, match="entry 1"):
        check_append(prep.header, moved, None, hashed_by_caller=True)
