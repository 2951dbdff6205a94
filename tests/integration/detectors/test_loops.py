"""Runaway loops against the real stack: `wakeline worker` hosts the loop detector, the
compensator (`wakeline compensator --handlers wakeline_world.undo`) undoes what it
quarantines, in the example world."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wakeline.infra.settings import KafkaSettings
from wakeline.producers import Emitter
from wakeline.producers.errors import GateRefused
from wakeline.producers.registry import ToolRegistry, ToolSpec
from wakeline.schemas import decode_event
from wakeline.testkit.harness import (
    read_topic,
    start_compensator,
    start_worker,
    stop_worker,
    wait_until,
)
from wakeline_world import World
from wakeline_world import tools as world_tools

pytestmark = pytest.mark.integration

EXTRA = ToolRegistry(
    [
        ToolSpec("jobs.status", reversibility="read", impact="low"),
        ToolSpec("agents.handoff", reversibility="irreversible", impact="low"),
    ]
)


@pytest.fixture
def stack(fresh_kafka: KafkaSettings, fresh_dsn: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A worker (detectors in its audit child) and the world's compensator."""
    env = {"WAKELINE_WORLD_DSN": fresh_dsn}
    worker = start_worker(fresh_kafka, fresh_dsn, "--checkpoint-interval-s", "0", "--detectors",
                          log_path=str(tmp_path / "worker.log"))  # fmt: skip
    comp = start_compensator(fresh_kafka, fresh_dsn, "--handlers", "wakeline_world.undo",
                             log_path=str(tmp_path / "compensator.log"), env=env)  # fmt: skip
    procs: list[subprocess.Popen] = [worker, comp]
    for group in ("loop-detector", "compensator"):  # both have joined their groups
        wait_until(lambda g=group: _stable(fresh_kafka, fresh_kafka.topics.prefix + g), 60,
                   f"the {group} group")  # fmt: skip
    yield {"kafka": fresh_kafka, "dsn": fresh_dsn, "tmp": tmp_path}
    for p in procs:
        stop_worker(p)


def _stable(kafka: KafkaSettings, group: str) -> bool:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(kafka.client_config(log_level=0))
    try:
        (desc,) = [f.result() for f in admin.describe_consumer_groups([group]).values()]
    except Exception:  # noqa: BLE001 - not there yet
        return False
    return desc.state.name == "STABLE" and bool(desc.members)


def _emitter(kafka: KafkaSettings, spool: Path, registry: ToolRegistry) -> Emitter:
    em = Emitter(kafka, spool_dir=spool, registry=registry, loop_guard=False)
    assert em.gate is not None and em.gate.wait_ready(15)
    return em


def _alerts(kafka: KafkaSettings, workflow_id: str) -> list[dict[str, Any]]:
    msgs = read_topic(kafka, kafka.topics.alerts, idle=0.5)
    return [decode_event(m.value()) for m in msgs if m.key() == workflow_id.encode()]


def _on_events(kafka: KafkaSettings, workflow_id: str, type_name: str) -> list[dict[str, Any]]:
    out = []
    for m in read_topic(kafka, kafka.topics.events, idle=0.5):
        if m.key() == workflow_id.encode():
            e = decode_event(m.value())
            if e["type"] == type_name:
                out.append(e)
    return out


def test_a_charge_reissued_across_two_processes_is_quarantined_and_refunded(
    stack: dict[str, Any],
) -> None:
    kafka, tmp = stack["kafka"], stack["tmp"]
    world = World(stack["dsn"]).install()
    registry = world_tools.registry()
    ems = [_emitter(kafka, tmp / f"spool-{i}", registry) for i in range(2)]
    wf = f"wf-orchestrator-{uuid.uuid4().hex[:8]}"
    ctxs = [em.workflow(wf, agent_id="billing-bot", principal="ops@example.com") for em in ems]
    args = {"customer": "cus_123", "amount_cents": 4200, "currency": "EUR",
            "idempotency_key": f"order-{wf}"}  # fmt: skip
    done, refused = [], 0
    try:
        for i in range(20):  # the orchestrator re-issues the charge through either process
            try:
                done.append(ctxs[i % 2].call("payments.charge", world.tool("payments.charge"),
                                             args))  # fmt: skip
            except GateRefused:
                refused += 1
            time.sleep(0.25)
    finally:
        for em in ems:
            em.close(timeout=10)
    quarantines = wait_until(lambda: _on_events(kafka, wf, "Quarantine"), 30, "the quarantine")
    (q,) = quarantines
    (alert,) = _alerts(kafka, wf)
    assert alert["detector"] == "repeat" and q["alert_id"] == alert["event_id"]
    assert len(alert["related_event_ids"]) == 5  # caught at the K-th identical call
    assert "billing-bot called payments.charge for customer cus_123" in alert["detail"]
    assert q["by"] == "wakeline-detector/repeat" and q["scope"] == "workflow"
    assert refused > 0, "the quarantine never reached the SDK's gate"
    charges = {r["charge_id"] for r in done}

    def refunded() -> bool:
        return all(world.payments.get(c)["refunded_cents"] == 4200 for c in charges)

    wait_until(refunded, 60, "the charges to be refunded")


def test_polling_without_progress_and_a_hand_off_loop_are_caught(stack: dict[str, Any]) -> None:
    kafka, tmp = stack["kafka"], stack["tmp"]
    em = _emitter(kafka, tmp / "spool", EXTRA)
    poll = f"wf-poll-{uuid.uuid4().hex[:8]}"
    bounce = f"wf-bounce-{uuid.uuid4().hex[:8]}"
    silent = f"wf-pages-{uuid.uuid4().hex[:8]}"
    try:
        ctx = em.workflow(poll, agent_id="etl-bot", principal="ops@example.com")
        for i in range(8):  # the job never finishes
            ctx.call("jobs.status", lambda **a: {"state": "running"}, {"job": "j1", "since": i})
        ctx = em.workflow(silent, agent_id="etl-bot", principal="ops@example.com")
        for i in range(30):  # pagination: new cursor, new page
            ctx.call("jobs.status", lambda **a: {"page": a["cursor"]}, {"cursor": f"c{i}"})
        for i in range(10):
            agent, to = (("planner", "executor"), ("executor", "planner"))[i % 2]
            c = em.workflow(bounce, agent_id=agent, principal="ops@example.com")
            c.call("agents.handoff", lambda **a: {"ok": True}, {"to": to, "task": "refund #7"})
    finally:
        em.close(timeout=10)
    (a,) = wait_until(lambda: _alerts(kafka, poll), 30, "the no-progress alert")
    assert a["detector"] == "no_progress" and "same result" in a["detail"]
    (a,) = wait_until(lambda: _alerts(kafka, bounce), 30, "the hand-off alert")
    assert a["detector"] == "ping_pong" and "planner, executor" in a["detail"]
    assert _alerts(kafka, silent) == []
