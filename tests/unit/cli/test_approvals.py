"""`wakeline approvals keygen`, which needs no services."""

from __future__ import annotations

import stat

from click.testing import CliRunner

from wakeline.cli.main import cli
from wakeline.policy.approvals import load_private_key, parse_public_key, public_bytes


def test_keygen_writes_a_private_key_and_prints_the_line_for_a_policy(tmp_path) -> None:
    env = {"WAKELINE_KEYS_DIR": str(tmp_path / "keys")}
    got = CliRunner().invoke(cli, ["approvals", "keygen", "--principal", "alice@example.com"],
                             env=env)  # fmt: skip
    assert got.exit_code == 0, got.output
    name, _, value = got.stdout.strip().partition(" = ")
    assert name == '"alice@example.com"'
    path = tmp_path / "keys" / "alice@example.com.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert parse_public_key(value.strip('"')) == public_bytes(load_private_key(path=path))
    again = CliRunner().invoke(cli, ["approvals", "keygen", "--principal", "alice@example.com"],
                               env=env)  # fmt: skip
    assert again.exit_code == 1 and "already there" in " ".join(again.output.split())
    assert parse_public_key(value.strip('"')) == public_bytes(load_private_key(path=path))
