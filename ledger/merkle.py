"""RFC 6962-shaped Merkle trees: an O(log n) append-only frontier and bottom-up roots.

The tree of n leaves splits at the largest power of two below n; equivalently its root folds
the perfect subtrees of n's binary decomposition from right to left. That second view is what
makes both the frontier (one node per set bit of n) and level-wise root computation work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .hashing import NODE_PREFIX, HashSuite


def perfect_levels(suite: HashSuite, leaf_hashes: Sequence[bytes]) -> list[list[bytes]]:
    """levels[h][j] = root of the perfect subtree of leaves [j*2^h, (j+1)*2^h).

    Only complete subtrees are kept; a trailing odd node is not promoted.
    """
    new = suite.new
    prefix = NODE_PREFIX
    join = b"".join
    levels = [list(leaf_hashes)]
    cur = levels[0]
    while len(cur) > 1:
        it = iter(cur)
        cur = [new(join((prefix, a, b))).digest() for a, b in zip(it, it, strict=False)]  # type: ignore[attr-defined]
        levels.append(cur)
    return levels


def aligned_levels(
    suite: HashSuite, leaf_hashes: Sequence[bytes], first: int
) -> tuple[list[list[bytes]], list[int]]:
    """Perfect subtrees of leaves [first, first + k) aligned to *global* positions:
    levels[h][i] is the node over leaves [(starts[h] + i) * 2^h, (starts[h] + i + 1) * 2^h)."""
    new = suite.new
    prefix = NODE_PREFIX
    join = b"".join
    levels = [list(leaf_hashes)]
    starts = [first]
    cur, start = levels[0], first
    while True:
        skip = start & 1  # a node whose left sibling lies before the batch
        it = iter(cur[skip:])
        cur = [new(join((prefix, x, y))).digest() for x, y in zip(it, it, strict=False)]  # type: ignore[attr-defined]
        start = (start + skip) >> 1
        if not cur:
            return levels, starts
        levels.append(cur)
        starts.append(start)


def root_from_levels(suite: HashSuite, levels: list[list[bytes]], size: int) -> bytes:
    """Root of the first `size` leaves, from `perfect_levels` of at least that many leaves."""
    if size == 0:
        return suite.empty_root()
    acc: bytes | None = None
    # perfect subtrees of size's binary decomposition, left to right
    parts: list[bytes] = []
    start = 0
    for h in range(size.bit_length() - 1, -1, -1):
        if size >> h & 1:
            parts.append(levels[h][start >> h])
            start += 1 << h
    for node in reversed(parts):
        acc = node if acc is None else suite.node_hash(node, acc)
    assert acc is not None
    return acc


def root_of(suite: HashSuite, leaf_hashes: Sequence[bytes]) -> bytes:
    """RFC 6962 Merkle tree hash of the given leaf hashes."""
    return root_from_levels(suite, perfect_levels(suite, leaf_hashes), len(leaf_hashes))


def reference_root(suite: HashSuite, leaf_hashes: Sequence[bytes]) -> bytes:
    """The recursive RFC 6962 §2.1 definition, kept for tests; O(n log n)."""
    n = len(leaf_hashes)
    if n == 0:
        return suite.empty_root()
    if n == 1:
        return leaf_hashes[0]
    k = 1 << ((n - 1).bit_length() - 1)
    return suite.node_hash(
        reference_root(suite, leaf_hashes[:k]), reference_root(suite, leaf_hashes[k:])
    )


class MerkleTree:
    """Append-only tree state as its frontier: one perfect-subtree root per set bit of size.

    `nodes` are ordered from the largest (leftmost) subtree to the smallest.
    """

    __slots__ = ("suite", "size", "nodes")

    def __init__(self, suite: HashSuite, size: int = 0, nodes: Iterable[bytes] = ()) -> None:
        self.suite = suite
        self.size = size
        self.nodes = list(nodes)
        if len(self.nodes) != bin(size).count("1"):
            raise ValueError(f"frontier has {len(self.nodes)} nodes, want {bin(size).count('1')}")

    def copy(self) -> MerkleTree:
        return MerkleTree(self.suite, self.size, self.nodes)

    def append(self, leaf: bytes) -> bytes:
        """Append raw leaf bytes; return their leaf hash."""
        h = self.suite.leaf_hashes((leaf,))[0]
        self.append_hash(h)
        return h

    def append_hash(self, h: bytes) -> None:
        self.append_subtree(h, 0)

    def append_subtree(self, h: bytes, height: int) -> None:
        """Append a perfect subtree of 2^height leaves; size must be a multiple of 2^height."""
        if self.size & ((1 << height) - 1):
            raise ValueError(f"size {self.size} is not aligned to a subtree of height {height}")
        nodes = self.nodes
        new = self.suite.new
        n = self.size >> height
        while n & 1:
            h = new(b"".join((NODE_PREFIX, nodes.pop(), h))).digest()  # type: ignore[attr-defined]
            n >>= 1
        nodes.append(h)
        self.size += 1 << height

    def extend(self, leaf_hashes: Sequence[bytes], levels: list[list[bytes]] | None = None) -> None:
        """Append many leaf hashes at once, reusing `perfect_levels` of them when given.

        The range [a, b) is appended as its compact range of globally aligned perfect
        subtrees. When a is aligned to the batch's largest perfect subtree, the batch's own
        levels are those subtrees; otherwise levels aligned to global positions are built
        (about one node hash per leaf).
        """
        k = len(leaf_hashes)
        if k == 0:
            return
        a = self.size
        if levels is None or a & ((1 << (len(levels) - 1)) - 1):
            levels, starts = aligned_levels(self.suite, leaf_hashes, a)
        else:
            starts = [a >> h for h in range(len(levels))]
        b = a + k
        s = a
        while s < b:
            h = (s & -s).bit_length() - 1 if s else (b - s).bit_length() - 1
            while s + (1 << h) > b:
                h -= 1
            self.append_subtree(levels[h][(s >> h) - starts[h]], h)
            s += 1 << h

    def root(self) -> bytes:
        if not self.nodes:
            return self.suite.empty_root()
        acc = self.nodes[-1]
        for node in reversed(self.nodes[:-1]):
            acc = self.suite.node_hash(node, acc)
        return acc
