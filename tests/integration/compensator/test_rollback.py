"""Rollback to a workflow checkpoint and resume from it, on the real stack: the SDK's
WorkflowSnapshot goes through the ledger builder and the audit publisher (a worker), `wakeline
workflow rollback` quarantines the run after the checkpoint, the compensator (in process)
undoes only the calls after it in the example world, the CLI releases the run and hands back
the state, and `Emitter.resume` goes on from it; a forged or oversized snapshot is refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from wakeline.cli.main import cli
from wakeline.compensator.registry import CompensationRegistry
from wakeline.infra.settings import KafkaSettings
from wakeline.processors.audit import decode_audit
from wakeline.producers import Emitter, PayloadTooLarge, SnapshotError
from wakeline.producers.workflow import WorkflowContext
from wakeline.schemas import cloudevents_headers, encode_event
from wakeline.testkit.harness import read_topic, start_worker, stop_worker, worker_env
from wakeline_world import World

from .conftest import UNDO, act_on_world, assert_undone_once, new_wf, topic_events, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def worker(fresh_kafka: KafkaSettings, fresh_dsn: str, tmp_path: Path) -> Iterator[Path]:
    """The ledger builder and audit publisher over the test's topics."""
    log = tmp_path / "worker.log"
    proc = start_worker(fresh_kafka, fresh_dsn, "--checkpoint-interval-s", "0",
                        "--segment-max-age-ms", "100", log_path=str(log))  # fmt: skip
    yield log
    assert stop_worker(proc) == 0, log.read_text()[-3000:]


def wakeline(kafka: KafkaSettings, dsn: str, *args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), env=worker_env(kafka, dsn))
    return result


def ledgered(kafka: KafkaSettings, dsn: str, wf: str, event_id: str) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        got = wakeline(kafka, dsn, "workflow", "checkpoints", wf, "--dsn", dsn, "--json")
        assert got.exit_code == 0, got.output
        rows = json.loads(got.output)
        return rows if any(r["event_id"] == event_id and r["ledger"] for r in rows) else None

    return wait_until(check, 60, f"checkpoint {event_id} in the ledger", every=0.3)


def test_rollback_undoes_only_what_came_after_the_checkpoint_and_resume_goes_on(
    fresh_kafka: KafkaSettings,
    fresh_dsn: str,
    world: World,
    world_emitter: Emitter,
    handlers: CompensationRegistry,
    start_compensator: Any,
    worker: Path,
) -> None:
    kafka, dsn = fresh_kafka, fresh_dsn
    wf = new_wf()
    ctx = world_emitter.workflow(wf, agent_id="bot", principal="alice@example.com")
    before = act_on_world(ctx, world, 4)
    state = {"looked_up": [r.get("record_id") or r.get("charge_id") for _, r in before]}
    snap_id = ctx.checkpoint("after-lookup", {**state, "api_key": "k-123"}, redact=["api_key"])
    after = act_on_world(ctx, world, 4)
    rows = ledgered(kafka, dsn, wf, snap_id)
    (row,) = rows
    assert row["name"] == "after-lookup" and row["run_id"] == ctx.run_id
    assert row["redacted_fields"] == ["api_key"] and row["ledger"]["partition"] >= 0

    # the dry run says what would be undone, newest first, and changes nothing
    dry = wakeline(kafka, dsn, "workflow", "rollback", wf, "--to", "after-lookup", "--dry-run",
                   "--handlers", "wakeline_world.undo", "--dsn", dsn, "--json")  # fmt: skip
    assert dry.exit_code == 0, dry.output
    steps = json.loads(dry.output)["steps"]
    assert [(s["tool"], s["action"]) for s in steps] == [
        (tool, "compensate") for tool, _ in reversed(after)
    ]
    for op in UNDO.values():
        assert world.performed(op) == {}, op
    assert not [e for e in topic_events(kafka, wf) if e["type"] == "Quarantine"]

    start_compensator(handlers)
    got = wakeline(kafka, dsn, "workflow", "rollback", wf, "--to", "after-lookup", "--wait",
                   "--timeout", "90", "--dsn", dsn)  # fmt: skip
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout.strip().splitlines()[-1]) == {**state, "api_key": "[REDACTED]"}
    assert_undone_once(world, after)
    for tool, r in before:  # what came before the checkpoint stands
        if tool == "payments.charge":
            assert world.payments.get(r["charge_id"])["refunded_cents"] == 0
        elif tool == "crm.update":
            assert world.crm.get(r["record_id"]) is not None
        elif tool == "inventory.reserve":
            assert world.inventory.reservation(r["reservation_id"])["status"] != "released"
        elif tool == "cloud.create_vm":
            assert world.cloud.vm(r["vm_id"])["status"] != "deleted"

    # every step is an event: the quarantine after the checkpoint, the compensations, the release
    events = topic_events(kafka, wf)
    (q,) = [e for e in events if e["type"] == "Quarantine"]
    assert (q["scope"], q["run_id"], q["after_event_id"]) == ("run", ctx.run_id, snap_id)
    undone = {e["original_event_id"] for e in events if e["type"] == "CompensationResult"}
    assert len(undone) == len(after)
    (rel,) = [e for e in events if e["type"] == "Release"]
    assert rel["quarantine_id"] == q["event_id"]
    assert [e["type"] for e in events].index("Release") > max(
        i for i, e in enumerate(events) if e["type"] == "CompensationResult"
    )

    # resume: the state back, checked against the ledger, and a new run that goes on
    back = world_emitter.resume(wf, "after-lookup", dsn=dsn)
    assert back.state == {**state, "api_key": "[REDACTED]"} and back.snapshot_id == snap_id
    assert back.context.run_id != ctx.run_id
    again = act_on_world(back.context, world, 1)
    assert again[0][0] == "payments.charge"
    resumed = [e for e in topic_events(kafka, wf) if e["event_id"] == back.resumed_id]
    assert resumed[0]["parent_event_ids"] == [snap_id]

    # the audit publisher says what the snapshot is, in plain language
    def audit_of_snapshot() -> list[dict[str, Any]]:
        recs = [decode_audit(m.value()) for m in read_topic(kafka, kafka.topics.audit, idle=1)]
        return [r for r in recs if r["event_id"] == snap_id]

    (rec,) = wait_until(audit_of_snapshot, 60, "the snapshot's audit record", every=1)
    assert rec["event_type"] == "WorkflowSnapshot"
    assert rec["summary"] == f"agent bot saved checkpoint after-lookup of workflow {wf} run " + (
        ctx.run_id
    )


def forged_snapshot(ctx: WorkflowContext) -> dict[str, Any]:
    """A snapshot whose state was changed after its digest was taken."""
    from wakeline.producers.snapshots import snapshot_event

    event = snapshot_event(ctx.envelope("WorkflowSnapshot"), "cp", {"amount": 10}, max_bytes=1000)
    return {**event, "state": '{"amount":10000}'}


def test_resume_and_rollback_refuse_a_state_whose_digest_does_not_match(
    fresh_kafka: KafkaSettings, fresh_dsn: str, world_emitter: Emitter, worker: Path
) -> None:
    kafka, dsn = fresh_kafka, fresh_dsn
    wf = new_wf()
    ctx = world_emitter.workflow(wf, agent_id="bot", principal="alice@example.com")
    event = forged_snapshot(ctx)
    p = Producer(kafka.client_config(**{"acks": "all"}))
    p.produce(kafka.topics.events, encode_event(event), wf.encode(),
              headers=cloudevents_headers(event))  # fmt: skip
    assert p.flush(15) == 0
    ledgered(kafka, dsn, wf, event["event_id"])
    with pytest.raises(SnapshotError, match="does not match its ledgered digest"):
        world_emitter.resume(wf, "cp", dsn=dsn)
    got = wakeline(kafka, dsn, "workflow", "rollback", wf, "--to", "cp", "--dsn", dsn)
    assert got.exit_code == 1 and "does not match its ledgered digest" in " ".join(
        got.output.split()
    )
    kinds = [e["type"] for e in topic_events(kafka, wf)]
    assert kinds == ["WorkflowSnapshot"]  # no quarantine, no resumed run


def test_a_snapshot_over_the_size_limit_is_refused_clearly_and_writes_nothing(
    fresh_kafka: KafkaSettings, world_emitter: Emitter
) -> None:
    wf = new_wf()
    ctx = world_emitter.workflow(wf, agent_id="bot", principal="alice@example.com")
    big = {"pages": ["x" * 1000] * 600}
    with pytest.raises(PayloadTooLarge) as e:
        ctx.checkpoint("too-big", big)
    assert str(e.value) == (
        f"checkpoint 'too-big' of workflow {wf}: the canonical state is 601811 bytes, over "
        f"the limit of {world_emitter.max_payload_bytes} bytes"
    )
    ctx.checkpoint("small", {"pages": 600})
    assert world_emitter.flush(10) == 0
    assert [e["name"] for e in topic_events(fresh_kafka, wf)] == ["small"]
