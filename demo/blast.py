"""The demo's blast-radius act: stop and undo everything downstream of a bad event, and
nothing else; then go back to a known-good point of a workflow instead of starting over.

A research agent, prompt-injected, writes a bogus credit limit into a CRM record; a billing
agent in another workflow reads its output (a causal link, `parents=`) and charges on it.
The same research agent also reserves stock in an unrelated workflow. `wakeline workflow
impact` shows, as a dry run, what a taint quarantine of the bad event would stop and undo;
the taint quarantine fans out to both dependent workflows, the compensator restores the
record and refunds the charge, and the unrelated reservation stands. Then a fulfilment agent
saves a checkpoint, reserves stock and creates a VM; `wakeline workflow rollback --to` undoes
only what came after the checkpoint, releases the run and hands the saved state back, and
the agent resumes from it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from rich.console import Console

from wakeline.demo.compensation import ActFailed, _rows, _wait
from wakeline.infra.settings import DatabaseSettings, KafkaSettings

VM_SIZE = "small"


def _plans_done(dsn: str, workflows: list[str]) -> bool:
    rows = _rows(
        dsn, "SELECT workflow_id FROM compensator_plans WHERE workflow_id = ANY(%s) AND "
        "state = 'done'", workflows,
    )  # fmt: skip
    return {r[0] for r in rows} >= set(workflows)


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
    from wakeline.compensator.registry import load_handlers
    from wakeline.compensator.rollback import rollback
    from wakeline.compensator.scopes import impact
    from wakeline.producers import Emitter
    from wakeline.schemas import decode_event
    from wakeline_world import World
    from wakeline_world.tools import registry

    dsn = database.dsn
    world = World(dsn)
    report: dict[str, Any] = {}
    tag = uuid.uuid4().hex[:6]
    wf_research, wf_billing, wf_other = f"research-{tag}", f"billing-{tag}", f"stock-{tag}"
    record, customer, sku = f"crm-acme-{tag}", f"cus_acme_{tag}", f"sku-{tag}"
    world.crm.update(record, {"credit_limit_eur": 1000}, f"seed-{record}")
    world.inventory.restock(sku, 10)
    emitter = Emitter(kafka, spool_dir=spools / "blast", registry=registry())
    try:
        console.rule(f"[bold]{step}. A prompt-injected agent's output is used elsewhere")
        research = emitter.workflow(wf_research, agent_id="research-bot", principal="ops@x.io")
        bad = research.begin(
            "crm.update",
            {"record_id": record, "fields": {"credit_limit_eur": 900_000},
             "idempotency_key": f"{wf_research}/limit"},
        )  # fmt: skip
        bad.ok(world.crm.update(**bad.args))
        billing = emitter.workflow(wf_billing, agent_id="billing-bot", principal="ops@x.io")
        charge = billing.call(
            "payments.charge", world.tool("payments.charge"),
            {"customer": customer, "amount_cents": 250_000, "currency": "EUR",
             "idempotency_key": f"{wf_billing}/charge"},
            parents=[bad.intent_id],
        )  # fmt: skip
        other = emitter.workflow(wf_other, agent_id="research-bot", principal="ops@x.io")
        reserved = other.call(
            "inventory.reserve", world.tool("inventory.reserve"),
            {"sku": sku, "quantity": 1, "idempotency_key": f"{wf_other}/reserve"},
        )  # fmt: skip
        console.print(
            f"  research-bot ({wf_research}) set {record}'s credit limit to EUR 900,000 (event "
            f"{bad.intent_id}); billing-bot ({wf_billing}) charged EUR 2,500 on it "
            f"({charge['charge_id']}); research-bot also reserved {sku} in {wf_other}"
        )
        emitter.flush(15)

        console.rule(f"[bold]{step + 1}. wakeline workflow impact {bad.intent_id} (dry run)")
        handlers = load_handlers(["wakeline_world.undo"]).handlers

        def seen() -> dict[str, Any] | None:
            got = impact(dsn, kafka.topics.events, [bad.intent_id], handlers)
            return got if {wf_research, wf_billing} <= set(_workflows(got)) else None

        dry = _wait(seen, 60, "the compensator's causal index to hold both workflows")
        for wf in _workflows(dry):
            steps = [f"{c['action']} {c['tool']}" for c in dry["calls"] if c["workflow_id"] == wf]
            console.print(f"  would stop workflow {wf}: {', '.join(steps)}", highlight=False)
        if wf_other in _workflows(dry):
            raise ActFailed("the impact dry run reaches the unrelated workflow")

        console.rule(f"[bold]{step + 2}. A taint quarantine stops and undoes both, not more")
        q = quarantine(kafka, None, reason="research-bot was prompt-injected",
                       by="ops@example.com", tainted=[bad.intent_id])  # fmt: skip
        report["taint_quarantine_id"] = q["event_id"]
        _wait(lambda: _plans_done(dsn, [wf_research, wf_billing]), 90,
              "both workflows' compensation plans")  # fmt: skip
        crm = (world.crm.get(record) or {}).get("fields", {})
        refunds = world.payments.refunds(charge["charge_id"])
        held = (world.inventory.reservation(reserved["reservation_id"]) or {}).get("status")
        untouched = held == "held" and not _rows(
            dsn, "SELECT 1 FROM compensator_plans WHERE workflow_id = %s", wf_other
        )
        console.print(
            f"  {record}: credit limit EUR {crm.get('credit_limit_eur'):,} again; "
            f"{charge['charge_id']}: {len(refunds)} refund; {wf_other} "
            f"({reserved['reservation_id']}, {held}): {'untouched' if untouched else 'TOUCHED'}"
        )
        if crm.get("credit_limit_eur") != 1000 or len(refunds) != 1 or not untouched:
            raise ActFailed(f"the taint quarantine did not undo exactly the dependents: "
                            f"{crm}, {refunds}, untouched={untouched}")  # fmt: skip

        console.rule(f"[bold]{step + 3}. Back to a checkpoint instead of starting over")
        wf = f"fulfil-{tag}"
        ctx = emitter.workflow(wf, agent_id="fulfil-bot", principal="ops@example.com")
        ctx.call("crm.get", world.tool("crm.get"), {"record_id": record})
        cp = ctx.checkpoint("after-lookup", {"record": record, "step": 1})
        vm = ctx.call(
            "cloud.create_vm", world.tool("cloud.create_vm"),
            {"name": f"acme-{tag}", "size": VM_SIZE, "region": "eu-west-1",
             "idempotency_key": f"{wf}/vm"},
        )  # fmt: skip
        emitter.flush(15)
        _wait(lambda: _ledgered(store, wf, cp, decode_event), 60, "the checkpoint in the ledger")
        done = rollback(kafka, dsn, store, decode_event, wf, "after-lookup", by="ops@example.com",
                        wait_s=90)  # fmt: skip
        state = done["state"]
        vm_now = world.cloud.vm(vm["vm_id"]) or {}
        console.print(
            f"  wakeline workflow rollback {wf} --to after-lookup --wait: the VM "
            f"{vm['vm_id']} created after it is {vm_now.get('status', 'gone')}, the "
            f"lookup before it stands; saved state handed back: {state}"
        )
        resumed = emitter.resume(wf, "after-lookup", dsn=dsn)
        console.print(f"  emitter.resume: run {resumed.context.run_id} goes on from "
                      f"{resumed.state}")  # fmt: skip
        if vm_now.get("status") == "running":
            raise ActFailed(f"the VM created after the checkpoint still runs: {vm_now}")
        report.update(rollback_workflow=wf, rolled_back_vm=vm["vm_id"],
                      refunded=[charge["charge_id"]])  # fmt: skip
    finally:
        emitter.close(30)
    return report


def _workflows(impact_report: dict[str, Any]) -> list[str]:
    return list(impact_report.get("workflows", []))


def _ledgered(store: Any, wf: str, event_id: str, decode: Any) -> bool:
    return any(
        decode(e.record().value or b"").get("event_id") == event_id
        for e in store.entries_for_workflow(wf)
    )
