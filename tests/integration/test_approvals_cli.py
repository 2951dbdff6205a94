"""`wakeline approvals` against the real stack, with click's CliRunner: requests reach the
queue through the approvals processor; decisions the CLI signs reach the events topic (and
so the queue again) and the compacted approvals topic."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.approvalkit import (
    Approvers,
    produce,
    queued_decisions,
    queued_request,
    result_of,
    waiting_call,
)
from wakeline.cli.main import cli
from wakeline.infra.settings import KafkaSettings
from wakeline.policy.approvals import (
    Signed,
    load_private_key,
    members_of,
    public_bytes,
    public_key_text,
    save_private_key,
    statement_of_event,
    tally,
)
from wakeline.processors.approvals import approval_runner
from wakeline.schemas import decode_event
from wakeline.testkit.harness import read_topic, wait_until, worker_env

pytestmark = pytest.mark.integration

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"


@pytest.fixture
def world(fresh_kafka: KafkaSettings, fresh_dsn: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    runner = approval_runner(fresh_kafka, fresh_dsn)
    runner.start()
    env = worker_env(fresh_kafka, fresh_dsn)
    env["WAKELINE_KEYS_DIR"] = str(tmp_path / "keys")
    yield {"kafka": fresh_kafka, "dsn": fresh_dsn, "env": env, "keys": tmp_path / "keys"}
    runner.stop()


def run(world: dict[str, Any], *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env=world["env"])


def keygen(world: dict[str, Any], *who: str) -> Approvers:
    """Keys made by `wakeline approvals keygen`, and the group a policy lists them in."""
    group = Approvers()
    for p in who:
        got = run(world, "approvals", "keygen", "--principal", p)
        assert got.exit_code == 0, got.output
        line = got.stdout.strip().splitlines()[-1]
        assert line.startswith(f'"{p}" = "ed25519:')
        group.keys[p] = load_private_key(path=world["keys"] / f"{p}.pem")
        assert line == f'"{p}" = "{public_key_text(group.keys[p])}"'
    return group


def queued(world: dict[str, Any], *events: dict[str, Any]) -> None:
    produce(world["kafka"], list(events))
    last = [e for e in events if e["type"] == "ApprovalRequested"][-1]
    wait_until(
        lambda: queued_request(world["dsn"], last["event_id"]) is not None, 60, "the request"
    )


def test_two_approvers_reach_a_quorum_of_two_and_the_sdk_sees_it(world) -> None:
    group = keygen(world, ALICE, BOB)
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    call, request = waiting_call(wf, group, quorum=2)
    queued(world, call, request)
    rid = request["event_id"]

    listed = run(world, "approvals", "list", "--json")
    assert listed.exit_code == 0 and [r["request_id"] for r in json.loads(listed.output)] == [rid]
    assert rid in run(world, "approvals", "list").output
    assert run(
        world, "approvals", "list", "--workflow", wf, "--ids", "--wait", "5"
    ).output.split() == [rid]
    assert run(world, "approvals", "list", "--workflow", "wf-other", "--ids").output == ""
    none = run(world, "approvals", "list", "--workflow", "wf-other", "--wait", "0.5")
    assert none.exit_code == 1 and "no open approval request of workflow wf-other" in none.output

    got = run(world, "approvals", "approve", rid, "--as", ALICE, "--comment", "ok by me")
    assert got.exit_code == 0, got.output
    wait_until(lambda: len(queued_decisions(world["dsn"], rid)) == 1, 60, "alice's approval")
    shown = json.loads(run(world, "approvals", "show", rid, "--json").output)
    assert shown["state"] == "pending" and shown["approved_by"] == [ALICE]

    got = run(world, "approvals", "approve", rid, "--as", BOB)
    assert got.exit_code == 0, got.output
    wait_until(lambda: queued_request(world["dsn"], rid).state == "approved", 60, "the quorum")  # type: ignore[union-attr]
    text = run(world, "approvals", "show", rid).output
    assert "approved by 2 of 2" in text and "payments.transfer" in text and "ok by me" in text

    # what the waiting SDK reads: the compacted approvals topic, keyed request/approver
    recs = read_topic(world["kafka"], world["kafka"].topics.approvals)
    assert sorted(r.key() for r in recs) == sorted(f"{rid}/{p}".encode() for p in (ALICE, BOB))
    signed = [Signed(statement_of_event(e), e["signature"], e["public_key"])  # type: ignore[arg-type]
              for e in (decode_event(r.value()) for r in recs)]  # fmt: skip
    t = tally(signed, request_id=rid, binding=request["intent_digest"],
              members=members_of(request["approver_keys"]), quorum=2,
              now_us=request["time"])  # fmt: skip
    assert t.approved and t.approved_by == {ALICE, BOB}

    # the call ran: the request is closed, and nobody can decide it any more
    produce(world["kafka"], [result_of(call)])
    wait_until(lambda: queued_request(world["dsn"], rid).state == "closed", 60, "the result")  # type: ignore[union-attr]
    got = run(world, "approvals", "approve", rid, "--as", ALICE)
    assert got.exit_code == 1 and "is closed" in got.output
    got = run(world, "approvals", "deny", rid, "--as", ALICE, "--reason", "late")
    assert got.exit_code == 1 and "is closed" in got.output
    assert "no open approval requests" in run(world, "approvals", "list").output
    assert rid in run(world, "approvals", "list", "--all").output


def test_deny_expired_unknown_forged_and_key_problems_are_refused(world, tmp_path) -> None:
    group = keygen(world, ALICE, BOB)
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    call, request = waiting_call(wf, group)
    stale_call, stale = waiting_call(wf, group, timeout_s=0.000001, at=request["time"] - 10**7)
    forged_call, forged = waiting_call(wf, group, amount=50)
    forged = dict(forged, intent_id=call["event_id"])  # names another call's intent
    lost = waiting_call(wf, group)[1]  # its intent was never sent
    # bound to its intent, but showing the approver other arguments than the intent's
    shown_call, shown = waiting_call(wf, group, amount=9_000)
    shown = dict(shown, args='{"amount":9,"currency":"USD","to":"acct_9"}')
    queued(world, call, request, stale_call, stale, forged_call, forged, lost, shown_call, shown)
    rid = request["event_id"]

    def refused(*args: str) -> str:
        got = run(world, "approvals", *args)
        assert got.exit_code == 1, got.output
        assert "Traceback" not in got.output
        return " ".join(got.output.split())  # as one line: the error console wraps

    assert "no approval request" in refused("approve", "nope", "--as", ALICE)
    assert "expired" in refused("approve", stale["event_id"], "--as", ALICE)
    assert "forged request" in refused("approve", forged["event_id"], "--as", ALICE)
    assert "cannot be checked" in refused("approve", lost["event_id"], "--as", ALICE)
    said = refused("approve", shown["event_id"], "--as", ALICE)
    assert "arguments it shows are not the intent's" in said and "forged request" in said
    assert "not in the approver group" in refused("approve", rid, "--as", CAROL)
    # Carol has a key, but the group does not list her; Bob's file is not Alice's key
    save_private_key(CAROL, Approvers.of(CAROL).keys[CAROL], world["keys"])
    assert "not in the approver group" in refused("approve", rid, "--as", CAROL)
    bob_file = world["keys"] / f"{BOB}.pem"
    assert "is not the one the policy lists" in refused(
        "approve", rid, "--as", ALICE, "--key", str(bob_file)
    )
    assert "cannot read the key" in refused(
        "approve", rid, "--as", ALICE, "--key", str(tmp_path / "missing.pem")
    )
    (world["keys"] / f"{ALICE}.pem").unlink()
    assert "cannot read the key" in refused("approve", rid, "--as", ALICE)
    assert queued_decisions(world["dsn"], rid) == []  # nothing was signed

    got = run(world, "approvals", "deny", rid, "--as", BOB, "--reason", "wrong account")
    assert got.exit_code == 0, got.output
    wait_until(lambda: queued_request(world["dsn"], rid).state == "denied", 60, "the denial")  # type: ignore[union-attr]
    assert "is denied already" in refused("approve", rid, "--as", BOB)
    text = run(world, "approvals", "show", rid).output
    assert "denied by bob@example.com" in text and "wrong account" in text
    (d,) = queued_decisions(world["dsn"], rid)
    assert d.decision == "deny" and d.counts and d.public_key == public_bytes(group.keys[BOB])
    assert "does NOT match its intent" in run(world, "approvals", "show", forged["event_id"]).output
    assert run(world, "approvals", "show", "nope").exit_code == 1
