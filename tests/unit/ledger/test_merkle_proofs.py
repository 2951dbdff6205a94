"""The tree and proofs against the recursive RFC 6962 definition, for both suites."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wakeline.ledger import (
    BLAKE3,
    SHA256,
    MerkleTree,
    ProofError,
    RootMismatch,
    consistency_proof,
    inclusion_proof,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from wakeline.ledger.merkle import reference_root

SUITES = [BLAKE3, SHA256]


def leaves(suite, n: int) -> list[bytes]:
    return [suite.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def test_sha256_suite_is_rfc6962() -> None:
    assert SHA256.empty_root() == hashlib.sha256(b"").digest()
    assert SHA256.leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    left, right = b"L" * 32, b"R" * 32
    assert SHA256.node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()


def test_known_rfc6962_root_of_empty_leaf() -> None:
    # the single-entry vector: root of one empty leaf
    assert SHA256.leaf_hash(b"").hex().startswith("6e340b9c")


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_frontier_root_matches_definition_at_every_size(suite) -> None:
    hs = leaves(suite, 70)
    tree = MerkleTree(suite)
    assert tree.root() == suite.empty_root()
    for n, h in enumerate(hs, 1):
        tree.append_hash(h)
        assert tree.size == n
        assert tree.root() == reference_root(suite, hs[:n]) == root_of(suite, hs[:n])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=8))
def test_extend_in_batches_equals_one_by_one(batches: list[int]) -> None:
    suite = BLAKE3
    hs = leaves(suite, sum(batches))
    tree = MerkleTree(suite)
    pos = 0
    for k in batches:
        tree.extend(hs[pos : pos + k])
        pos += k
        assert tree.root() == reference_root(suite, hs[:pos])


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_every_inclusion_proof_verifies_and_a_wrong_one_does_not(suite) -> None:
    hs = leaves(suite, 21)
    for size in range(1, 22):
        root = root_of(suite, hs[:size])
        for i in range(size):
            proof = inclusion_proof(suite, hs, i, size)
            verify_inclusion(suite, i, size, hs[i], proof, root)
            with pytest.raises(ProofError):
                verify_inclusion(suite, i, size, hs[(i + 1) % 21], proof, root)


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_every_consistency_proof_verifies_and_a_swapped_one_does_not(suite) -> None:
    hs = leaves(suite, 19)
    for size2 in range(1, 20):
        root2 = root_of(suite, hs[:size2])
        for size1 in range(1, size2 + 1):
            root1 = root_of(suite, hs[:size1])
            proof = consistency_proof(suite, hs, size1, size2)
            verify_consistency(suite, size1, size2, proof, root1, root2)
            if size1 < size2:
                with pytest.raises(ProofError):
                    verify_consistency(suite, size1, size2, proof, root2, root1)


def test_errors_say_got_and_want() -> None:
    hs = leaves(SHA256, 8)
    proof = inclusion_proof(SHA256, hs, 3, 8)
    with pytest.raises(ProofError, match="has 2 hashes, want 3"):
        verify_inclusion(SHA256, 3, 8, hs[3], proof[:2], root_of(SHA256, hs))
    with pytest.raises(RootMismatch) as info:
        verify_inclusion(SHA256, 3, 8, hs[3], proof, b"\x00" * 32)
    assert info.value.expected == b"\x00" * 32
    assert info.value.calculated == root_of(SHA256, hs)
