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
