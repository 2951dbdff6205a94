"""A sound ledger verifies from its bundle and from its store; reports are precise."""

from __future__ import annotations

import io
import json

from wakeline.ledger import SHA256
from wakeline.ledger.sources import verify_bundle, verify_store
from wakeline.ledger.verify import EXIT_CODES

from .ledgerkit import build_ledger, workflow_events


def test_sound_bundle_verifies_with_pinned_key() -> None:
    led = build_ledger(workflow_events(6))
    report = verify_bundle(io.BytesIO(led.bundle()), trusted_keys=[led.vkey])
    assert report.verdict == "sound", [f.describe() for f in report.findings]
    assert report.exit_code == 0
    assert report.stats["leaves"] == 6 * 5
    assert report.stats["signed_leaves"] == 30
    assert report.stats["partitions"] == 2
    assert report.stats["undecodable_events"] == 0
    assert report.keys_pinned


def test_sound_store_verifies_for_both_suites() -> None:
    for suite in (SHA256,):
        led = build_ledger(workflow_events(3), suite=suite)
        report = verify_store(led.store, trusted_keys=[led.vkey])
        assert report.ok, [f.describe() for f in report.findings]
        assert report.suite == "sha256"


def test_unpinned_verification_warns_that_keys_come_from_the_bundle() -> None:
    led = build_ledger(workflow_events(2))
    report = verify_bundle(io.BytesIO(led.bundle()))
    assert report.ok
    assert not report.keys_pinned
    assert any("no pinned keys" in w for w in report.warnings)


def test_report_is_json_serialisable_with_exit_codes() -> None:
    led = build_ledger(workflow_events(2))
    report = verify_bundle(io.BytesIO(led.bundle()), trusted_keys=[led.vkey])
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["verdict"] == "sound" and doc["first"] is None
    assert EXIT_CODES == {"sound": 0, "tampered": 10, "incomplete": 11, "unusable": 12}


def test_not_a_bundle_is_unusable(tmp_path) -> None:
    path = tmp_path / "x.bundle"
    path.write_bytes(b"PK\x03\x04 definitely a zip file")
    report = verify_bundle(path)
    assert (report.verdict, report.first.check) == ("unusable", "bundle.format")
    assert report.exit_code == 12
    assert verify_bundle(tmp_path / "missing").first.check == "bundle.open"


def test_no_checkpoint_is_incomplete() -> None:
    from wakeline.ledger.service import export_bundle

    led = build_ledger(workflow_events(2))
    led.store._notes.clear()
    out = io.BytesIO()
    export_bundle(led.store, out, public_keys=[led.vkey])
    report = verify_bundle(io.BytesIO(out.getvalue()), trusted_keys=[led.vkey])
    assert (report.verdict, report.first.check) == ("incomplete", "checkpoint.missing")


def test_reading_in_small_chunks_gives_the_same_verdicts() -> None:
    led = build_ledger(workflow_events(3))
    raw = led.bundle()
    pos = raw.index(b"stripe.charge")
    tampered = raw[:pos] + b"X" + raw[pos + 1 :]
    whole = verify_bundle(io.BytesIO(tampered), trusted_keys=[led.vkey])
    assert whole.first.check == "entry.leaf_hash"
    for chunk in (1, 7, 58, 59, 300, 1000):
        r = verify_bundle(io.BytesIO(raw), trusted_keys=[led.vkey], chunk=chunk)
        assert r.ok, (chunk, [f.describe() for f in r.findings])
        assert r.stats["leaves"] == 15
        t = verify_bundle(io.BytesIO(tampered), trusted_keys=[led.vkey], chunk=chunk)
        assert t.findings == whole.findings, chunk
        cut = verify_bundle(io.BytesIO(raw[:-3]), trusted_keys=[led.vkey], chunk=chunk)
        assert cut.first.check == "bundle.truncated"


def test_findings_are_capped_but_counted() -> None:
    from .ledgerkit import frames

    led = build_ledger(workflow_events(30), segment_size=8)
    raw = bytearray(led.bundle())
    entries = [f for f in frames(bytes(raw)) if f.kind == 5]
    for f in entries:
        raw[f.end - 1] ^= 0xFF  # every leaf's last byte
    r = verify_bundle(io.BytesIO(bytes(raw)), trusted_keys=[led.vkey], decode=False)
    assert r.verdict == "tampered" and r.first.check == "entry.leaf_hash"
    assert r.first.leaf_index == 0
    assert len(r.findings) == 100
    assert len(r.findings) + r.suppressed >= len(entries)
    assert r.to_dict()["findings_not_listed"] == r.suppressed


def test_export_keeps_only_keys_that_signed_and_no_key_at_all_is_unusable() -> None:
    from wakeline.ledger.checkpoints import generate_signer
    from wakeline.ledger.service import export_bundle

    led = build_ledger(workflow_events(2))
    stranger = generate_signer("someone-else").verifier.vkey()
    out = io.BytesIO()
    export_bundle(led.store, out, public_keys=[stranger, led.vkey])
    r = verify_bundle(io.BytesIO(out.getvalue()))
    assert r.ok and r.trusted_keys == [led.vkey]
    bare = io.BytesIO()
    export_bundle(led.store, bare, public_keys=[stranger])
    r = verify_bundle(io.BytesIO(bare.getvalue()))
    assert (r.verdict, r.first.check) == ("unusable", "checkpoint.keys")
    assert verify_bundle(io.BytesIO(bare.getvalue()), trusted_keys=[led.vkey]).ok


# ------------------------------------------------------------------ the unledgered tail


def _tail_report(age_ms: int | None, stale_after_ms: int, count: int = 5):
    led = build_ledger(workflow_events(4))
    seen: dict[int, int] = {}

    def tail(v, last_offsets: dict[int, int]) -> None:
        seen.update(last_offsets)
        ts = None if age_ms is None else 1_000_000 - age_ms
        v.add_tail(0, last_offsets[0] + 1, count, ts, now_ms=1_000_000,
                   stale_after_ms=stale_after_ms)  # fmt: skip

    report = verify_store(led.store, trusted_keys=[led.vkey], tail=tail)
    last = {p: list(led.store.headers(p))[-1].last_offset for p in led.store.partitions()}
    assert seen == last  # the callback is told each partition's last ledgered offset
    return report, last


def test_an_old_unledgered_tail_is_incomplete() -> None:
    report, last = _tail_report(age_ms=61_000, stale_after_ms=60_000)
    assert (report.verdict, report.exit_code) == ("incomplete", 11)
    f = report.first
    assert (f.check, f.partition, f.offset) == ("tail.stale", 0, last[0] + 1)
    assert "5 record(s)" in f.found and "61.0 s" in f.found
    assert report.stats["unledgered_tail"] == 5
    # no broker timestamp: the age is unknown, which is stale
    assert _tail_report(age_ms=None, stale_after_ms=60_000)[0].first.check == "tail.stale"


def test_a_young_unledgered_tail_is_a_warning() -> None:
    report, last = _tail_report(age_ms=59_000, stale_after_ms=60_000)
    assert report.verdict == "sound" and report.first is None
    assert [(f.verdict, f.check, f.offset) for f in report.findings] == [
        ("warning", "tail.behind", last[0] + 1)
    ]


def test_a_tail_that_cannot_be_checked_is_said() -> None:
    led = build_ledger(workflow_events(2))
    report = verify_store(
        led.store, trusted_keys=[led.vkey], tail=lambda v, _: v.tail_unchecked("no broker")
    )
    assert report.verdict == "sound"
    assert [f.check for f in report.findings] == ["tail.unchecked"]
    assert any("could not be checked: no broker" in w for w in report.warnings)


def test_a_header_that_lies_about_the_body_is_a_warning_from_the_store_too() -> None:
    from wakeline.ledger.records import LedgerRecord

    from .ledgerkit import record_of

    events = workflow_events(1, calls=1)
    led = build_ledger(events, partitions=1)
    r = record_of(events[0], 0, 0)
    lying = tuple((k, b"someone-else" if k == "ce_id" else v) for k, v in r.headers)
    forged = LedgerRecord(r.partition, r.offset, r.timestamp, r.key, r.value, lying)
    from wakeline.ledger import BLAKE3
    from wakeline.ledger.segments import PartitionChain
    from wakeline.ledger.service import sign_checkpoint
    from wakeline.ledger.store import make_entries
    from wakeline.ledger.store_memory import MemoryLedgerStore

    store = MemoryLedgerStore()
    chain = PartitionChain(BLAKE3, 0)
    leaves = [forged.leaf_bytes()] + [
        record_of(e, 0, i).leaf_bytes() for i, e in enumerate(events)
    ][1:]
    header, hashes = chain.seal(leaves)
    store.append_segment(header, make_entries(header, leaves, hashes), chain.tree.nodes)
    sign_checkpoint(store, [led.signer], origin="o", force=True, now_ms=1)
    report = verify_store(store, trusted_keys=[led.vkey])
    assert report.verdict == "sound"
    (f,) = report.findings
    assert (f.verdict, f.check, f.partition, f.leaf_index, f.offset, f.field) == (
        "warning", "event.header_mismatch", 0, 0, 0, "ce_id"
    )  # fmt: skip
    assert (f.expected, f.found, f.event_id) == (events[0]["event_id"], "someone-else",
                                                 events[0]["event_id"])  # fmt: skip
