"""Pairing: intents answered, results with their intent, seals counting their run."""

from __future__ import annotations

import io

from wakeline.ledger.records import LedgerRecord
from wakeline.ledger.sources import verify_bundle, verify_store

from .ledgerkit import build_ledger, workflow_events


def verify(events, **kw):
    led = build_ledger(events, **kw)
    return verify_bundle(io.BytesIO(led.bundle()), trusted_keys=[led.vkey])


def test_an_aborted_result_is_an_explicit_abort() -> None:
    events = workflow_events(2)
    events[1]["status"] = "aborted"
    assert verify(events).verdict == "sound"


def test_an_intent_without_result_is_incomplete_and_named() -> None:
    events = workflow_events(3, seal=False)
    intent = events[2]
    del events[3]  # its result
    r = verify(events)
    assert (r.verdict, r.first.check) == ("incomplete", "pairing.unanswered_intent")
    assert r.first.event_id == intent["event_id"]
    assert r.first.partition is not None and r.first.leaf_index is not None
    assert r.exit_code == 11


def test_a_result_without_its_intent_is_tampered() -> None:
    events = workflow_events(3, seal=False)
    result = events[5]
    del events[4]  # its intent
    r = verify(events)
    assert (r.verdict, r.first.check) == ("tampered", "pairing.orphan_result")
    assert r.first.event_id == result["event_id"]


def test_a_seal_that_counts_other_events_is_tampered() -> None:
    events = workflow_events(2)
    events[4]["event_count"] = 5
    r = verify(events)
    assert (r.verdict, r.first.check) == ("tampered", "pairing.seal_count")
    assert (r.first.expected, r.first.found) == ("5", "4")
    assert r.first.event_id == events[4]["event_id"]


def test_a_seal_naming_another_last_event_is_tampered() -> None:
    events = workflow_events(2)
    events[4]["last_event_id"] = events[0]["event_id"]
    r = verify(events)
    assert (r.verdict, r.first.check) == ("tampered", "pairing.seal_last_event")


def test_a_seal_counts_only_its_own_run() -> None:
    # two runs of one workflow interleaved on one partition
    a = workflow_events(1)  # intent, result, intent, result, seal(4)
    b = workflow_events(1, calls=1)  # intent, result, seal(2)
    for ev in b:
        ev["run_id"] = "run-retry"
        for k in ("event_id", "intent_id", "last_event_id"):
            if k in ev:
                ev[k] = ev[k].replace("-8000-", "-9000-")
    events = [a[0], b[0], a[1], b[1], a[2], b[2], a[3], a[4]]
    assert verify(events, partitions=1).verdict == "sound"
    a[4]["event_count"] = 7  # all events of the workflow, not of its run
    assert verify(events, partitions=1).first.check == "pairing.seal_count"


def test_an_undecodable_value_is_a_leaf_not_a_tamper() -> None:
    led = build_ledger(workflow_events(1), partitions=1)
    from wakeline.ledger.segments import PartitionChain
    from wakeline.ledger.service import sign_checkpoint
    from wakeline.ledger.store import make_entries

    last, frontier = led.store.last_segment(0)
    chain = PartitionChain.after(last, frontier)
    leaf = LedgerRecord(0, last.last_offset + 1, 1, b"wf-0", b"not avro", ()).leaf_bytes()
    header, hashes = chain.seal([leaf])
    led.store.append_segment(header, make_entries(header, [leaf], hashes), chain.tree.nodes)
    sign_checkpoint(led.store, [led.signer], origin="wakeline.test/ledger", force=True, now_ms=1)
    r = verify_store(led.store, trusted_keys=[led.vkey])
    assert r.verdict == "sound", [f.describe() for f in r.findings]
    assert r.stats["undecodable_events"] == 1
    assert any("do not decode" in w for w in r.warnings)


def test_decode_can_be_injected_or_disabled() -> None:
    events = workflow_events(2, seal=False)
    del events[1]
    led = build_ledger(events)
    raw = led.bundle()
    assert verify_bundle(io.BytesIO(raw), trusted_keys=[led.vkey]).verdict == "incomplete"
    r = verify_bundle(io.BytesIO(raw), trusted_keys=[led.vkey], decode=False)
    assert r.verdict == "sound"
    seen = []

    def decode(value: bytes) -> dict:
        seen.append(value)
        return {"type": "Other", "event_id": str(len(seen))}

    assert verify_bundle(io.BytesIO(raw), trusted_keys=[led.vkey], decode=decode).ok
    assert len(seen) == len(events)
