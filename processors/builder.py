"""The ledger builder's core: records in, persisted segments out. No Kafka here.

Per assigned partition it keeps a `PartitionChain` rebuilt from the store (never from
memory), the next offset it expects, and the records waiting for their segment. A segment
is sealed when it is full or old enough, stored with `LedgerStore.append_segment` (entries,
header and frontier in one transaction), and only then handed back to the caller, which
publishes it and commits the consumer offsets.

A record below the stored tip is a re-delivery: it is compared with the stored leaf and
dropped, never appended twice. A different record at a stored offset means the topic is not
the one the ledger committed to; that stops the builder (`LedgerDivergence`).
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from wakeline.errors import LedgerError
from wakeline.ledger.errors import ChainConflict
from wakeline.ledger.hashing import HashSuite
from wakeline.ledger.records import LedgerRecord, leaf_bytes
from wakeline.ledger.segments import PartitionChain, SegmentHeader
from wakeline.ledger.store import Entry, LedgerStore, lookup_event_id, lookup_key

from .stream import FROM_BEGINNING  # an empty ledger starts at Kafka's OFFSET_BEGINNING

log = logging.getLogger(__name__)


class LedgerDivergence(LedgerError):
    """The topic holds a different record at an offset the ledger already committed."""


@dataclass(slots=True)
class Ingested:
    """One record with its leaf bytes. The builder never decodes values: the leaf commits to
    the raw bytes, and decoding (for audit records and the DLQ) is the auditor's work."""

    record: LedgerRecord
    leaf: bytes


def ingest(record: LedgerRecord) -> Ingested:
    return Ingested(record, leaf_bytes(record))


@dataclass(frozen=True)
class SealedSegment:
    header: SegmentHeader
    items: list[Ingested]
    leaf_hashes: list[bytes]
    persisted_at_us: int
    stored: bool  # False when the store already held this exact segment


@dataclass(frozen=True)
class Prepared:
    """A closed segment not yet stored."""

    header: SegmentHeader
    entries: list[Entry]
    frontier: list[bytes]
    items: list[Ingested]
    leaf_hashes: list[bytes]
    state: _Partition


@dataclass
class _Partition:
    chain: PartitionChain
    #: first offset not yet in the store (FROM_BEGINNING for an empty ledger)
    stored_next: int
    #: first offset not yet accepted (stored or pending)
    accepted_next: int
    pending: list[Ingested] = field(default_factory=list)
    pending_since: float = 0.0
    #: (first offsets, headers) of stored segments, loaded only to check re-deliveries
    index: tuple[list[int], list[SegmentHeader]] | None = None


class LedgerBuilder:
    """Turns each partition's records into sealed, persisted segments."""

    def __init__(
        self,
        store: LedgerStore,
        suite: HashSuite,
        *,
        max_leaves: int,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.suite = suite
        self.max_leaves = max_leaves
        self.max_age_s = max_age_s
        self.clock = clock
        self._parts: dict[int, _Partition] = {}
        self.skipped_duplicates = 0
        #: called before re-delivered records are checked against the store, so segments
        #: prepared but still being persisted elsewhere (the persister thread) are stored
        self.before_store_check: Callable[[], None] | None = None

    # ------------------------------------------------------------------ assignment

    def assign(self, partitions: Iterable[int]) -> dict[int, int]:
        """Load each partition's chain from the store; return the offset to seek to."""
        out = {}
        for p in partitions:
            state = self._load(p)
            self._parts[p] = state
            out[p] = state.stored_next
        return out

    def revoke(self, partitions: Iterable[int]) -> None:
        """Forget partitions; their pending records were never stored or committed."""
        for p in partitions:
            self._parts.pop(p, None)

    def assigned(self) -> list[int]:
        return sorted(self._parts)

    def next_offset(self, partition: int) -> int:
        return self._parts[partition].stored_next

    def _load(self, partition: int) -> _Partition:
        last = self.store.last_segment(partition)
        if last is None:
            chain = PartitionChain(self.suite, partition)
            return _Partition(chain, FROM_BEGINNING, FROM_BEGINNING)
        header, frontier = last
        if header.suite_code != self.suite.code:
            raise LedgerError(
                f"partition {partition} is ledgered with {header.suite.name}, "
                f"the builder is set to {self.suite.name}"
            )
        chain = PartitionChain.after(header, frontier)
        nxt = header.last_offset + 1
        log.info(
            "partition resumed partition=%d segment=%d tree_size=%d next_offset=%d",
            partition, header.segment_number, header.tree_size, nxt,
        )  # fmt: skip
        return _Partition(chain, nxt, nxt)

    # ------------------------------------------------------------------ records in

    def add(self, records: Iterable[LedgerRecord]) -> int:
        """Accept records (any partitions, each in offset order); returns how many were new.

        Records of partitions not assigned are ignored (a revocation raced the fetch).
        """
        added = 0
        now = self.clock()
        redelivered: dict[int, list[LedgerRecord]] = {}
        for r in records:
            state = self._parts.get(r.partition)
            if state is None:
                continue
            if state.accepted_next != FROM_BEGINNING and r.offset < state.accepted_next:
                redelivered.setdefault(r.partition, []).append(r)
                continue
            if not state.pending:
                state.pending_since = now
            state.pending.append(ingest(r))
            state.accepted_next = r.offset + 1
            added += 1
        for p, recs in redelivered.items():
            self._check_redelivered(p, recs)
        return added

    def _check_redelivered(self, partition: int, records: Sequence[LedgerRecord]) -> None:
        state = self._parts[partition]
        pending = {i.record.offset: i.leaf for i in state.pending}
        stored = [r for r in records if r.offset not in pending]
        for r in records:
            if r.offset in pending and leaf_bytes(r) != pending[r.offset]:
                raise LedgerDivergence(
                    f"partition {partition} offset {r.offset}: re-delivered record differs "
                    "from the one read before"
                )
        if stored:
            if self.before_store_check is not None:
                self.before_store_check()
            found = self._stored_leaf_hashes(partition, [r.offset for r in stored])
            for r in stored:
                want = found.get(r.offset)
                got = self.suite.leaf_hash(leaf_bytes(r))
                if want is None:
                    raise LedgerDivergence(
                        f"partition {partition} offset {r.offset} is below the stored tip "
                        f"{state.stored_next} but is not in the ledger"
                    )
                if want != got:
                    raise LedgerDivergence(
                        f"partition {partition} offset {r.offset}: leaf hash {got.hex()} "
                        f"differs from the stored {want.hex()}"
                    )
        self.skipped_duplicates += len(records)
        log.info(
            "re-delivered records skipped partition=%d count=%d first_offset=%d",
            partition, len(records), records[0].offset,
        )  # fmt: skip

    def _stored_leaf_hashes(self, partition: int, offsets: Sequence[int]) -> dict[int, bytes]:
        state = self._parts[partition]
        if state.index is None or state.index[1][-1].last_offset < max(offsets):
            headers = list(self.store.headers(partition))
            state.index = ([h.first_offset for h in headers], headers)
        firsts, headers = state.index
        out: dict[int, bytes] = {}
        wanted = set(offsets)
        seen: set[int] = set()
        for o in offsets:
            i = bisect_right(firsts, o) - 1
            if i < 0 or i in seen:
                continue
            seen.add(i)
            h = headers[i]
            for e in self.store.entries(
                partition, h.first_leaf_index, h.first_leaf_index + h.leaf_count
            ):
                if e.offset in wanted:
                    out[e.offset] = e.leaf_hash
        return out

    # ------------------------------------------------------------------ segments out

    def due(self, now: float | None = None) -> list[int]:
        """Partitions whose pending records should be sealed now."""
        now = self.clock() if now is None else now
        return [
            p
            for p, s in self._parts.items()
            if s.pending
            and (len(s.pending) >= self.max_leaves or now - s.pending_since >= self.max_age_s)
        ]

    def pending_count(self) -> int:
        return sum(len(s.pending) for s in self._parts.values())

    def prepare(self, partitions: Iterable[int] | None = None) -> list[Prepared]:
        """Close segments over the pending records of `partitions` (default: every due one)
        without storing them: the chains advance in memory and the caller must `persist`
        each result in order (or, on any failure, reload the partitions from the store)."""
        out: list[Prepared] = []
        for p in list(self.due() if partitions is None else partitions):
            state = self._parts.get(p)
            if state is None or not state.pending:
                continue
            pending, state.pending = state.pending, []
            for start in range(0, len(pending), self.max_leaves):
                out.append(self._prepare(state, pending[start : start + self.max_leaves]))
        return out

    def persist(self, prep: Prepared, store: LedgerStore | None = None) -> SealedSegment:
        """Store one prepared segment (entries, header, frontier: one transaction)."""
        h = prep.header
        stored = (store or self.store).append_segment(
            h, prep.entries, prep.frontier, hashed_by_caller=True
        )
        prep.state.stored_next = h.last_offset + 1
        return SealedSegment(h, prep.items, prep.leaf_hashes, time.time_ns() // 1000, stored)

    def seal(self, partitions: Iterable[int] | None = None) -> list[SealedSegment]:
        """Prepare and persist the pending records of `partitions` (default: every due one).

        A partition whose segment the store refuses (ChainConflict: another worker wrote it)
        is reloaded from the store; its pending records are dropped, and the caller must
        seek it to `next_offset(partition)`. Such partitions are in `self.reloaded`. On any
        other failure the partitions concerned are forgotten and must be assigned again.
        """
        self.reloaded: list[int] = []
        out: list[SealedSegment] = []
        preps = self.prepare(partitions)
        failed: set[int] = set()
        try:
            for prep in preps:
                p = prep.header.partition
                if p in failed:
                    continue
                try:
                    out.append(self.persist(prep))
                except ChainConflict as e:
                    log.warning("segment refused, reloading partition=%d reason=%s", p, e)
                    failed.add(p)
                    self._parts[p] = self._load(p)
                    self.reloaded.append(p)
        except BaseException:
            # chains may be ahead of the store now: rebuild them from the store later
            for prep in preps:
                self._parts.pop(prep.header.partition, None)
            raise
        return out

    def _prepare(self, state: _Partition, items: list[Ingested]) -> Prepared:
        chain = state.chain
        header, hashes = chain.seal([i.leaf for i in items])
        first = header.first_leaf_index
        # hashed here, from these leaves: the store need not parse and hash them again
        # (persist passes hashed_by_caller=True). Lookup keys come from the body and the
        # key bytes, never from headers.
        entries = [
            Entry(
                header.partition, first + n, i.record.offset, h, i.leaf,
                lookup_event_id(i.record.value), lookup_key(i.record.key),
            )
            for n, (i, h) in enumerate(zip(items, hashes, strict=True))
        ]  # fmt: skip
        return Prepared(header, entries, list(chain.tree.nodes), items, hashes, state)
