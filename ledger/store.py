"""The LedgerStore interface: what the ledger builder writes and verifiers and CLI read.

Backends are sibling modules (`store_memory`, `store_postgres`) held to one contract test.
Every backend runs the same admission checks (`check_append`, `check_checkpoint`) so no
store ever holds a segment that does not extend its partition's chain.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .checkpoints import Checkpoint, parse_body, split_note
from .errors import ChainConflict
from .records import LedgerRecord, body_event_id, leaf_position, parse_leaf
from .segments import GENESIS, SegmentHeader

#: lookup keys longer than this many bytes are not indexed (the leaf still holds them)
MAX_LOOKUP_KEY = 1024


@dataclass(frozen=True, slots=True)
class Entry:
    """One leaf as stored: its position, hash, exact bytes, and lookup keys.

    `event_id` is read from the record's body (`body_event_id`), never from a header, and
    `key` is the record's Kafka key byte for byte; either is None when absent or longer
    than `MAX_LOOKUP_KEY` bytes.
    """

    partition: int
    leaf_index: int
    offset: int
    leaf_hash: bytes
    leaf: bytes
    event_id: str | None = None
    key: bytes | None = None

    @classmethod
    def of(cls, leaf_index: int, leaf: bytes, leaf_hash: bytes) -> Entry:
        r = parse_leaf(leaf)
        return cls(
            r.partition, leaf_index, r.offset, leaf_hash, leaf,
            lookup_event_id(r.value), lookup_key(r.key),
        )  # fmt: skip

    @property
    def workflow_id(self) -> str | None:
        """The key as text (undecodable bytes replaced), for display."""
        return self.key.decode("utf-8", "replace") if self.key is not None else None

    def record(self) -> LedgerRecord:
        return parse_leaf(self.leaf)


@dataclass(frozen=True, slots=True)
class WorkflowActivity:
    """One record key (workflow id) of the ledger: how many entries, where, and when its
    first and newest entries were written (the broker's timestamps, ms since the epoch)."""

    key: bytes
    entries: int
    partitions: tuple[int, ...]
    first_ms: int
    last_ms: int

    @property
    def workflow_id(self) -> str:
        return self.key.decode("utf-8", "replace")


def lookup_event_id(value: bytes | None) -> str | None:
    """The body's event id when it can be indexed (see `body_event_id`), else None."""
    found = body_event_id(value)
    if found is None or len(found.encode("utf-8")) > MAX_LOOKUP_KEY:
        return None
    return found


def lookup_key(key: bytes | None) -> bytes | None:
    return key if key is not None and len(key) <= MAX_LOOKUP_KEY else None


def make_entries(
    header: SegmentHeader, leaves: Sequence[bytes], hashes: Sequence[bytes]
) -> list[Entry]:
    return [
        Entry.of(header.first_leaf_index + i, leaf, h)
        for i, (leaf, h) in enumerate(zip(leaves, hashes, strict=True))
    ]


class LedgerStore(ABC):
    """Append-only storage of segments (header + entries + frontier) and checkpoints."""

    # ------------------------------------------------------------------ writes

    @abstractmethod
    def append_segment(
        self,
        header: SegmentHeader,
        entries: Sequence[Entry],
        frontier: Sequence[bytes],
        *,
        hashed_by_caller: bool = False,
    ) -> bool:
        """Store a segment atomically. True if stored, False if this exact segment is
        already there (idempotent re-processing); ChainConflict if it does not extend the
        partition's chain or contradicts what is stored. `hashed_by_caller`: see
        `check_append` (only the ledger builder sets it)."""

    @abstractmethod
    def add_checkpoint(self, note: bytes) -> bool:
        """Store a signed checkpoint note; False if already stored, ChainConflict if its
        seq/prev does not follow the latest one."""

    # ------------------------------------------------------------------ reads

    @abstractmethod
    def partitions(self) -> list[int]: ...

    @abstractmethod
    def last_segment(self, partition: int) -> tuple[SegmentHeader, list[bytes]] | None:
        """The newest header of `partition` and the tree frontier after it."""

    @abstractmethod
    def headers(self, partition: int) -> Iterator[SegmentHeader]:
        """Every header of `partition`, by segment number."""

    @abstractmethod
    def entries(self, partition: int, start: int = 0, stop: int | None = None) -> Iterator[Entry]:
        """Entries of `partition` with start <= leaf index < stop, in leaf order."""

    @abstractmethod
    def entry_by_event_id(self, event_id: str) -> Entry | None: ...

    @abstractmethod
    def entries_for_workflow(self, workflow_id: str) -> list[Entry]:
        """Every entry keyed by `workflow_id`, in (partition, leaf index) order."""

    @abstractmethod
    def checkpoints(self) -> Iterator[bytes]:
        """Every checkpoint note, oldest first."""

    @abstractmethod
    def latest_checkpoint(self) -> bytes | None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the memory store has none."""

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers

    def leaf_hashes(self, partition: int, stop: int | None = None) -> list[bytes]:
        return [e.leaf_hash for e in self.entries(partition, 0, stop)]

    def workflows(self, limit: int | None = None) -> list[WorkflowActivity]:
        """Every indexed record key, newest activity first (the newest entry's timestamp,
        then the key). Reads every entry; the PostgreSQL store groups in SQL instead."""
        found: dict[bytes, list[int]] = {}
        parts: dict[bytes, set[int]] = {}
        for p in self.partitions():
            for e in self.entries(p):
                if e.key is None:
                    continue
                ts = leaf_position(e.leaf)[2]
                seen = found.setdefault(e.key, [0, ts, ts])
                seen[0] += 1
                seen[1], seen[2] = min(seen[1], ts), max(seen[2], ts)
                parts.setdefault(e.key, set()).add(p)
        out = [
            WorkflowActivity(k, n, tuple(sorted(parts[k])), first, last)
            for k, (n, first, last) in found.items()
        ]
        out.sort(key=lambda w: (-w.last_ms, w.key))
        return out if limit is None else out[:limit]


def check_append(
    header: SegmentHeader,
    entries: Sequence[Entry],
    last: SegmentHeader | None,
    *,
    hashed_by_caller: bool = False,
) -> None:
    """Refuse a segment that does not extend `last` (the partition's newest header).

    Every entry's leaf is parsed and re-hashed, unless `hashed_by_caller`: only the ledger
    builder passes it, for entries it built itself from the leaves in this process (the hash
    is `suite.leaf_hash(leaf)` and the offset the record's, both computed over those very
    bytes by `PartitionChain.seal`). Positions and the chain are checked either way."""
    p = header.partition
    where = f"partition {p} segment {header.segment_number}"
    if len(entries) != header.leaf_count:
        raise ChainConflict(f"{where}: {len(entries)} entries, header says {header.leaf_count}")
    suite = header.suite
    rehash = not hashed_by_caller
    for i, e in enumerate(entries):
        if e.partition != p or e.leaf_index != header.first_leaf_index + i:
            raise ChainConflict(
                f"{where}: entry {i} is partition {e.partition} leaf {e.leaf_index}, want "
                f"partition {p} leaf {header.first_leaf_index + i}"
            )
        if rehash and (
            leaf_position(e.leaf)[1] != e.offset or suite.leaf_hash(e.leaf) != e.leaf_hash
        ):
            raise ChainConflict(f"{where}: entry {e.leaf_index} hash or offset does not match")
    if header.tree_size != header.first_leaf_index + header.leaf_count:
        raise ChainConflict(f"{where}: tree size {header.tree_size} != first leaf + count")
    if last is None:
        if (
            header.segment_number != 0
            or header.first_leaf_index != 0
            or header.prev_hash != GENESIS
        ):
            raise ChainConflict(f"{where}: the first segment must be number 0 at leaf 0")
        return
    if header.suite_code != last.suite_code:
        raise ChainConflict(f"{where}: suite {header.suite.name}, chain uses {last.suite.name}")
    if header.segment_number != last.segment_number + 1:
        raise ChainConflict(f"{where}: want segment {last.segment_number + 1}")
    if header.first_leaf_index != last.tree_size:
        raise ChainConflict(
            f"{where}: starts at leaf {header.first_leaf_index}, want {last.tree_size}"
        )
    if header.prev_hash != last.hash():
        raise ChainConflict(f"{where}: previous hash does not name segment {last.segment_number}")
    if header.first_offset <= last.last_offset:
        raise ChainConflict(f"{where}: first offset {header.first_offset} <= {last.last_offset}")


def check_checkpoint(note: bytes, latest: bytes | None) -> Checkpoint:
    """Refuse a checkpoint whose seq/prev do not follow `latest` (the newest stored note)."""
    body, _ = split_note(note)
    cp = parse_body(body)
    if latest is None:
        if cp.seq != 0 or cp.prev is not None:
            raise ChainConflict(f"first checkpoint must be seq 0 with no prev, got seq {cp.seq}")
        return cp
    prev = parse_body(split_note(latest)[0])
    if cp.seq != prev.seq + 1 or cp.prev != prev.hash():
        raise ChainConflict(f"checkpoint seq {cp.seq} does not follow seq {prev.seq}")
    for head in prev.heads:
        new = cp.head(head.partition)
        if new is None or new.tree_size < head.tree_size:
            raise ChainConflict(f"checkpoint seq {cp.seq} shrinks partition {head.partition}")
    return cp
