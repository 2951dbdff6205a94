"""The worked examples of docs/ledger-format.md §10, so the document cannot drift."""

from __future__ import annotations

from pathlib import Path

from wakeline.ledger import BLAKE3, SHA256, root_of
from wakeline.ledger.records import LedgerRecord, parse_leaf
from wakeline.ledger.segments import HEADER_SIZE, PartitionChain, SegmentHeader

DOC = Path(__file__).resolve().parents[3] / "docs" / "ledger-format.md"

LEAF = (
    "0100000003000000000000002a0000018bcfe5687b0000000477662d3100000007c30168656c6c6f"
    "000000020000000563655f69640000000465762d310000000763655f74797065ffffffff"
)


def test_leaf_bytes_and_hashes() -> None:
    r = LedgerRecord(3, 42, 1700000000123, b"wf-1", b"\xc3\x01hello",
                     (("ce_id", b"ev-1"), ("ce_type", None)))  # fmt: skip
    assert r.leaf_bytes().hex() == LEAF
    assert parse_leaf(bytes.fromhex(LEAF)) == r
    assert SHA256.leaf_hash(r.leaf_bytes()).hex().startswith("382b9c9e")
    assert BLAKE3.leaf_hash(r.leaf_bytes()).hex().startswith("58f3cb9c")
    assert BLAKE3.empty_root().hex().startswith("af1349b9")


def test_five_leaf_tree_and_second_segment() -> None:
    leaves = [LedgerRecord(0, i, 1700000000000 + i, b"k", bytes([i]), ()).leaf_bytes()
              for i in range(5)]  # fmt: skip
    want = {
        SHA256: ("c67d7d70", "a645fcc8cf87563ba4a381c2c9e328bcdc5a42048cd3419225a26c4c6cf724f0"),
        BLAKE3: ("63a6dfd5", "4470674b4601f81e2cedbadb1228226e103784cdc5c32924ef98524c894ff2d5"),
    }
    for suite, (root, header_hash) in want.items():
        assert root_of(suite, [suite.leaf_hash(x) for x in leaves]).hex().startswith(root)
        chain = PartitionChain(suite, 0)
        chain.seal(leaves[:3])
        h, _ = chain.seal(leaves[3:])
        assert len(h.to_bytes()) == HEADER_SIZE == 166
        assert SegmentHeader.from_bytes(h.to_bytes()) == h
        assert h.hash().hex() == header_hash


def test_the_document_states_these_values() -> None:
    text = DOC.read_text()
    for value in ("382b9c9e3736801f", "a645fcc8cf87563b", "4470674b4601f81e", "exit code"):
        assert value in text
