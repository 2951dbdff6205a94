"""Segment headers and their hash chain (docs/ledger-format.md §Segment header).

A segment is a contiguous run of one partition's leaves. Its header is a fixed 166-byte
record, all integers big-endian:

    u8   version (= 1)          u8  suite code (1 sha256, 2 blake3)
    u32  partition              u64 segment number (0, 1, 2, ...)
    u64  first leaf index       u64 leaf count (>= 1)
    u64  first offset           u64 last offset
    i64  min timestamp (ms)     i64 max timestamp (ms)
    [32] segment root: RFC 6962 root of the segment's own leaves
    u64  tree size after it     [32] tree root after it (the partition's whole tree)
    [32] previous header hash (32 zero bytes for segment 0)

Header hash = H(SEGMENT_PREFIX || header bytes). Each header's previous-hash names the one
before it, so the headers of a partition form a chain that commits to every leaf.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import FormatError
from .hashing import HASH_SIZE, SEGMENT_PREFIX, SUITES_BY_CODE, HashSuite
from .merkle import MerkleTree, perfect_levels, root_from_levels
from .records import LEAF_VERSION

_HEAD = struct.Struct(">BI")  # leaf version, partition
_OFFSET = struct.Struct(">Q")
_STAMP = struct.Struct(">q")

HEADER_VERSION = 1
GENESIS = b"\x00" * HASH_SIZE

_HEADER = struct.Struct(">BBIQQQQQqq32sQ32s32s")
HEADER_SIZE = _HEADER.size  # 166

#: byte ranges of each field inside the header, for reports and tamper tests
FIELD_OFFSETS: dict[str, tuple[int, int]] = {}
_pos = 0
for _name, _fmt in zip(
    (
        "version", "suite", "partition", "segment_number", "first_leaf_index", "leaf_count",
        "first_offset", "last_offset", "min_timestamp", "max_timestamp", "segment_root",
        "tree_size", "tree_root", "prev_hash",
    ),
    ("B", "B", "I", "Q", "Q", "Q", "Q", "Q", "q", "q", "32s", "Q", "32s", "32s"),
    strict=True,
):  # fmt: skip
    _size = struct.calcsize(">" + _fmt)
    FIELD_OFFSETS[_name] = (_pos, _pos + _size)
    _pos += _size


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    suite_code: int
    partition: int
    segment_number: int
    first_leaf_index: int
    leaf_count: int
    first_offset: int
    last_offset: int
    min_timestamp: int
    max_timestamp: int
    segment_root: bytes
    tree_size: int
    tree_root: bytes
    prev_hash: bytes
    version: int = HEADER_VERSION

    @property
    def suite(self) -> HashSuite:
        try:
            return SUITES_BY_CODE[self.suite_code]
        except KeyError:
            raise FormatError(f"unknown suite code {self.suite_code}") from None

    def to_bytes(self) -> bytes:
        return _HEADER.pack(
            self.version,
            self.suite_code,
            self.partition,
            self.segment_number,
            self.first_leaf_index,
            self.leaf_count,
            self.first_offset,
            self.last_offset,
            self.min_timestamp,
            self.max_timestamp,
            self.segment_root,
            self.tree_size,
            self.tree_root,
            self.prev_hash,
        )

    def hash(self) -> bytes:
        return header_hash(self.suite, self.to_bytes())

    @classmethod
    def from_bytes(cls, raw: bytes) -> SegmentHeader:
        if len(raw) != HEADER_SIZE:
            raise FormatError(f"segment header has {len(raw)} bytes, want {HEADER_SIZE}")
        f = _HEADER.unpack(raw)
        if f[0] != HEADER_VERSION:
            raise FormatError(f"segment header version is {f[0]}, want {HEADER_VERSION}")
        if f[1] not in SUITES_BY_CODE:
            raise FormatError(f"segment header names unknown suite code {f[1]}")
        return cls(*f[1:], version=f[0])


def header_hash(suite: HashSuite, raw: bytes) -> bytes:
    return suite.prefixed(SEGMENT_PREFIX, raw)


def seal_segment(
    tree: MerkleTree,
    partition: int,
    segment_number: int,
    prev_hash: bytes,
    leaves: Sequence[bytes],
    leaf_hashes: Sequence[bytes] | None = None,
) -> tuple[SegmentHeader, list[bytes]]:
    """Append `leaves` (leaf bytes, in offset order) to `tree` and return their header.

    This is what the ledger builder does for each batch; `tree` is advanced in place.
    Returns the header and the leaf hashes.
    """
    if not leaves:
        raise ValueError("a segment holds at least one leaf")
    suite = tree.suite
    if leaf_hashes is None:
        leaf_hashes = suite.leaf_hashes(leaves)
    # every leaf must start with version 1 and this partition; offsets must increase
    head = _HEAD.pack(LEAF_VERSION, partition)
    if {x[:5] for x in leaves} != {head}:
        raise ValueError(f"a leaf is not a version {LEAF_VERSION} leaf of partition {partition}")
    try:
        offsets = [_OFFSET.unpack_from(x, 5)[0] for x in leaves]
        stamps = [_STAMP.unpack_from(x, 13)[0] for x in leaves]
    except struct.error:
        raise FormatError("a leaf is shorter than its fixed fields") from None
    if sorted(offsets) != offsets or len(set(offsets)) != len(offsets):
        raise ValueError(f"offsets of partition {partition} do not strictly increase")
    levels = perfect_levels(suite, leaf_hashes)
    first = tree.size
    tree.extend(leaf_hashes, levels)
    header = SegmentHeader(
        suite_code=suite.code,
        partition=partition,
        segment_number=segment_number,
        first_leaf_index=first,
        leaf_count=len(leaves),
        first_offset=offsets[0],
        last_offset=offsets[-1],
        min_timestamp=min(stamps),
        max_timestamp=max(stamps),
        segment_root=root_from_levels(suite, levels, len(leaf_hashes)),
        tree_size=tree.size,
        tree_root=tree.root(),
        prev_hash=prev_hash,
    )
    return header, list(leaf_hashes)


class PartitionChain:
    """The growing ledger of one partition: its tree frontier and the chain's tip.

    The ledger builder keeps one per assigned partition and calls `seal` per batch;
    `resume` rebuilds it from what a store holds, never from memory (docs/architecture.md,
    Processing guarantees).
    """

    def __init__(
        self,
        suite: HashSuite,
        partition: int,
        tree: MerkleTree | None = None,
        next_number: int = 0,
        prev_hash: bytes = GENESIS,
    ) -> None:
        self.suite = suite
        self.partition = partition
        self.tree = tree if tree is not None else MerkleTree(suite)
        self.next_number = next_number
        self.prev_hash = prev_hash

    def seal(
        self, leaves: Sequence[bytes], leaf_hashes: Sequence[bytes] | None = None
    ) -> tuple[SegmentHeader, list[bytes]]:
        """Close a segment over `leaves`; returns its header and the leaf hashes."""
        header, hashes = seal_segment(
            self.tree, self.partition, self.next_number, self.prev_hash, leaves, leaf_hashes
        )
        self.next_number += 1
        self.prev_hash = header.hash()
        return header, hashes

    @classmethod
    def after(cls, header: SegmentHeader, frontier: Sequence[bytes]) -> PartitionChain:
        """The chain whose last sealed segment is `header`, with the tree's frontier then."""
        tree = MerkleTree(header.suite, header.tree_size, frontier)
        if tree.root() != header.tree_root:
            raise FormatError(
                f"frontier of partition {header.partition} does not give the root of "
                f"segment {header.segment_number}"
            )
        return cls(header.suite, header.partition, tree, header.segment_number + 1, header.hash())
