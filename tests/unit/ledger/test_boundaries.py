"""Import boundaries, event proofs a third party checks, and arbitrary corruption."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wakeline.ledger import SHA256, ProofError, SignatureError
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
