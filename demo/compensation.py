"""The demo's second act: an agent acts on the example world, is quarantined, and the
compensator undoes what it can, newest first, and hands the rest to a human.

An agent (order-bot) charges a card, updates the customer's CRM record and e-mails the
customer, on the example outside world (`examples/world`, tables in PostgreSQL); the e-mail
leaves the outbox. An operator quarantines the workflow: the agent's next call is refused,
the compensator restores the CRM record and refunds the charge (newest first), and escalates
the e-mail, which cannot be recalled any more, with an incident report. The act then checks
the world's own tables, and that the compensator's events are in the verified ledger.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console

from wakeline.errors import WakelineError
from wakeline.infra.settings import DatabaseSettings, KafkaSettings


class ActFailed(WakelineError):
    """A step of the compensation act did not behave."""


def _wait(check: Any, timeout: float, what: str) -> Any:
    from wakeline.testkit.harness import wait_until

    try:
        return wait_until(check, timeout, what, every=0.1)
    except TimeoutError as e:
        raise ActFailed(str(e)) from e


def _rows(dsn: str, sql: str, *args: Any) -> list[tuple]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


def run_act(
    kafka: KafkaSettings,
    database: DatabaseSettings,
    store: Any,
    spools: Path,
    *,
    console: Console,
    step: int,
) -> dict[str, Any]:
    from wakeline.compensator.operator import quarantine
    from wakeline.producers import Emitter
    from wakeline.producers.errors import WorkflowQuarantined
    from wakeline_world import World
    from wakeline_world.tools import registry

    dsn = database.dsn
    world = World(dsn)
    report: dict[str, Any] = {}
    wf = f"order-{uuid.uuid4().hex[:8]}"
    customer = f"cus_{uuid.uuid4().hex[:6]}"
    record = f"crm-{customer}"

    console.rule(f"[bold]{step}. An agent acts on the outside world")
    emitter = Emitter(kafka, spool_dir=spools / "world", registry=registry())
    try:
        ctx = emitter.workflow(wf, agent_id="order-bot", principal="bob@example.com")
        world.crm.update(record, {"email": "ada@example.com", "tier": "silver"}, "seed-" + wf)
        charge = ctx.call(
            "payments.charge", world.tool("payments.charge"),
            {"customer": customer, "amount_cents": 4999, "currency": "EUR",
             "card_number": "4000 0000 0000 0077", "idempotency_key": f"{wf}/charge"},
        )  # fmt: skip
        ctx.call(
            "crm.update", world.tool("crm.update"),
            {"record_id": record, "fields": {"tier": "platinum", "credit_eur": 5000},
             "idempotency_key": f"{wf}/crm"},
        )  # fmt: skip
        mail = ctx.call(
            "email.send", world.tool("email.send"),
            {"to": "ada@example.com", "subject": "You are now platinum",
             "body": "Dear Ada, we raised your credit to EUR 5,000 ...",
             "idempotency_key": f"{wf}/mail"},
        )  # fmt: skip
        delivered = world.email.deliver_queued()
        console.print(
            f"  order-bot charged {charge['charge_id']} (EUR 49.99), raised {record} to "
            f"platinum, e-mailed ada@example.com ({mail['message_id']}, delivered: "
            f"{mail['message_id'] in delivered})"
        )

        console.rule(f"[bold]{step + 1}. An operator quarantines the workflow")
        q = quarantine(kafka, wf, reason="credit raised without approval", by="ops@example.com")
        qid = q["event_id"]
        report["quarantine_id"] = qid
        console.print(
            f"  wakeline quarantine {wf} --reason 'credit raised without approval': event "
            f"{qid} on partition {q['partition']} offset {q['offset']}"
        )
        assert emitter.gate is not None
        t0 = time.monotonic()
        _wait(lambda: emitter.gate.check(wf) is not None, 30, "the SDK gate to close")
        try:
            ctx.call("payments.charge", world.tool("payments.charge"),
                     {"customer": customer, "amount_cents": 100, "currency": "EUR",
                      "idempotency_key": f"{wf}/again"})  # fmt: skip
        except WorkflowQuarantined as e:
            console.print(
                f"  {time.monotonic() - t0:.2f} s later the agent's next charge is "
                f"refused: [yellow]{e}[/]"
            )
        else:
            raise ActFailed("a quarantined workflow's call ran")
    finally:
        emitter.close(30)

    console.rule(f"[bold]{step + 2}. The compensator undoes what it can, newest first")
    _wait(
        lambda: _rows(dsn, "SELECT 1 FROM compensator_plans WHERE quarantine_id = %s AND "
                      "state = 'done'", qid),
        60, "the compensation plan to finish",
    )  # fmt: skip
    actions = _rows(
        dsn, "SELECT seq, tool, compensation, state, attempts, detail FROM "
        "compensator_actions WHERE quarantine_id = %s ORDER BY seq", qid,
    )  # fmt: skip
    for seq, tool, comp_name, state, attempts, detail in actions:
        detail = detail or ""  # in full in the incident report below
        short = detail if len(detail) <= 60 else detail[:59] + "…"
        console.print(f"  {seq + 1}. {tool} <- {comp_name}: [bold]{state}[/] after {attempts} "
                      f"attempt(s): {short}", highlight=False)  # fmt: skip
    order = [a[1] for a in actions]
    if order != ["email.send", "crm.update", "payments.charge"]:
        raise ActFailed(f"compensations ran out of order (want newest first): {order}")
    tasks = _wait(
        lambda: _rows(
            dsn, "SELECT task_id, kind, title, report FROM compensator_tasks WHERE "
            "quarantine_id = %s ORDER BY kind, created_at", qid,
        ),
        30, "the incident report",
    )  # fmt: skip
    for task_id, kind, title, text in tasks:
        if kind != "plan":  # its text is the plan's report for that one call
            console.print(f"[bold]escalated call {task_id}[/]: {title}", highlight=False)
            continue
        console.print(f"[bold]incident report {task_id}[/] (`wakeline incidents show "
                      f"{task_id}`):", highlight=False)  # fmt: skip
        # the report's last section places each event in the ledger: left to `incidents show`
        shown = text.split("\n\nWhere each event sits")[0]
        for line in shown.splitlines():
            console.print("  " + line, highlight=False, markup=False)
    report["tasks"] = [t[0] for t in tasks]

    console.rule(f"[bold]{step + 3}. The outside world afterwards")
    refunds = world.payments.refunds(charge["charge_id"])
    crm = world.crm.get(record) or {}
    message = world.email.message(mail["message_id"]) or {}
    console.print(
        f"  payments: {len(refunds)} refund of {charge['charge_id']}; crm: {record} is "
        f"tier {crm.get('fields', {}).get('tier')!r} again; e-mail {mail['message_id']} "
        f"is {message.get('status')!r} (not recallable: a human sends the correction)"
    )
    if len(refunds) != 1:
        raise ActFailed(f"{len(refunds)} refunds of the charge, want exactly 1")
    if crm.get("fields", {}).get("tier") != "silver":
        raise ActFailed(f"the CRM record was not restored: {crm}")
    if not any(kind == "call" and "email.send" in title for _, kind, title, _ in tasks):
        raise ActFailed("the delivered e-mail was not escalated")
    report["refunds"] = len(refunds)
    report["refunded"] = [charge["charge_id"]]
    report["crm_tier"] = crm.get("fields", {}).get("tier")

    console.rule(f"[bold]{step + 4}. The compensation is in the ledger too")
    entries = _wait(
        lambda: [e for e in store.entries_for_workflow(wf)]
        if sum(b"CompensationResult" in e.leaf for e in store.entries_for_workflow(wf))
        >= len(actions)
        else None,
        60, "the compensator's events in the ledger",
    )  # fmt: skip
    console.print(
        f"  {len(entries)} events of {wf} ledgered, among them the compensator's "
        "CompensationStarted / CompensationResult / Escalation events"
    )
    report["workflow_id"] = wf
    report["ledgered"] = len(entries)
    return report
