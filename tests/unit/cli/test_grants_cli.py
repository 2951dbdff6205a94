"""`wakeline grants` without a broker: what it refuses before publishing, and the statuses
`list` gives."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from wakeline.cli.grants import grant_rows
from wakeline.cli.main import cli
from wakeline.policy import approvals as ap


@pytest.fixture
def key_file(tmp_path):
    return str(ap.save_private_key("alice", ap.generate_key(), tmp_path))


def test_a_limit_that_cannot_be_read_is_refused_before_anything_is_written(key_file):
    args = ["--as", "alice", "--key", key_file, "--agent", "*", "--tool", "x"]
    result = CliRunner().invoke(cli, ["grants", "create", *args, "--limit", "amount <<< 5"])
    assert result.exit_code == 2
    assert "--limit" in result.output and "'amount <<< 5': column 9" in result.output


def test_a_bad_duration_and_a_missing_key_are_clear_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["grants", "create", "--as", "alice", "--agent", "*",
                                 "--tool", "x", "--expires", "soon"])  # fmt: skip
    assert result.exit_code == 2 and "a duration is like" in result.output
    missing = str(tmp_path / "nobody.pem")
    result = runner.invoke(cli, ["grants", "revoke", "g-1", "--as", "alice", "--key", missing])
    assert result.exit_code == 1 and "cannot read the key" in result.output


def _grant(key, gid, expires_us):
    st = ap.GrantStatement(gid, "alice", "*", "x", (), expires_us)
    return ap.grant_event(st, st.sign(key), ap.public_bytes(key), time_us=1)


def test_list_says_which_grants_are_active_expired_revoked_or_unsigned():
    key, other = ap.generate_key(), ap.generate_key()
    now = time.time_ns() // 1000
    later = now + 10**9
    forged = _grant(key, "g-4", later) | {"public_key": ap.public_bytes(other)}
    rev = ap.RevocationStatement("g-3", "bob")
    state = {
        b"g-1": _grant(key, "g-1", later),
        b"g-2": _grant(key, "g-2", now - 1),
        b"g-3": _grant(key, "g-3", later),
        b"g-3/revoked/bob": ap.revocation_event(
            rev, rev.sign(other), ap.public_bytes(other), event_id="e", time_us=1
        ),  # fmt: skip
        b"g-4": forged,
    }
    rows = {r["grant_id"]: r for r in grant_rows(state, now)}
    assert {g: r["status"] for g, r in rows.items()} == {
        "g-1": "active", "g-2": "expired", "g-3": "revoked", "g-4": "unsigned"
    }  # fmt: skip
    assert rows["g-3"]["revoked_by"] == ["bob"]
