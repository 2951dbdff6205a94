"""The demo's third act: the worker's detectors catch what no single agent process sees.

An orchestrator re-issues the same charge, each time with a new idempotency key (so each
one charges again), through two SDK processes (each sees too few repeats to refuse it): the
worker's loop detector, comparing the calls without the volatile key, raises an alert and
quarantines the workflow, and the compensator refunds every charge, newest first. Then two
agents, in different workflows, update one CRM record at the same time: the race detector
raises an alert naming both.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from wakeline.demo.compensation import ActFailed, _rows, _wait
from wakeline.infra.settings import DatabaseSettings, KafkaSettings


def _alerts(kafka: KafkaSettings, **match: str) -> list[dict[str, Any]]:
    from wakeline.schemas import decode_event
    from wakeline.testkit.harness import read_topic

    out = []
    for m in read_topic(kafka, kafka.topics.alerts, idle=0.5):
        e = decode_event(m.value())
        if all(e.get(k) == v for k, v in match.items()):
            out.append(e)
    return out


def run_act(
    kafka: KafkaSettings,
    database: DatabaseSettings,
    spools: Path,
    *,
    console: Console,
    step: int,
) -> dict[str, Any]:
    from wakeline.producers import Emitter
    from wakeline.producers.errors import GateRefused
    from wakeline_world import World
    from wakeline_world.tools import registry

    dsn = database.dsn
    world = World(dsn)
    report: dict[str, Any] = {}
    tools = registry()
    # each re-issue has a new idempotency key (so each one charges again): the key is
    # volatile, the detectors compare the calls without it
    tools.register(
        replace(tools.get("payments.charge"), volatile_fields=frozenset({"idempotency_key"})),
        replace=True,
    )
    emitters = [
        Emitter(kafka, spool_dir=spools / f"loop-{i}", registry=tools, loop_guard=False)
        for i in range(2)
    ]
    try:
        console.rule(f"[bold]{step}. A runaway loop across two agent processes")
        wf = f"orchestrator-{uuid.uuid4().hex[:8]}"
        ctxs = [e.workflow(wf, agent_id="billing-bot", principal="ops@example.com")
                for e in emitters]  # fmt: skip
        charged, refused = [], 0
        for i in range(16):  # the orchestrator re-issues the charge through either process
            args = {"customer": "cus_123", "amount_cents": 4200, "currency": "EUR",
                    "idempotency_key": f"{wf}/charge-{i}"}  # fmt: skip
            try:
                charged.append(
                    ctxs[i % 2].call("payments.charge", world.tool("payments.charge"), args)
                )
            except GateRefused:
                refused += 1
            time.sleep(0.25)
        (alert,) = _wait(lambda: _alerts(kafka, workflow_id=wf, detector="repeat"), 30,
                         "the loop alert")  # fmt: skip
        console.print(f"  [bold]alert[/] ({alert['detector']}): {alert['detail']}",
                      highlight=False)  # fmt: skip
        console.print(
            f"  {len(charged)} charge call(s) ran, {refused} refused once the detector's "
            "quarantine reached the SDK gates"
        )
        if refused == 0:
            raise ActFailed("the detector's quarantine never reached the SDK's gate")
        charge_ids = [c["charge_id"] for c in charged]

        def refunded() -> list[tuple] | None:  # (quarantine, charge), in the plan's order
            rows = _rows(
                dsn, "SELECT a.quarantine_id, a.external_ids->>'charge_id' FROM "
                "compensator_actions a JOIN compensator_plans p USING (quarantine_id) WHERE "
                "p.workflow_id = %s AND p.state = 'done' AND a.tool = 'payments.charge' AND "
                "a.state = 'done' ORDER BY a.seq", wf,
            )  # fmt: skip
            return rows if len(rows) >= len(charge_ids) else None

        rows = _wait(refunded, 60, "the refunds of the loop's charges")
        qid, undone = rows[0][0], [r[1] for r in rows]
        refunds = [r for c in charge_ids for r in world.payments.refunds(c)]
        late = _late(charge_ids, undone)
        console.print(
            f"  quarantine {qid} by the detector; the compensator refunded the "
            f"{len(undone)} charges newest first: {', '.join(undone)} ({len(refunds)} refunds)"
            + (f"; {late} of them ran while the quarantine reached the SDK gates, and joined "
               "the plan after it" if late else "")
        )  # fmt: skip
        if late is None or len(refunds) != len(charge_ids):
            raise ActFailed(
                f"charges {charge_ids}, refunded in the order {undone}, {len(refunds)} refunds: "
                "want each refunded once, newest first"
            )
        report["loop_alert"] = alert["detail"]
        report["loop_refunds"] = len(refunds)
        report["refunded"] = charge_ids

        console.rule(f"[bold]{step + 1}. A race: two agents update one CRM record at once")
        record = f"crm-{uuid.uuid4().hex[:6]}"
        a = emitters[0].workflow(f"sync-{uuid.uuid4().hex[:6]}", agent_id="crm-sync",
                                 principal="ops@example.com")  # fmt: skip
        b = emitters[1].workflow(f"support-{uuid.uuid4().hex[:6]}", agent_id="support-bot",
                                 principal="ops@example.com")  # fmt: skip
        calls = []
        for ctx, fields in ((a, {"tier": "gold"}), (b, {"tier": "bronze"})):
            args = {"record_id": record, "fields": fields,
                    "idempotency_key": f"{ctx.agent_id}/{uuid.uuid4()}"}  # fmt: skip
            calls.append(ctx.begin("crm.update", args))  # both begin before either ends
        for call in calls:
            call.ok(world.crm.update(**call.args))
        for e in emitters:
            e.flush(15)
        (race,) = _wait(lambda: _alerts(kafka, resource=f"crm:{record}"), 60, "the race alert")
        console.print(f"  [bold]alert[/] ({race['detector']}): {race['detail']}",
                      highlight=False)  # fmt: skip
        if not {c.intent_id for c in calls} <= set(race["related_event_ids"]):
            raise ActFailed("the race alert does not name both intents")
        report["race_alert"] = race["detail"]
    finally:
        for e in emitters:
            e.close(15)
    return report


def _late(charges: list[str], undone: list[str]) -> int | None:
    """How many of `charges` (oldest first) joined the plan late, if `undone` (in the plan's
    order) undoes each once, newest first: the plan's first calls newest first, then each
    batch of later calls, all newer than what came before, newest first. None otherwise."""
    if sorted(undone) != sorted(charges):
        return None
    order = [charges.index(c) for c in undone]
    runs: list[list[int]] = []
    for i in order:
        if runs and i < runs[-1][-1]:
            runs[-1].append(i)
        else:
            runs.append([i])
    for before, run in zip(runs, runs[1:], strict=False):
        if min(run) <= max(before):
            return None
    return len(order) - len(runs[0]) if runs[0][-1] == 0 else None
