"""An agent in another language: `standalone_emit.py` follows schemas/README.md ("Emitting
from another language") with no Wakeline code, in a process where importing `wakeline`
fails, and a real `wakeline worker` ledgers and audits what it wrote. The Python SDK and an
operator write into the same workflow; the ledger verifies sound (pairing and seals), the
standalone events decode to what the SDK writes for the same calls, every event of the
workflow sits on one partition, and a quarantine stops the standalone emitter's calls too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from wakeline.compensator import operator
from wakeline.infra.kafka_source import verify_from_kafka
from wakeline.infra.settings import KafkaSettings
from wakeline.ledger.checkpoints import generate_signer
from wakeline.processors.audit import decode_audit
from wakeline.processors.checkpointing import sign_checkpoint
from wakeline.processors.runner import postgres_store_factory
from wakeline.producers import Emitter, ToolRegistry, WorkflowQuarantined
from wakeline.schemas import codec as codec_module
from wakeline.schemas import decode_event, encode_event
from wakeline.testkit.harness import read_topic, start_worker, stop_worker, wait_for_ledger

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).parents[1] / "unit" / "schemas" / "data" / "standalone_emit.py"
SCHEMA_DIR = Path(codec_module.__file__).parent
AGENT, PRINCIPAL = "billing-bot", "alice@example.com"
WORKER_ARGS = ("--segment-max-leaves", "50", "--segment-max-age-ms", "100",
               "--checkpoint-interval-s", "0", "--no-detectors", "--no-approvals")  # fmt: skip
#: what differs between two writers of the same call: who, when, which run, the ids
PER_WRITER = {"event_id", "time", "source", "run_id", "intent_id", "last_event_id", "duration_us"}
CHARGE = {"customer": 123, "amount": 1299, "card": {"number": "4242424242424242", "cvc": "123"}}
EMAIL = {"to": "ada@example.com", "subject": "Receipt", "body": "Thanks for your order"}


def standalone(kafka: KafkaSettings, workflow_id: str, run_id: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(SCHEMA_DIR), kafka.bootstrap, kafka.topics.prefix,
         workflow_id, run_id],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines()]


def registry() -> ToolRegistry:
    """The standalone emitter's tools, declared to the Python SDK."""
    reg = ToolRegistry()
    reg.declare("crm.lookup", reversibility="read", impact="low", reads=["customer:{customer}"])
    reg.declare("stripe.charge", reversibility="compensable", impact="high",
                compensation="stripe.refund", writes=["customer:{customer}:balance"],
                redact=frozenset({"card.cvc"}), digest_only=frozenset({"card.number"}),
                external_ids=lambda r: {"charge_id": r["id"]})  # fmt: skip
    reg.declare("email.send", reversibility="reversible", impact="medium",
                compensation="email.recall", writes=["mailbox:{to}"],
                undo_window_s=600)  # fmt: skip
    return reg


def sdk_run(kafka: KafkaSettings, spool: Path, workflow_id: str, run_id: str) -> None:
    """The standalone emitter's calls, by the Python SDK (a run of its own)."""

    def send(**_args: Any) -> None:
        raise ConnectionError("mailbox unavailable")

    with Emitter(kafka, spool_dir=spool, registry=registry()) as em:
        ctx = em.workflow(workflow_id, agent_id=AGENT, principal=PRINCIPAL, run_id=run_id)
        try:
            ctx.call("crm.lookup", lambda customer: {"name": "Ada", "tier": "gold"},
                     {"customer": 123})  # fmt: skip
            ctx.call("stripe.charge", lambda **_a: {"id": "ch_1", "paid": True}, CHARGE)
            with pytest.raises(ConnectionError):
                ctx.call("email.send", send, EMAIL)
            outcome = "succeeded"
        except WorkflowQuarantined:
            outcome = "quarantined"
        ctx.complete_workflow(outcome)


def payload(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in PER_WRITER}


def test_an_emitter_in_another_language_is_ledgered_audited_and_paired(
    fresh_kafka: KafkaSettings, fresh_dsn: str, tmp_path: Path
) -> None:
    kafka = fresh_kafka
    log_path = tmp_path / "worker.log"
    proc = start_worker(kafka, fresh_dsn, *WORKER_ARGS, log_path=str(log_path))
    try:
        wf = f"wf-wire-{uuid.uuid4().hex[:8]}"
        runs = [str(uuid.uuid4()) for _ in range(4)]
        written = standalone(kafka, wf, runs[0])
        sdk_run(kafka, tmp_path / "spool", wf, runs[1])
        # an operator quarantines the workflow; the compensator would publish the gate record
        q = operator.quarantine(kafka, wf, reason="card testing", by="ops@example.com")
        gate = Producer(kafka.producer_config())
        gate.produce(kafka.topics.quarantines, encode_event(q["event"]), wf.encode())
        assert gate.flush(30) == 0
        refused = standalone(kafka, wf, runs[2])
        sdk_run(kafka, tmp_path / "spool2", wf, runs[3])

        msgs = read_topic(kafka, kafka.topics.events)
        mine = sorted((m for m in msgs if m.key() == wf.encode()), key=lambda m: m.offset())
        # one partition for the workflow, whoever wrote: the key's CRC-32 mod the partitions
        assert {m.partition() for m in mine} == {zlib.crc32(wf.encode()) % kafka.partitions}
        assert {r["partition"] for r in written + refused} == {mine[0].partition()}
        assert q["partition"] == mine[0].partition()
        by_run: dict[str, list[dict[str, Any]]] = {}
        for m in mine:
            e = decode_event(m.value())  # wakeline's codec reads the standalone frames
            by_run.setdefault(e["run_id"], []).append(e)
        ours, sdks, ours_refused, sdks_refused = (by_run[r] for r in runs)
        assert [e["event_id"] for e in ours] == [r["event_id"] for r in written]
        assert [e["type"] for e in ours] == ["ToolIntent", "ToolResult"] * 3 + ["WorkflowCompleted"]
        # what the SDK writes for the same calls, field by field (args_digest, resource keys,
        # redaction, policy fields, results, seal), but for who wrote it, when, and the ids
        assert [payload(e) for e in ours] == [payload(e) for e in sdks]
        assert [payload(e) for e in ours_refused] == [payload(e) for e in sdks_refused]
        assert [(e["type"], e.get("status")) for e in ours_refused] == [
            ("ToolIntent", None), ("ToolResult", "denied"),
            ("WorkflowCompleted", None)]  # fmt: skip
        assert ours_refused[0]["policy_decision"] == "deny"
        charge = ours[2]
        assert charge["resources_written"] == ["customer:123:balance"]
        assert "4242" not in charge["args"] and '"cvc":"[REDACTED]"' in charge["args"]
        assert ours[1]["intent_id"] == ours[0]["event_id"]

        store = postgres_store_factory(fresh_dsn)()
        try:
            wait_for_ledger(store, len(msgs), timeout=120)
            signer = generate_signer("wire-test")
            sign_checkpoint(store, signer)
        finally:
            store.close()
        report = verify_from_kafka(kafka, trusted_keys=[signer.verifier.vkey()], dsn=fresh_dsn)
        assert report.ok, [f"{f.check}: {f.message}" for f in report.findings[:5]]
        assert not report.warnings, report.warnings[:3]
        # pairing ran over every leaf (an undecodable one would be skipped, with a warning)
        assert report.stats["leaves"] == len(msgs), report.stats
        assert report.stats["undecodable_events"] == 0, report.stats

        audited = wait_for_audit(kafka, {e["event_id"] for e in ours + ours_refused})
        for e in ours + ours_refused:
            rec = audited[e["event_id"]]
            assert (rec["event_type"], rec["workflow_id"], rec["run_id"]) == (
                e["type"], wf, e["run_id"])  # fmt: skip
            assert rec["summary"], rec
            if e["type"] == "ToolIntent":
                assert rec["tool"] == e["tool"]
            if e["type"] == "ToolResult":
                assert rec["status"] == e["status"]
    finally:
        assert stop_worker(proc) == 0, log_path.read_text()[-3000:]


def wait_for_audit(kafka: KafkaSettings, event_ids: set[str]) -> dict[str, dict[str, Any]]:
    """The audit records of `event_ids` (they follow the ledger's segment headers)."""
    deadline = time.monotonic() + 120
    while True:
        records = [decode_audit(m.value()) for m in read_topic(kafka, kafka.topics.audit, 1)]
        got = {r["event_id"]: r for r in records if r["event_id"] in event_ids}
        if len(got) == len(event_ids) or time.monotonic() > deadline:
            assert set(got) == event_ids, f"audit records missing: {event_ids - set(got)}"
            return got
