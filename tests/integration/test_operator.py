"""The operator commands against the real broker and database: quarantine, release, and the
timeline of a ledger the real worker built."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from wakeline.cli.main import cli
from wakeline.compensator import operator
from wakeline.errors import StackError
from wakeline.infra.settings import KafkaSettings
from wakeline.processors.runner import postgres_store_factory
from wakeline.producers.emitter import Emitter
from wakeline.producers.registry import ToolRegistry
from wakeline.schemas import decode_event
from wakeline.testkit.harness import read_topic, start_worker, stop_worker, wait_for_ledger

pytestmark = pytest.mark.integration


def env(kafka: KafkaSettings, dsn: str | None = None) -> dict[str, str]:
    out = {"WAKELINE_BOOTSTRAP": kafka.bootstrap, "WAKELINE_TOPIC_PREFIX": kafka.topics.prefix}
    return out if dsn is None else {**out, "WAKELINE_DSN": dsn}


def agent_events(kafka: KafkaSettings, spool: Path, workflows: list[str]) -> None:
    """Each workflow charges, then reads: ToolIntent + ToolResult each, via the SDK."""
    tools = ToolRegistry()
    tools.declare("stripe.charge", reversibility="compensable", compensation="stripe.refund",
                  external_ids=lambda r: {"charge_id": r})  # fmt: skip
    tools.declare("kb.read", reversibility="read")
    with Emitter(kafka, spool_dir=spool, registry=tools, publish_schemas=False,
                 quarantine_gate=False, loop_guard=False) as em:  # fmt: skip
        for wf in workflows:
            ctx = em.workflow(wf, agent_id="billing-bot", principal="alice@example.com")
            ctx.call("stripe.charge", lambda w: f"ch_{w}", {"w": wf})
            ctx.call("kb.read", lambda: "ok")
        assert em.flush(30) == 0


def test_a_quarantine_lands_on_the_workflows_partition_and_records_who(kafka, tmp_path) -> None:
    workflows = [f"wf-op-{i}" for i in range(8)]
    agent_events(kafka, tmp_path / "spool", workflows)
    writer = operator.Writer(kafka)  # one producer, one flush: the positions come then
    written = {
        wf: operator.quarantine(
            kafka, wf, reason="runaway refunds", by="ops@example.com", writer=writer
        )
        for wf in workflows
    }
    assert writer.flush() == list(written.values())
    run = operator.quarantine(kafka, workflows[0], reason="one run", run_id="run-7")
    assert run["event"]["scope"] == "run" and run["event"]["run_id"] == "run-7"
    records = [m for m in read_topic(kafka, kafka.topics.events, idle=1.0)
               if m.key() is not None and m.key().decode() in written]  # fmt: skip
    sdk_partition = {m.key().decode(): m.partition() for m in records
                     if decode_event(m.value())["type"] == "ToolIntent"}  # fmt: skip
    assert len(set(sdk_partition.values())) > 1, "the workflows should spread over partitions"
    for wf, got in written.items():
        assert got["partition"] == sdk_partition[wf], wf
        [msg] = [m for m in records if m.offset() == got["offset"]
                 and m.partition() == got["partition"]]  # fmt: skip
        event = decode_event(msg.value())
        assert event["type"] == "Quarantine" and event["event_id"] == got["event_id"]
        assert event["workflow_id"] == wf and msg.key() == wf.encode()
        assert event["by"] == event["principal"] == "ops@example.com"
        assert event["agent_id"] == "wakeline-operator" and event["scope"] == "workflow"
        assert event["source"].startswith("wakeline://operator/")
        assert dict(msg.headers())["ce_id"] == got["event_id"].encode()


def test_an_event_the_writer_could_not_write_is_named_and_the_others_are_written(kafka) -> None:
    writer = operator.Writer(kafka)
    fine = operator.quarantine(kafka, "wf-w-1", reason="stop", by="ops", writer=writer)
    big = operator.quarantine(kafka, "wf-w-2", reason="x" * 1_200_000, by="ops", writer=writer)
    also = operator.quarantine(kafka, "wf-w-3", reason="stop", by="ops", writer=writer)
    with pytest.raises(StackError) as raised:
        writer.flush()
    said = str(raised.value)
    assert said.startswith(f"1 of 3 event(s) not written to {kafka.topics.events}")
    assert f"the Quarantine {big['event_id']} of workflow 'wf-w-2' (refused" in said
    assert said.endswith(f"written: {fine['event_id']}, {also['event_id']}")
    keys = {b"wf-w-1", b"wf-w-2", b"wf-w-3"}
    records = read_topic(kafka, kafka.topics.events, idle=1.0)
    on_topic = {decode_event(m.value())["event_id"] for m in records if m.key() in keys}
    assert {fine["event_id"], also["event_id"]} <= on_topic and big["event_id"] not in on_topic
    assert writer.flush() == []  # what failed is not tried again


def test_wait_times_out_without_a_compensator_and_sees_a_published_state(kafka, fresh_dsn) -> None:
    got = CliRunner().invoke(
        cli, ["quarantine", "wf-wait", "--reason", "stop", "--by", "ops", "--wait", "1",
              "--json"], env=env(kafka),
    )  # fmt: skip
    assert got.exit_code == 1, got.output
    report = json.loads(got.stdout)
    assert report["visible_after_s"] is None and report["event"]["by"] == "ops"
    assert "is `wakeline compensator` running?" in got.stderr
    got = CliRunner().invoke(
        cli, ["quarantine", "wf-wait-3", "--reason", "stop", "--until-undone", "1",
              "--dsn", fresh_dsn], env=env(kafka),
    )  # fmt: skip
    assert got.exit_code == 3 and "is not taken up" in got.output, got.output
    # what the compensator does: the Quarantine, as it is, on the compacted topic
    q = operator.quarantine(kafka, "wf-wait-2", reason="stop", by="ops")
    publish_state(kafka, q["event"])
    took = operator.wait_visible(kafka, "wf-wait-2", q["event_id"], 30)
    assert took is not None and took < 30


def publish_state(kafka: KafkaSettings, event: dict) -> None:
    from wakeline.schemas import encode_event

    p = Producer(kafka.client_config(**{"enable.idempotence": True, "acks": "all"}))
    p.produce(kafka.topics.quarantines, encode_event(event), event["workflow_id"].encode())
    assert p.flush(30) == 0


def test_release_names_the_quarantine_in_force(kafka, fresh_dsn) -> None:
    # nothing anywhere: the Release lifts whatever is in force
    none = operator.release(kafka, "wf-rel-0", dsn=fresh_dsn, by="ops")
    assert none["event"]["quarantine_id"] is None and none["found_in"] is None
    # the quarantines topic (no compensator plan)
    q1 = operator.quarantine(kafka, "wf-rel-1", reason="stop", by="ops", run_id="run-1")
    publish_state(kafka, q1["event"])
    r1 = operator.release(kafka, "wf-rel-1", dsn=fresh_dsn, by="ops")
    assert r1["event"]["quarantine_id"] == q1["event_id"]
    assert r1["found_in"] == kafka.topics.quarantines and r1["event"]["run_id"] == "run-1"
    # the compensator's plan wins (here it names a later quarantine than the topic's)
    q2 = operator.quarantine(kafka, "wf-rel-1", reason="again", by="ops")
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO compensator_plans (quarantine_id, topic, partition, \"offset\", "
            "workflow_key, workflow_id, scope, reason, quarantined_by, quarantined_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, 'workflow', 'again', 'ops', %s)",
            (q2["event_id"], q2["topic"], q2["partition"], q2["offset"], b"wf-rel-1",
             "wf-rel-1", q2["event"]["time"]),
        )  # fmt: skip
    got = CliRunner().invoke(cli, ["release", "wf-rel-1", "--reason", "fixed", "--json"],
                             env=env(kafka, fresh_dsn))  # fmt: skip
    assert got.exit_code == 0, got.output
    report = json.loads(got.stdout)
    assert report["event"]["quarantine_id"] == q2["event_id"]
    assert report["found_in"] == "compensator_plans" and report["event"]["reason"] == "fixed"


def test_show_on_a_worker_built_ledger_gives_positions_ledger_proof_accepts(
    fresh_kafka, fresh_dsn, tmp_path
) -> None:
    kafka = fresh_kafka
    agent_events(kafka, tmp_path / "spool", ["wf-show", "wf-other"])
    q = operator.quarantine(kafka, "wf-show", reason="runaway refunds", by="ops@example.com")
    operator.release(kafka, "wf-show", dsn=fresh_dsn, by="ops@example.com", timeout_s=5)
    log = tmp_path / "worker.log"
    proc = start_worker(kafka, fresh_dsn, "--segment-max-age-ms", "100", "--no-audit",
                        "--checkpoint-interval-s", "0", log_path=str(log))  # fmt: skip
    store = postgres_store_factory(fresh_dsn)()
    try:
        wait_for_ledger(store, 10)
    finally:
        assert stop_worker(proc) == 0, log.read_text()[-3000:]
    runner = CliRunner()
    e = env(kafka, fresh_dsn)
    signed = runner.invoke(cli, ["ledger", "checkpoint", "--key", str(tmp_path / "k")], env=e)
    assert signed.exit_code == 0, signed.output
    got = runner.invoke(cli, ["workflow", "show", "wf-show", "--json"], env=e)
    assert got.exit_code == 0, got.output
    report = json.loads(got.stdout)
    assert report["state"] == "released" and report["compensator_state"]
    assert [c["intent"]["tool"] for c in report["calls"]] == ["stripe.charge", "kb.read"]
    charge = report["calls"][0]
    assert charge["result"]["external_ids"] == {"charge_id": "ch_wf-show"}
    assert report["quarantines"][0]["event_id"] == q["event_id"]
    assert report["releases"][0]["quarantine_id"] is None  # no compensator ran
    items = [charge["intent"], charge["result"], report["quarantines"][0], report["releases"][0]]
    for item in items:
        proof = runner.invoke(cli, ["ledger", "proof", item["event_id"]], env=e)
        assert proof.exit_code == 0, proof.output
        doc = json.loads(proof.stdout)
        assert (doc["partition"], doc["leaf_index"], doc["offset"]) == (
            item["ledger"]["partition"], item["ledger"]["leaf_index"], item["ledger"]["offset"]
        )  # fmt: skip
    text = runner.invoke(cli, ["workflow", "show", "wf-show"], env=e).output
    assert "QUARANTINE (workflow) by ops@example.com: runaway refunds" in text
    # the compensator's tables: the current state of an action and a task, and what they
    # say that the ledger does not show yet
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute(
            'INSERT INTO compensator_plans (quarantine_id, topic, partition, "offset", '
            "workflow_key, workflow_id, scope, reason, quarantined_by, quarantined_at, state) "
            "VALUES (%s, %s, %s, %s, 'wf-show', 'wf-show', 'workflow', 'r', 'ops', 0, 'done')",
            (q["event_id"], q["topic"], q["partition"], q["offset"]),
        )
        conn.execute(
            "INSERT INTO compensator_actions (quarantine_id, intent_id, seq, compensation, "
            "idempotency_key, tool, run_id, state, attempts, detail) VALUES (%s, %s, 0, "
            "'stripe.refund', 'wl-k', 'stripe.charge', 'r', 'done', 1, 'refunded')",
            (q["event_id"], charge["intent"]["event_id"]),
        )
        conn.execute(
            "INSERT INTO compensator_tasks (task_id, kind, quarantine_id, intent_id, "
            "workflow_key, workflow_id, partition, reason, title, report, "
            "escalation_event_id, published_at) VALUES ('task-1', 'call', %s, %s, 'wf-show', "
            "'wf-show', 0, 'r', 'check the charge', 'report', 'esc-1', now())",
            (q["event_id"], charge["intent"]["event_id"]),
        )
    again = json.loads(runner.invoke(cli, ["workflow", "show", "wf-show", "--json"], env=e).stdout)
    call = again["calls"][0]
    assert call["action"]["state"] == "done" and call["action"]["detail"] == "refunded"
    assert [t["task_id"] for t in call["tasks"]] == ["task-1"]
    assert any("esc-1" in note for note in again["unledgered"])
    text = runner.invoke(cli, ["workflow", "show", "wf-show"], env=e).output
    assert "compensator now: action done after 1 attempt(s): refunded" in text
    assert "not in the ledger yet: escalation esc-1 (task task-1)" in text
    listed = json.loads(runner.invoke(cli, ["workflow", "list", "--json"], env=e).stdout)
    assert {r["workflow_id"]: r["state"] for r in listed} == {
        "wf-show": "released", "wf-other": "active"
    }  # fmt: skip
    assert {r["workflow_id"]: r["events"] for r in listed} == {"wf-show": 6, "wf-other": 4}
    assert listed[0]["last_ms"] >= listed[1]["last_ms"]
