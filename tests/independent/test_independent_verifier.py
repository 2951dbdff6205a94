"""The project's bundles, proofs and roots agree with an independent verifier (verifier.py),
written from docs/ledger-format.md and RFC 6962/9162 only. wakeline is used here only to
PRODUCE the inputs."""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import pytest

from tests.unit.ledger.ledgerkit import ORIGIN, build_ledger, frames, record_of, workflow_events
from wakeline.ledger import BLAKE3, SHA256
from wakeline.ledger.segments import PartitionChain
from wakeline.ledger.service import (
    ProofError,
    check_event_proof,
    checkpoint_consistency,
    event_proof,
    sign_checkpoint,
)
from wakeline.ledger.store import make_entries

from . import bundle as B
from . import verifier as V

SUITES = [pytest.param(BLAKE3, id="blake3"), pytest.param(SHA256, id="sha256")]


def _ledger(suite):
    events = workflow_events(6)
    led = build_ledger(events, suite=suite, segment_size=3, checkpoint_every=1, seed=7)
    return events, led


def _entry_frames(raw: bytes, kind: int):
    return [f for f in frames(raw) if f.kind == kind]


@pytest.mark.parametrize("suite", SUITES)
def test_independent_verifier_agrees_with_the_project(suite) -> None:
    _, led = _ledger(suite)
    raw = led.bundle()
    res = B.verify_bundle(raw, [led.vkey])
    assert res.ok, res.problem
    assert B.verify_bundle(raw).ok  # with the keys the bundle carries
    # the project's own numbers equal ours, segment by segment
    segs = [V.parse_header(f.payload) for f in _entry_frames(raw, V.SEGMENT)]
    assert len(segs) == len(res.header_hashes) > 2
    for f in _entry_frames(raw, V.SEGMENT):
        h = V.parse_header(f.payload)
        key = (h["partition"], h["number"])
        assert h["segment_root"] == res.segment_roots[key]
        assert h["tree_root"] == res.tree_roots[key]
    for p in {h["partition"] for h in segs}:
        theirs = [h.hash() for h in led.store.headers(p)]
        assert [res.header_hashes[(p, n)] for n in range(len(theirs))] == theirs
    assert res.checkpoints == len(list(led.store.checkpoints()))


@pytest.mark.parametrize("suite", SUITES)
def test_event_and_consistency_proofs_agree(suite) -> None:
    events, led = _ledger(suite)
    for ev in events[::3]:
        doc = json.loads(json.dumps(event_proof(led.store, ev["event_id"])))
        assert V.check_event_proof(doc, [led.vkey]).ok
        bad = dict(doc, leaf_index=doc["leaf_index"] ^ 1)
        assert not V.check_event_proof(bad, [led.vkey]).ok
        # fields the project's --check leaves unchecked; an independent check compares them
        for field, value in (
            ("offset", doc["offset"] + 1),
            ("tree_size", doc["tree_size"] + 1),
            ("partition", doc["partition"] ^ 1),
            ("leaf_hash", doc["root"]),
        ):
            assert not V.check_event_proof(dict(doc, **{field: value}), [led.vkey]).ok
        other = dict(doc, event_id=events[0]["event_id"] if ev is not events[0] else "x")
        assert not V.check_event_proof(other, [led.vkey]).ok
    notes = list(led.store.checkpoints())
    for old in (notes[0], notes[1], notes[len(notes) // 2], notes[-1]):
        doc = json.loads(json.dumps(checkpoint_consistency(led.store, old)))
        assert V.check_consistency_doc(doc, [led.vkey]).ok
    doc = json.loads(json.dumps(checkpoint_consistency(led.store, notes[1])))
    target = next(p for p in doc["partitions"] if len(p["proof"]) > 1)
    target["proof"][0], target["proof"][-1] = target["proof"][-1], target["proof"][0]
    assert not V.check_consistency_doc(doc, [led.vkey]).ok


@pytest.mark.parametrize("suite", SUITES)
def test_a_foreign_key_is_refused(suite) -> None:
    from wakeline.ledger.checkpoints import generate_signer

    _, led = _ledger(suite)
    stranger = generate_signer("wakeline.test/ledger").verifier.vkey()
    res = B.verify_bundle(led.bundle(), [stranger])
    assert not res.ok and "trusted signature" in res.problem


def _flip(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :]


@pytest.mark.parametrize("suite", SUITES)
def test_flipped_bytes_are_rejected(suite) -> None:
    _, led = _ledger(suite)
    raw = led.bundle()
    entries = _entry_frames(raw, V.ENTRY)
    headers = _entry_frames(raw, V.SEGMENT)
    notes = _entry_frames(raw, V.CHECKPOINT)
    # a byte of the leaf bytes (after the 32-byte stored hash) of a middle entry
    e = entries[len(entries) // 2]
    res = B.verify_bundle(_flip(raw, e.start + 5 + 32 + 10), [led.vkey])
    assert not res.ok and "leaf hash" in res.problem
    # every field of a header
    h = headers[len(headers) // 2]
    for off in (0, 1, 5, 13, 21, 29, 37, 45, 53, 61, 70, 100, 110, 140):
        res = B.verify_bundle(_flip(raw, h.start + 5 + off), [led.vkey])
        assert not res.ok, off
    # a body byte and a signature byte of a checkpoint
    n = notes[len(notes) // 2]
    assert not B.verify_bundle(_flip(raw, n.start + 5 + 40), [led.vkey]).ok
    assert not B.verify_bundle(_flip(raw, n.end - 10), [led.vkey]).ok
    # the trailer
    assert not B.verify_bundle(raw[:-1] + bytes([raw[-1] ^ 1]), [led.vkey]).ok
    assert not B.verify_bundle(raw[:-3], [led.vkey]).ok


def test_the_worked_examples_of_the_document() -> None:
    leaf = bytes.fromhex(
        "0100000003000000000000002a0000018bcfe5687b0000000477662d3100000007c30168656c6c6f"
        "000000020000000563655f69640000000465762d310000000763655f74797065ffffffff"
    )
    rec = V.parse_leaf(leaf)
    assert rec["headers"] == [("ce_id", b"ev-1"), ("ce_type", None)]
    assert V.leaf_hash("sha256", leaf).hex().startswith("382b9c9e3736801f")
    assert V.leaf_hash("blake3", leaf).hex().startswith("58f3cb9c02e0f2c0")
    assert V.mth("blake3", []).hex().startswith("af1349b9f5f9a1a6")
    leaves = [
        bytes([1]) + struct.pack(">IQq", 0, i, 1700000000000 + i)
        + struct.pack(">i", 1) + b"k" + struct.pack(">i", 1) + bytes([i]) + bytes(4)
        for i in range(5)
    ]  # fmt: skip
    for suite, root, hh in (
        ("sha256", "c67d7d70", "a645fcc8cf87563ba4a381c2c9e328bcdc5a42048cd3419225a26c4c6cf724f0"),
        ("blake3", "63a6dfd5", "4470674b4601f81e2cedbadb1228226e103784cdc5c32924ef98524c894ff2d5"),
    ):
        lh = [V.leaf_hash(suite, x) for x in leaves]
        assert V.mth(suite, lh).hex().startswith(root)
        h0 = (
            struct.pack(">BBIQQQQQqq", 1, V.SUITES[suite], 0, 0, 0, 3, 0, 2,
                        1700000000000, 1700000000002)
            + V.mth(suite, lh[:3]) + struct.pack(">Q", 3) + V.mth(suite, lh[:3]) + bytes(32)
        )  # fmt: skip
        h1 = (
            struct.pack(">BBIQQQQQqq", 1, V.SUITES[suite], 0, 1, 3, 2, 3, 4,
                        1700000000003, 1700000000004)
            + V.mth(suite, lh[3:]) + struct.pack(">Q", 5) + V.mth(suite, lh)
            + V.H(suite, b"\x02" + h0)
        )  # fmt: skip
        assert V.H(suite, b"\x02" + h1).hex() == hh


def test_a_proof_names_the_event_by_its_body_never_by_a_lying_header() -> None:
    """An event produced with a forged ce_id is proven under the id its body carries: the
    store indexes the body, and both checkers compare the body."""
    events = workflow_events(1)
    led = build_ledger(events, suite=BLAKE3, segment_size=3, checkpoint_every=1, seed=3)
    victim = events[0]
    p = max(led.records) + 1
    rec = record_of(dict(events[1], event_id="ev-body-truth"), p, 0)
    lying = tuple((k, victim["event_id"].encode() if k == "ce_id" else v) for k, v in rec.headers)
    leaf = replace(rec, headers=lying).leaf_bytes()
    chain = PartitionChain(BLAKE3, p)
    header, hashes = chain.seal([leaf])
    led.store.append_segment(header, make_entries(header, [leaf], hashes), chain.tree.nodes)
    sign_checkpoint(led.store, [led.signer], origin=ORIGIN, force=True, now_ms=1)

    doc = json.loads(json.dumps(event_proof(led.store, "ev-body-truth")))
    assert doc["partition"] == p
    check_event_proof(doc, [led.vkey])  # raises unless it checks
    assert V.check_event_proof(doc, [led.vkey]).ok
    # the victim's id still proves the victim, never the record whose header claims it
    assert event_proof(led.store, victim["event_id"])["partition"] != p
    forged = dict(doc, event_id=victim["event_id"])
    assert not V.check_event_proof(forged, [led.vkey]).ok
    with pytest.raises(ProofError):
        check_event_proof(forged, [led.vkey])
