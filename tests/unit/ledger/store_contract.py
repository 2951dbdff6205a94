"""The LedgerStore contract: one abstract test class, subclassed once per backend.

`TestMemoryLedgerStore` (test_store_memory.py) and the PostgreSQL subclass in
tests/integration/test_ledger_postgres.py hold both backends to the same behaviour.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod

import pytest

from wakeline.ledger import BLAKE3, ChainConflict
from wakeline.ledger.checkpoints import generate_signer, parse_body, split_note
from wakeline.ledger.records import LedgerRecord
from wakeline.ledger.segments import PartitionChain
from wakeline.ledger.service import check_event_proof, event_proof, export_bundle, sign_checkpoint
from wakeline.ledger.sources import verify_bundle, verify_store
from wakeline.ledger.store import LedgerStore, make_entries

ORIGIN = "wakeline.test/contract"


def framed(event_id: str, rest: bytes) -> bytes:
    """A value shaped like an event frame whose body starts with `event_id` (an Avro string):
    the store indexes the id it reads from the body, never the ce_id header."""
    raw = event_id.encode()
    assert len(raw) < 64  # one-byte zig-zag length
    return b"\xc3\x01" + bytes(8) + bytes([len(raw) << 1]) + raw + rest


def record(p: int, offset: int, wf: str = "wf-1", event_id: str | None = None) -> LedgerRecord:
    eid = event_id or f"ev-{p}-{offset}"
    headers = (("ce_id", b"header-says-" + eid.encode()), ("ce_type", b"x"))
    return LedgerRecord(
        p, offset, 1_700_000_000_000 + offset, wf.encode(), framed(eid, b"v%d" % offset), headers
    )


def seal(store: LedgerStore, chain: PartitionChain, offsets: list[int], wf: str = "wf-1"):
    leaves = [record(chain.partition, o, wf).leaf_bytes() for o in offsets]
    header, hashes = chain.seal(leaves)
    entries = make_entries(header, leaves, hashes)
    return header, entries, list(chain.tree.nodes)


class LedgerStoreContract(ABC):
    @abstractmethod
    def make_store(self) -> LedgerStore: ...

    @pytest.fixture
    def store(self):
        s = self.make_store()
        yield s
        s.close()

    def test_empty_store(self, store: LedgerStore) -> None:
        assert store.partitions() == []
        assert store.last_segment(0) is None
        assert list(store.headers(0)) == []
        assert list(store.entries(0)) == []
        assert store.entry_by_event_id("nope") is None
        assert store.latest_checkpoint() is None
        assert list(store.checkpoints()) == []

    def test_segments_round_trip_in_order(self, store: LedgerStore) -> None:
        c0, c1 = PartitionChain(BLAKE3, 0), PartitionChain(BLAKE3, 1)
        h1, e1, f1 = seal(store, c0, [0, 1, 2])
        assert store.append_segment(h1, e1, f1) is True
        h2, e2, f2 = seal(store, c0, [5, 7])
        assert store.append_segment(h2, e2, f2) is True
        h3, e3, f3 = seal(store, c1, [0], wf="wf-2")
        assert store.append_segment(h3, e3, f3) is True
        assert store.partitions() == [0, 1]
        assert [h.to_bytes() for h in store.headers(0)] == [h1.to_bytes(), h2.to_bytes()]
        assert list(store.entries(0)) == e1 + e2
        assert list(store.entries(0, 1, 4)) == e1[1:] + e2[:1]
        last, frontier = store.last_segment(0)
        assert last.to_bytes() == h2.to_bytes() and frontier == f2
        assert store.leaf_hashes(0) == [e.leaf_hash for e in e1 + e2]
        assert store.entry_by_event_id("ev-0-5") == e2[0]
        assert store.entries_for_workflow("wf-2") == e3
        assert store.entries_for_workflow("wf-1") == e1 + e2

    def test_workflows_are_listed_newest_activity_first(self, store: LedgerStore) -> None:
        c0, c1 = PartitionChain(BLAKE3, 0), PartitionChain(BLAKE3, 1)
        store.append_segment(*seal(store, c0, [0, 1, 2], wf="wf-a"))
        store.append_segment(*seal(store, c1, [5], wf="wf-b"))
        store.append_segment(*seal(store, c0, [3], wf="wf-c"))
        got = [(w.workflow_id, w.entries, w.partitions, w.first_ms, w.last_ms)
               for w in store.workflows()]  # fmt: skip
        t = 1_700_000_000_000  # record(): the timestamp is t + offset
        assert got == [("wf-b", 1, (1,), t + 5, t + 5), ("wf-c", 1, (0,), t + 3, t + 3),
                       ("wf-a", 3, (0,), t, t + 2)]  # fmt: skip
        assert [w.workflow_id for w in store.workflows(2)] == ["wf-b", "wf-c"]

    def test_resume_continues_the_chain(self, store: LedgerStore) -> None:
        chain = PartitionChain(BLAKE3, 0)
        store.append_segment(*seal(store, chain, [0, 1, 2]))
        last, frontier = store.last_segment(0)
        resumed = PartitionChain.after(last, frontier)
        h, e, f = seal(store, resumed, [3, 4])
        twin = PartitionChain(BLAKE3, 0)
        seal(store, twin, [0, 1, 2])
        assert seal(store, twin, [3, 4])[0] == h  # same leaves, same header, bit for bit
        assert store.append_segment(h, e, f) is True

    def test_reprocessing_a_segment_is_recognised_not_appended_twice(self, store) -> None:
        chain = PartitionChain(BLAKE3, 0)
        seg = seal(store, chain, [0, 1])
        assert store.append_segment(*seg) is True
        assert store.append_segment(*seg) is False
        assert len(list(store.entries(0))) == 2

    def test_a_different_segment_at_a_taken_number_conflicts(self, store) -> None:
        store.append_segment(*seal(store, PartitionChain(BLAKE3, 0), [0, 1]))
        with pytest.raises(ChainConflict):
            store.append_segment(*seal(store, PartitionChain(BLAKE3, 0), [0, 2]))

    def test_segments_that_do_not_extend_the_chain_are_refused(self, store) -> None:
        chain = PartitionChain(BLAKE3, 0)
        store.append_segment(*seal(store, chain, [0, 1]))
        skipped = PartitionChain(BLAKE3, 0)
        seal(store, skipped, [0, 1])
        seal(store, skipped, [2])
        with pytest.raises(ChainConflict):  # segment 2 while 1 is missing
            store.append_segment(*seal(store, skipped, [3]))
        other = PartitionChain(BLAKE3, 0)
        seal(store, other, [0, 9])  # another history: prev hash will not match
        with pytest.raises(ChainConflict):
            store.append_segment(*seal(store, other, [10]))
        h, e, f = seal(store, chain, [2, 3])
        with pytest.raises(ChainConflict):  # fewer entries than the header says
            store.append_segment(h, e[:1], f)
        assert [x.segment_number for x in store.headers(0)] == [0]
        assert len(list(store.entries(0))) == 2

    def test_any_bytes_a_producer_sends_are_storable_and_found_by_the_body(self, store) -> None:
        """NUL bytes, invalid UTF-8, huge keys and headers, no key, no value: every record is
        stored (no byte sequence can fail the transaction); lookups use the body's event id
        and the exact key bytes; keys too long to index are kept in the leaf only."""
        chain = PartitionChain(BLAKE3, 4)
        hostile = [
            LedgerRecord(4, 0, 1, b"wf\x00nul", framed("ev\x00nul", b"x"), (("ce_id", b"\x00"),)),
            LedgerRecord(
                4, 1, 1, b"\xff\xfe bad utf-8", framed("ev-bad", b""), (("ce_id", b"\xff"),)
            ),
            LedgerRecord(4, 2, 1, None, None, ()),
            LedgerRecord(4, 3, 1, b"k" * 5000, framed("ev-long-key", b""), (("h", b"v" * 70_000),)),
            LedgerRecord(4, 4, 1, b"wf-x", b"\xc3\x01" + bytes(8) + b"\x7f", (("ce_id", b"liar"),)),
            LedgerRecord(4, 5, 1, b"wf-x", b"not a frame at all", (("ce_id", b"ev-forged"),)),
        ]
        leaves = [r.leaf_bytes() for r in hostile]
        header, hashes = chain.seal(leaves)
        assert store.append_segment(header, make_entries(header, leaves, hashes), chain.tree.nodes)
        stored = list(store.entries(4))
        assert [e.leaf for e in stored] == leaves
        assert [e.event_id for e in stored] == [
            "ev\x00nul",
            "ev-bad",
            None,
            "ev-long-key",
            None,
            None,
        ]
        assert stored[0].key == b"wf\x00nul" and stored[3].key is None  # 5000 bytes: not indexed
        assert store.entry_by_event_id("ev\x00nul").offset == 0
        assert store.entry_by_event_id("ev-forged") is None  # a header is not the body
        assert store.entry_by_event_id("liar") is None
        assert [e.offset for e in store.entries_for_workflow("wf\x00nul")] == [0]
        assert [e.offset for e in store.entries_for_workflow("wf-x")] == [4, 5]

    def test_checkpoints_chain_and_are_idempotent(self, store) -> None:
        signer = generate_signer(ORIGIN)
        store.append_segment(*seal(store, PartitionChain(BLAKE3, 0), [0, 1]))
        n0 = sign_checkpoint(store, [signer], origin=ORIGIN, force=True, now_ms=1)
        n1 = sign_checkpoint(store, [signer], origin=ORIGIN, force=True, now_ms=2)
        assert list(store.checkpoints()) == [n0, n1]
        assert store.latest_checkpoint() == n1
        assert store.add_checkpoint(n1) is False
        cp1 = parse_body(split_note(n1)[0])
        assert cp1.seq == 1 and cp1.prev == parse_body(split_note(n0)[0]).hash()
        with pytest.raises(ChainConflict):
            store.add_checkpoint(n0.replace(b"time 1", b"time 9"))

    def test_what_a_store_holds_verifies_exports_and_proves(self, store) -> None:
        signer = generate_signer(ORIGIN)
        chain = PartitionChain(BLAKE3, 3)
        for offsets in ([0, 1, 2], [3], [4, 6, 8, 9]):
            store.append_segment(*seal(store, chain, offsets))
            sign_checkpoint(store, [signer], origin=ORIGIN, force=True, now_ms=offsets[0])
        vkey = signer.verifier.vkey()
        report = verify_store(store, trusted_keys=[vkey], decode=False)
        assert report.ok, [f.describe() for f in report.findings]
        out = io.BytesIO()
        counts = export_bundle(store, out, public_keys=[vkey], schemas=[])
        assert counts == {"segments": 3, "entries": 8, "checkpoints": 3}
        assert verify_bundle(io.BytesIO(out.getvalue()), trusted_keys=[vkey], decode=False).ok
        doc = event_proof(store, "ev-3-1")
        assert doc["leaf_index"] == 1 and doc["tree_size"] == 8
        check_event_proof(doc, [vkey])
