"""End to end on the real stack: `wakeline worker` (default: the approval queue runs in its
audit child) fills the queue, two approvers approve with the CLI, the call runs; the ledger
the worker built verifies sound for that call, and names the forged approval of another."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.approvalkit import (
    Approvers,
    produce,
    queued_decisions,
    queued_request,
    result_of,
    signed,
    waiting_call,
)
from tests.integration.test_approvals_cli import ALICE, BOB
from wakeline.cli.main import cli
from wakeline.infra.settings import KafkaSettings
from wakeline.ledger.checkpoints import generate_signer
from wakeline.ledger.service import sign_checkpoint
from wakeline.ledger.sources import verify_store
from wakeline.policy.approvals import save_private_key
from wakeline.processors.runner import postgres_store_factory
from wakeline.testkit.harness import (
    start_worker,
    stop_worker,
    wait_for_ledger,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.integration


def test_worker_queue_cli_and_ledger_verify(
    fresh_kafka: KafkaSettings, fresh_dsn: str, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    proc = start_worker(fresh_kafka, fresh_dsn, "--segment-max-age-ms", "100",
                        "--checkpoint-interval-s", "0", log_path=str(log))  # fmt: skip
    group = Approvers.of(ALICE, BOB)
    for who, key in group.keys.items():
        save_private_key(who, key, tmp_path / "keys")
    env = {**worker_env(fresh_kafka, fresh_dsn), "WAKELINE_KEYS_DIR": str(tmp_path / "keys")}
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    good, good_req = waiting_call(wf, group, quorum=2)
    bad, bad_req = waiting_call(wf, group, quorum=1, amount=5000)
    forged = signed(bad_req, group, ALICE, key=Approvers.of(ALICE).keys[ALICE])
    store = postgres_store_factory(fresh_dsn)()
    try:
        produce(fresh_kafka, [good, good_req, bad, bad_req])
        wait_until(
            lambda: queued_request(fresh_dsn, bad_req["event_id"]) is not None, 90, "the queue"
        )
        for who in (ALICE, BOB):
            got = CliRunner().invoke(
                cli, ["approvals", "approve", good_req["event_id"], "--as", who], env=env
            )
            assert got.exit_code == 0, got.output
        rid = good_req["event_id"]
        wait_until(lambda: queued_request(fresh_dsn, rid).state == "approved", 60, "the quorum")  # type: ignore[union-attr]
        ran = result_of(bad)
        produce(fresh_kafka, [result_of(good), forged, ran])
        wait_until(
            lambda: queued_request(fresh_dsn, bad_req["event_id"]).state == "closed", 60, "closed"
        )  # type: ignore[union-attr]
        assert [d.counts for d in queued_decisions(fresh_dsn, bad_req["event_id"])] == [False]
        wait_for_ledger(store, 9)
    finally:
        assert stop_worker(proc) == 0, log.read_text()[-3000:]
    signer = generate_signer("test-approvals")
    assert sign_checkpoint(store, signer) is not None
    report = verify_store(store, trusted_keys=[signer.verifier.vkey()])
    found = [(f.check, f.event_id) for f in report.findings]
    assert report.verdict == "tampered"
    assert found == [
        ("approval.wrong_key", forged["event_id"]),
        ("approval.quorum_missing", ran["event_id"]),
    ]
    store.close()
