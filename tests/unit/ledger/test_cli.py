"""`ledger-verify --bundle` end to end through click: exit codes and the JSON report."""

from __future__ import annotations

import json

from click.testing import CliRunner

from wakeline.cli.ledger import ledger, ledger_verify_main

from .ledgerkit import build_ledger, workflow_events


def _bundle(tmp_path, mutate=lambda b: b):
    led = build_ledger(workflow_events(4))
    path = tmp_path / "ledger.bundle"
    path.write_bytes(mutate(led.bundle()))
    keyfile = tmp_path / "trusted.pub"
    keyfile.write_text(led.vkey + "\n")
    return path, led.vkey, keyfile


def test_sound_bundle_exits_0_with_a_json_report(tmp_path) -> None:
    path, vkey, _ = _bundle(tmp_path)
    res = CliRunner().invoke(
        ledger_verify_main, ["--bundle", str(path), "--trusted-key", vkey, "--json"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["verdict"] == "sound" and doc["keys_pinned"] is True
    assert doc["stats"]["leaves"] == 20


def test_tampered_bundle_exits_10_and_names_the_first_bad_item(tmp_path) -> None:
    def flip_a_byte_of_the_first_leaf(b: bytes) -> bytes:
        pos = b.index(b"stripe.charge")  # inside the first intent's Avro value
        return b[:pos] + b"S" + b[pos + 1 :]

    path, _, keyfile = _bundle(tmp_path, flip_a_byte_of_the_first_leaf)
    res = CliRunner().invoke(
        ledger, ["verify", "--bundle", str(path), "--trusted-key", str(keyfile)]
    )
    assert res.exit_code == 10, res.output
    assert "TAMPERED" in res.output
    assert "entry.leaf_hash" in res.output and "partition 0" in res.output
    assert "event 0190a0b0-0000-7000-8000-000000000000" in res.output  # the first intent


def test_truncated_bundle_exits_11(tmp_path) -> None:
    path, vkey, _ = _bundle(tmp_path, lambda b: b[: len(b) // 2])
    res = CliRunner().invoke(ledger_verify_main, ["--bundle", str(path), "--trusted-key", vkey])
    assert res.exit_code == 11, res.output


def test_unusable_input_exits_12(tmp_path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"\x00" * 100)
    res = CliRunner().invoke(ledger_verify_main, ["--bundle", str(path), "--json"])
    assert res.exit_code == 12
    assert json.loads(res.output)["first"]["check"] == "bundle.format"


def test_a_bad_trusted_key_is_a_configuration_error(tmp_path) -> None:
    path, _, _ = _bundle(tmp_path)
    res = CliRunner().invoke(
        ledger_verify_main, ["--bundle", str(path), "--trusted-key", "name+00+AAAA"]
    )
    assert res.exit_code == 2
