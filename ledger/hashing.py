"""Hash suites and the one-byte domain prefixes (docs/ledger-format.md).

A suite is a 32-byte hash function plus the RFC 6962 hashing rules built on it:
leaf = H(LEAF_PREFIX || data), node = H(NODE_PREFIX || left || right), empty tree = H("").
`SHA256` is exactly RFC 6962; `BLAKE3` (the default) uses the same shape and prefixes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import blake3 as _blake3

from wakeline.errors import LedgerError

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
SEGMENT_PREFIX = b"\x02"
CHECKPOINT_PREFIX = b"\x03"

HASH_SIZE = 32


@dataclass(frozen=True)
class HashSuite:
    """A named hash function with the tree-hashing rules of RFC 6962."""

    name: str
    #: one-byte identifier written into segment headers
    code: int
    #: constructor returning an object with `.digest()` (hashlib / blake3 style)
    new: Callable[[bytes], object] = field(repr=False, compare=False)
    #: update() returns the hasher (blake3), so a prefix needs no concatenated copy
    chained_update: bool = field(default=False, repr=False, compare=False)

    def hash(self, data: bytes) -> bytes:
        return self.new(data).digest()  # type: ignore[attr-defined]

    def leaf_hash(self, leaf: bytes) -> bytes:
        return self.new(LEAF_PREFIX + leaf).digest()  # type: ignore[attr-defined]

    def leaf_hashes(self, leaves: Iterable[bytes]) -> list[bytes]:
        """Leaf hashes of many leaves; the hot path of sealing and verifying."""
        new, prefix = self.new, LEAF_PREFIX
        if self.chained_update:
            return [new(prefix).update(x).digest() for x in leaves]  # type: ignore[attr-defined]
        return [new(prefix + x).digest() for x in leaves]  # type: ignore[attr-defined]

    def node_hash(self, left: bytes, right: bytes) -> bytes:
        return self.new(b"".join((NODE_PREFIX, left, right))).digest()  # type: ignore[attr-defined]

    def empty_root(self) -> bytes:
        return self.new(b"").digest()  # type: ignore[attr-defined]

    def prefixed(self, prefix: bytes, data: bytes) -> bytes:
        """H(prefix || data), for segment headers and checkpoints."""
        return self.new(prefix + data).digest()  # type: ignore[attr-defined]


SHA256 = HashSuite("sha256", 1, hashlib.sha256)
BLAKE3 = HashSuite("blake3", 2, _blake3.blake3, chained_update=True)
DEFAULT_SUITE = BLAKE3

SUITES: dict[str, HashSuite] = {s.name: s for s in (SHA256, BLAKE3)}
SUITES_BY_CODE: dict[int, HashSuite] = {s.code: s for s in (SHA256, BLAKE3)}


def suite_named(name: str) -> HashSuite:
    try:
        return SUITES[name]
    except KeyError:
        raise LedgerError(f"unknown hash suite {name!r}, want one of {sorted(SUITES)}") from None
