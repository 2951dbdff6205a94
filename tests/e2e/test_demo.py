"""The `make demo` scenario as a test: SDK -> Kafka -> worker -> PostgreSQL ledger -> verify,
in a namespace of its own that neither sees nor touches what else is on the stack."""

from __future__ import annotations

import io
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import conninfo
from rich.console import Console

from wakeline.demo import run
from wakeline.infra.settings import DatabaseSettings, KafkaSettings
from wakeline.ledger.sources import verify_store
from wakeline.ledger.store_postgres import PostgresLedgerStore
from wakeline.testkit.harness import start_worker, stop_worker, wait_for_ledger
from wakeline.testkit.samples import frames, intent, result

from .test_readme import check_demo_excerpts

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def _unsound_ledger(kafka: KafkaSettings, dsn: str, log: Path) -> None:
    """A ToolResult whose intent was never produced, ledgered by a worker."""
    orphan = result(intent("orphan-wf", 1))
    p = Producer(kafka.client_config())
    key, value, headers = frames(orphan)
    p.produce(kafka.topics.events, key=key, value=value, headers=headers)
    assert p.flush(30) == 0
    worker = start_worker(kafka, dsn, "--segment-max-age-ms", "200", log_path=str(log))
    try:
        store = PostgresLedgerStore(dsn)
        try:
            wait_for_ledger(store, 1)
        finally:
            store.close()
    finally:
        stop_worker(worker)


def _state(kafka: KafkaSettings, dsn: str) -> dict:
    """What a demo must leave as it was: the topics under the prefix and their end offsets,
    the ledger's verdict, the databases on the server."""
    topics = AdminClient(kafka.client_config()).list_topics(timeout=10).topics
    names = sorted(t for t in topics if t.startswith("demo."))
    c = Consumer(kafka.client_config(**{"group.id": "test-demo-state"}))
    try:
        ends = {
            t: [c.get_watermark_offsets(TopicPartition(t, p), 10)[1] for p in topics[t].partitions]
            for t in kafka.topics.all()
        }
    finally:
        c.close()
    store = PostgresLedgerStore(dsn)
    try:
        verdict = verify_store(store)
    finally:
        store.close()
    with psycopg.connect(dsn) as conn:
        dbs = sorted(r[0] for r in conn.execute("SELECT datname FROM pg_database"))
    return {
        "demo_topics": names,
        "ends": ends,
        "verdict": (verdict.verdict, verdict.first.check if verdict.first else None),
        "demo_databases": [d for d in dbs if d.startswith("wl_demo_")],
    }


def test_demo_tells_the_story_in_a_namespace_of_its_own(
    fresh_kafka: KafkaSettings, fresh_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the configured namespace holds an unsound ledger: the demo must neither verify nor fix it
    _unsound_ledger(fresh_kafka, fresh_dsn, tmp_path / "worker.log")
    before = _state(fresh_kafka, fresh_dsn)
    assert before["verdict"] == ("tampered", "pairing.orphan_result")
    monkeypatch.setenv("WAKELINE_HOME", str(tmp_path / "home"))  # the demo's files, its key
    monkeypatch.setenv("WAKELINE_BOOTSTRAP", fresh_kafka.bootstrap)
    monkeypatch.setenv("WAKELINE_TOPIC_PREFIX", fresh_kafka.topics.prefix)
    monkeypatch.setenv("WAKELINE_PARTITIONS", str(fresh_kafka.partitions))
    monkeypatch.setenv("WAKELINE_DSN", fresh_dsn)
    kafka, database = KafkaSettings.from_env(), DatabaseSettings.from_env()

    out = io.StringIO()
    # as wide as the README's excerpts of it, which are checked against it below
    report = run(kafka, database, console=Console(file=out, width=250), keep=True)
    text = out.getvalue()
    check_demo_excerpts(text)
    assert report["verdict"] == "sound"
    assert report["audit_records"] == 9  # 4 intents, 4 results, the seal
    assert report["forged_verdict"] == "tampered"
    finding = report["forged_first_finding"]
    assert finding["check"] == "entry.leaf_hash"
    assert finding["event_id"] == report["charge_event_id"]  # the forged event, named
    assert "4242424242424242" not in text  # the card number never reaches the log
    assert "called stripe.charge for customer 123" in text
    act = report["compensation"]
    assert act["refunds"] == 1 and act["crm_tier"] == "silver"
    assert len(act["tasks"]) == 2  # the delivered e-mail, and the plan's incident report
    assert "4000 0000 0000 0077" not in text and "4000000000000077" not in text
    assert "2 call(s) undone, 1 call(s) need a human" in text
    detection = report["detection"]
    assert detection["loop_refunds"] == len(detection["refunded"]) >= 2  # newest first
    assert "billing-bot called payments.charge" in detection["loop_alert"]
    assert "crm" in detection["race_alert"]
    approvals = report["approvals"]
    assert approvals["request_id"] and approvals["policy"]
    assert "waits: rule large-charges" in text and "denied email.send" in text
    blast = report["blast"]
    assert blast["taint_quarantine_id"] and blast["rolled_back_vm"]
    assert "untouched" in text and "TOUCHED" not in text
    assert "the compensator and the worker stopped (exit 0, 0)" in text

    # kept: the run's topics and database stay, and env.sh points at them
    first = report["namespace"]
    kept = _state(fresh_kafka, fresh_dsn)
    assert first["database"] in kept["demo_databases"]
    assert f"{first['prefix']}events" in kept["demo_topics"]
    env = (tmp_path / "home" / "demo" / "env.sh").read_text()
    assert f"export WAKELINE_TOPIC_PREFIX={first['prefix']}" in env
    assert conninfo.conninfo_to_dict(fresh_dsn)["host"] in env and first["database"] in env

    # a second run removes the first's namespace, then its own; the configured one is as it was
    second = run(kafka, database, console=Console(file=io.StringIO(), width=120))
    assert second["namespace"]["run"] != first["run"]
    after = _state(fresh_kafka, fresh_dsn)
    runs = (first["prefix"], second["namespace"]["prefix"])
    assert not [t for t in after["demo_topics"] if t.startswith(runs)]
    assert first["database"] not in after["demo_databases"]
    assert second["namespace"]["database"] not in after["demo_databases"]
    assert after["ends"] == before["ends"] and after["verdict"] == before["verdict"]
