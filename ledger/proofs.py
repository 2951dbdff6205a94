"""Inclusion and consistency proofs: generation (RFC 6962 §2.1.1-2) and verification
(RFC 9162 §2.1.3.2 and §2.1.4.2).

Verification is pure: it takes the suite explicitly, computes a root, then compares it,
raising `RootMismatch(expected, calculated)` or a `ProofError` saying got/want.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import ProofError, RootMismatch
from .hashing import HASH_SIZE, HashSuite
from .merkle import perfect_levels, root_from_levels

# ---------------------------------------------------------------------------- generation


class _Subtrees:
    """Roots of arbitrary leaf ranges, from precomputed perfect levels."""

    def __init__(self, suite: HashSuite, leaf_hashes: Sequence[bytes]) -> None:
        self.suite = suite
        self.levels = perfect_levels(suite, leaf_hashes)

    def root(self, lo: int, hi: int) -> bytes:
        """Root of the RFC 6962 tree over leaves [lo, hi); lo is a multiple of a power of two
        at least as large as the tree's left subtree, which holds for every recursion below."""
        n = hi - lo
        if n == 0:
            return self.suite.empty_root()
        if n & (n - 1) == 0 and lo % n == 0:
            return self.levels[n.bit_length() - 1][lo // n]
        k = 1 << ((n - 1).bit_length() - 1)
        return self.suite.node_hash(self.root(lo, lo + k), self.root(lo + k, hi))


def inclusion_proof(
    suite: HashSuite, leaf_hashes: Sequence[bytes], index: int, size: int
) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 6962 §2.1.1."""
    if not 0 <= index < size <= len(leaf_hashes):
        raise ProofError(f"no inclusion proof for index {index} in tree of size {size}")
    sub = _Subtrees(suite, leaf_hashes[:size])
    proof: list[bytes] = []

    def path(m: int, lo: int, hi: int) -> None:
        n = hi - lo
        if n <= 1:
            return
        k = 1 << ((n - 1).bit_length() - 1)
        if m < k:
            path(m, lo, lo + k)
            proof.append(sub.root(lo + k, hi))
        else:
            path(m - k, lo + k, hi)
            proof.append(sub.root(lo, lo + k))

    path(index, 0, size)
    return proof


def consistency_proof(
    suite: HashSuite, leaf_hashes: Sequence[bytes], size1: int, size2: int
) -> list[bytes]:
    """PROOF(size1, D[0:size2]) of RFC 6962 §2.1.2."""
    if not 0 < size1 <= size2 <= len(leaf_hashes):
        raise ProofError(f"no consistency proof from size {size1} to size {size2}")
    sub = _Subtrees(suite, leaf_hashes[:size2])
    proof: list[bytes] = []

    def subproof(m: int, lo: int, hi: int, complete: bool) -> None:
        n = hi - lo
        if m == n:
            if not complete:
                proof.append(sub.root(lo, hi))
            return
        k = 1 << ((n - 1).bit_length() - 1)
        if m <= k:
            subproof(m, lo, lo + k, complete)
            proof.append(sub.root(lo + k, hi))
        else:
            subproof(m - k, lo + k, hi, False)
            proof.append(sub.root(lo, lo + k))

    if size1 < size2:
        subproof(size1, 0, size2, True)
    return proof


def root_at(suite: HashSuite, leaf_hashes: Sequence[bytes], size: int) -> bytes:
    return root_from_levels(suite, perfect_levels(suite, leaf_hashes[:size]), size)


# -------------------------------------------------------------------------- verification


def _steps(fn: int, sn: int) -> int:
    """How many proof hashes RFC 9162's verification loop consumes from (fn, sn)."""
    count = 0
    while sn:
        if not fn & 1 and fn == sn:
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        fn >>= 1
        sn >>= 1
        count += 1
    return count


def _inclusion_length(index: int, size: int) -> int:
    return _steps(index, size - 1)


def root_from_inclusion_proof(
    suite: HashSuite, index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """The root implied by an inclusion proof (RFC 9162 §2.1.3.2), without comparing it."""
    if size <= 0 or not 0 <= index < size:
        raise ProofError(f"index {index} is beyond tree size {size}")
    if len(leaf_hash) != HASH_SIZE:
        raise ProofError(f"leaf hash has {len(leaf_hash)} bytes, want {HASH_SIZE}")
    want = _inclusion_length(index, size)
    if len(proof) != want:
        raise ProofError(f"inclusion proof has {len(proof)} hashes, want {want}")
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = suite.node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = suite.node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    return r


def verify_inclusion(
    suite: HashSuite, index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that `leaf_hash` is leaf `index` of the tree of `size` leaves with `root`."""
    calculated = root_from_inclusion_proof(suite, index, size, leaf_hash, proof)
    if calculated != root:
        raise RootMismatch(root, calculated)


def _consistency_length(size1: int, size2: int) -> int:
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    seed = 0 if size1 & (size1 - 1) == 0 else 1  # the seed hash comes from the proof
    return seed + _steps(fn, sn)


def verify_consistency(
    suite: HashSuite, size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree (size1, root1) is a prefix of the tree (size2, root2).

    A proof from the empty tree proves nothing and is refused, as is size2 < size1.
    """
    if size1 < 0 or size2 < size1:
        raise ProofError(f"size2 ({size2}) < size1 ({size1})")
    if size1 == 0:
        raise ProofError("consistency with the empty tree proves nothing")
    if size1 == size2:
        if proof:
            raise ProofError(f"consistency proof has {len(proof)} hashes, want 0 (equal sizes)")
        if root1 != root2:
            raise RootMismatch(root2, root1)
        return
    want = _consistency_length(size1, size2)
    if len(proof) != want:
        raise ProofError(f"consistency proof has {len(proof)} hashes, want {want}")
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = suite.node_hash(c, fr)
            sr = suite.node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = suite.node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != root1:
        raise RootMismatch(root1, fr, "old root")
    if sr != root2:
        raise RootMismatch(root2, sr, "new root")
