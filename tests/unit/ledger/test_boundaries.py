"""Import boundaries, event proofs a third party checks, and arbitrary corruption."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wakeline.ledger import SHA256, FormatError, ProofError, SignatureError
from wakeline.ledger.checkpoints import generate_signer
from wakeline.ledger.service import check_event_proof, event_proof
from wakeline.ledger.sources import verify_bundle

from .ledgerkit import build_ledger, workflow_events


def test_ledger_never_imports_kafka_faust_or_click() -> None:
    code = (
        "import sys, wakeline.ledger, wakeline.ledger.sources, wakeline.ledger.service, "
        "wakeline.ledger.store_postgres, wakeline.ledger.verify\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('confluent_kafka', 'aiokafka', 'faust', 'click'))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_an_event_proof_checks_out_and_a_doctored_one_does_not(tmp_path) -> None:
    events = workflow_events(5)
    led = build_ledger(events, suite=SHA256)
    target = events[7]["event_id"]
    doc = event_proof(led.store, target)
    assert doc["event_id"] == target and doc["suite"] == "sha256"
    check_event_proof(doc, [led.vkey])
    # through the CLI, as a third party would
    path = tmp_path / "proof.json"
    path.write_text(json.dumps(doc))
    from wakeline.cli.ledger import ledger

    res = CliRunner().invoke(ledger, ["proof", "--check", str(path), "--trusted-key", led.vkey])
    assert res.exit_code == 0 and "verifies" in res.output
    other = dict(doc, leaf_index=doc["leaf_index"] ^ 1)
    with pytest.raises(ProofError):
        check_event_proof(other, [led.vkey])
    with pytest.raises(SignatureError):
        check_event_proof(doc, [generate_signer("wakeline.test/ledger").verifier.vkey()])
    swapped = dict(doc, event_id=events[8]["event_id"])
    with pytest.raises(ProofError):
        check_event_proof(swapped, [led.vkey])
    # fields a reader would quote cannot lie, even though the inclusion path is intact
    root_b64 = base64.b64encode(b"\x00" * 32).decode()
    for field, lie in (("offset", doc["offset"] + 1), ("partition", doc["partition"] + 1),
                       ("tree_size", doc["tree_size"] + 5), ("root", root_b64),
                       ("leaf_hash", root_b64), ("suite", "blake3")):  # fmt: skip
        with pytest.raises(ProofError, match=f"proof field {field} is"):
            check_event_proof(dict(doc, **{field: lie}), [led.vkey])
    with pytest.raises(FormatError, match="leaf_index is str"):
        check_event_proof(dict(doc, leaf_index=str(doc["leaf_index"])), [led.vkey])
    path.write_text(json.dumps(other))
    res = CliRunner().invoke(ledger, ["proof", "--check", str(path), "--trusted-key", led.vkey])
    assert res.exit_code == 10


_LEDGER = build_ledger(workflow_events(5), partitions=2, segment_size=3, seed=3)
_RAW = _LEDGER.bundle()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, len(_RAW) - 1),
    st.integers(0, 64),
    st.binary(min_size=0, max_size=64),
)
def test_any_splice_fails_verification_without_crashing(at: int, cut: int, insert: bytes) -> None:
    mutated = _RAW[:at] + insert + _RAW[at + cut :]
    if mutated == _RAW:
        return
    r = verify_bundle(io.BytesIO(mutated), trusted_keys=[_LEDGER.vkey])
    assert r.verdict != "sound"
    assert r.first is not None and r.exit_code in (10, 11, 12)


def test_an_old_checkpoint_is_proven_a_prefix_of_the_newest() -> None:
    from wakeline.ledger.service import check_checkpoint_consistency, checkpoint_consistency

    led = build_ledger(workflow_events(6), checkpoint_every=1)
    notes = list(led.store.checkpoints())
    for old in (notes[0], notes[len(notes) // 2], notes[-1]):
        doc = checkpoint_consistency(led.store, old)
        check_checkpoint_consistency(json.loads(json.dumps(doc)), [led.vkey])
    doc = checkpoint_consistency(led.store, notes[1])
    moved = [p for p in doc["partitions"] if p["proof"]]
    assert moved, "some partition grew after the second checkpoint"
    bad = json.loads(json.dumps(doc))
    target = next(p for p in bad["partitions"] if p["proof"])
    target["proof"][0] = target["proof"][-1] if len(target["proof"]) > 1 else "A" * 43 + "="
    with pytest.raises(ProofError):
        check_checkpoint_consistency(bad, [led.vkey])
    with pytest.raises(SignatureError):
        check_checkpoint_consistency(doc, [generate_signer("x").verifier.vkey()])
    lying = json.loads(json.dumps(doc))
    lying["partitions"][0]["size2"] += 1  # the listed sizes must be the signed ones
    with pytest.raises(ProofError, match="the signed notes say"):
        check_checkpoint_consistency(lying, [led.vkey])


def test_the_cli_checks_a_consistency_document(tmp_path) -> None:
    from wakeline.cli.ledger import ledger
    from wakeline.ledger.service import checkpoint_consistency

    led = build_ledger(workflow_events(4), checkpoint_every=1)
    doc = checkpoint_consistency(led.store, next(led.store.checkpoints()))
    path = tmp_path / "consistency.json"
    path.write_text(json.dumps(doc))
    res = CliRunner().invoke(ledger, ["proof", "--check", str(path), "--trusted-key", led.vkey])
    assert res.exit_code == 0, res.output
    doc["partitions"][0]["size2"] = 1  # ignored: sizes come from the signed notes
    doc["old_checkpoint"] = doc["old_checkpoint"].replace("seq 0", "seq 9")
    path.write_text(json.dumps(doc))
    res = CliRunner().invoke(ledger, ["proof", "--check", str(path), "--trusted-key", led.vkey])
    assert res.exit_code == 10
