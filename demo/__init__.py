"""`wakeline demo`: one end-to-end scenario over the real stack, told as it happens.

An agent (billing-bot) handles a refund workflow through the SDK: it looks a customer up,
charges a card (the card number is redacted before anything is written), sends an e-mail
(the body kept only as a digest), and calls a tool that fails. A `wakeline worker` process
ledgers the events into Merkle-chained segments in PostgreSQL and publishes the audit topic.
The demo then signs a checkpoint, reads the audit trail back, verifies the whole ledger,
proves one event's inclusion the way a third party would, and finally shows that changing one
byte of an exported bundle (the charged amount) is caught and located by `ledger-verify`.

Then (demo/compensation.py) a second agent acts on the example outside world, is quarantined,
and the compensator undoes its calls newest first (the CRM record restored, the charge
refunded) and escalates what it cannot undo (a delivered e-mail) with an incident report; the
world's tables are checked. Then (demo/detection.py) the worker's detectors catch a charge re-
issued through two agent processes (quarantined, refunded) and two agents racing on one CRM
record (alerted). Then (demo/approvals.py) a policy lets ordinary work through, holds a large
charge until an approver signs for exactly that call, and denies an e-mail to an outside
address. Then (demo/blast.py) a taint quarantine stops and undoes a prompt-injected agent's bad
write and the charge another workflow made on it, and nothing else, and a workflow goes back to
a checkpoint. Last, the ledger, every event of every act included, is verified again.

Exit status is non-zero if any step does not behave: the demo is a test a person can watch.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from wakeline.errors import WakelineError
from wakeline.infra.settings import DatabaseSettings, KafkaSettings, StackSettings


class DemoFailed(WakelineError):
    """A step of the demo did not behave as the product promises."""


class OutOfStock(Exception):
    pass


def _tools() -> Any:
    from wakeline.producers import ToolRegistry, ToolSpec

    return ToolRegistry(
        [
            ToolSpec(
                "crm.lookup", reversibility="read", impact="low", reads=("customer:{customer}",)
            ),
            ToolSpec(
                "stripe.charge",
                reversibility="compensable",
                impact="high",
                writes=("customer:{customer}",),
                compensation="stripe.refund",
                redact=frozenset({"card_number"}),
            ),
            ToolSpec(
                "email.send",
                reversibility="irreversible",
                impact="medium",
                digest_only=frozenset({"body"}),
            ),
            ToolSpec(
                "inventory.reserve",
                reversibility="reversible",
                impact="medium",
                writes=("sku:{sku}",),
                compensation="inventory.release",
            ),
        ]  # fmt: skip
    )


def _run_agent(kafka: KafkaSettings, home: Path, workflow_id: str, console: Console) -> None:
    from wakeline.producers import Emitter

    def crm_lookup(customer: int) -> dict[str, Any]:
        return {"customer": customer, "name": "Ada Example", "tier": "gold"}

    def stripe_charge(customer: int, amount: int, currency: str, card_number: str) -> dict:
        return {"charge_id": f"ch_{uuid.uuid4().hex[:12]}", "status": "succeeded"}

    def email_send(to: str, subject: str, body: str) -> dict[str, str]:
        return {"message_id": f"<{uuid.uuid4().hex[:10]}@mail>"}

    def inventory_reserve(sku: str, qty: int) -> None:
        raise OutOfStock(f"{sku}: only 0 left, wanted {qty}")

    emitter = Emitter(kafka, spool_dir=home / "spool" / "demo", registry=_tools())
    try:
        ctx = emitter.workflow(workflow_id, agent_id="billing-bot", principal="alice@example.com")
        ctx.call("crm.lookup", crm_lookup, {"customer": 123})
        ctx.call("stripe.charge", stripe_charge,
                 {"customer": 123, "amount": 1299, "currency": "USD",
                  "card_number": "4242424242424242"})  # fmt: skip
        ctx.call("email.send", email_send,
                 {"to": "ada@example.com", "subject": "Your refund",
                  "body": "Dear Ada, your account was charged USD 12.99 ..."})  # fmt: skip
        try:
            ctx.call("inventory.reserve", inventory_reserve, {"sku": "WIDGET-9", "qty": 2})
        except OutOfStock as e:
            console.print(f"  the tool raised [yellow]{type(e).__name__}: {e}[/] (recorded)")
        ctx.complete_workflow("failed")
        undelivered = emitter.flush(30)
    finally:
        emitter.close(30)
    if undelivered:
        raise DemoFailed(f"{undelivered} events were not delivered to {kafka.bootstrap}")
    console.print(f"  agent billing-bot ran workflow [bold]{workflow_id}[/]: 4 tool calls, sealed")


def _wait_for_ledger(store: Any, workflow_id: str, expected: int, timeout: float = 60) -> list:
    deadline = time.monotonic() + timeout
    entries: list = []
    while time.monotonic() < deadline:
        entries = store.entries_for_workflow(workflow_id)
        if len(entries) >= expected:
            return entries
        time.sleep(0.2)
    raise DemoFailed(
        f"only {len(entries)} of {expected} events of {workflow_id} reached the ledger in "
        f"{timeout:.0f}s; is `wakeline worker` able to reach PostgreSQL?"
    )


def _audit_trail(kafka: KafkaSettings, workflow_id: str, expected: int) -> list[dict]:
    from wakeline.processors.tail import follow_audit

    return list(
        follow_audit(
            kafka, from_beginning=True, workflow=workflow_id, limit=expected, idle_timeout=20
        )  # fmt: skip
    )


def run_demo(kafka: KafkaSettings, database: DatabaseSettings, *, console: Console) -> dict:
    from wakeline.ledger.service import check_event_proof, event_proof, export_bundle
    from wakeline.ledger.sources import verify_bundle, verify_store
    from wakeline.ledger.store_postgres import PostgresLedgerStore
    from wakeline.processors.checkpointing import load_signer, signing_key_path
    from wakeline.processors.tail import format_line
    from wakeline.schemas import decode_event
    from wakeline.testkit.harness import start_worker, stop_worker

    home = StackSettings.from_env().home
    out_dir = home / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    workflow_id = f"refund-{uuid.uuid4().hex[:8]}"
    report: dict[str, Any] = {"workflow_id": workflow_id}

    console.rule("[bold]1. The ledger worker starts")
    worker = start_worker(
        kafka, database.dsn, "--segment-max-age-ms", "200", "--checkpoint-interval-s", "0",
        "--detectors",
        log_path=str(out_dir / "worker.log"),
    )  # fmt: skip
    console.print(f"  wakeline worker pid {worker.pid} (log: {out_dir / 'worker.log'})")
    try:
        console.rule("[bold]2. An agent acts, through the SDK")
        _run_agent(kafka, home, workflow_id, console)
        store = PostgresLedgerStore(database.dsn)
        try:
            # 4 intents + 4 results + the seal
            entries = _wait_for_ledger(store, workflow_id, 9)
            console.rule("[bold]3. Every event is in the ledger")
            table = Table()
            for col in ("partition", "leaf", "offset", "event", "detail", "leaf hash"):
                table.add_column(col)
            for e in entries:
                ev = decode_event(e.record().value or b"")
                detail = ev.get("tool") or ev.get("status") or ""
                if ev["type"] == "WorkflowCompleted":
                    detail = f"sealed: {ev['event_count']} events"
                table.add_row(str(e.partition), str(e.leaf_index), str(e.offset), ev["type"],
                              str(detail), e.leaf_hash.hex()[:16] + "...")  # fmt: skip
            console.print(table)
            charge = next(
                e for e in entries
                if decode_event(e.record().value or b"").get("tool") == "stripe.charge"
            )  # fmt: skip
            charge_event = decode_event(charge.record().value or b"")
            report["charge_event_id"] = charge_event["event_id"]
            if any(b"4242424242424242" in e.leaf for e in entries):
                raise DemoFailed("the card number reached the log")
            console.print(f"  the charge's arguments as logged: {charge_event['args']}")

            signer = load_signer(signing_key_path())
            from wakeline.processors.checkpointing import sign_checkpoint

            note = sign_checkpoint(store, signer, force=True)
            if note is None:
                raise DemoFailed("no checkpoint could be signed")
            console.rule("[bold]4. A signed checkpoint (C2SP signed note)")
            console.print(note.decode(), highlight=False)

            console.rule("[bold]5. The audit trail compliance tools read")
            trail = _audit_trail(kafka, workflow_id, len(entries))
            for rec in trail:
                console.print("  " + format_line(rec), highlight=False, markup=False)
            if len(trail) < len(entries):
                raise DemoFailed(f"audit topic holds {len(trail)} of {len(entries)} records")
            report["audit_records"] = len(trail)

            console.rule("[bold]6. An auditor verifies the whole ledger")
            vkey = signer.verifier.vkey()
            verdict = verify_store(store, trusted_keys=[vkey])
            console.print(f"  from PostgreSQL: [bold]{verdict.verdict}[/] {verdict.stats}")
            if not verdict.ok:
                raise DemoFailed("ledger does not verify: " + verdict.first.describe())
            bundle = out_dir / "ledger.bundle"
            with open(bundle, "wb") as f:
                counts = export_bundle(store, f, public_keys=[vkey])
            sound = verify_bundle(bundle, trusted_keys=[vkey])
            console.print(f"  exported {counts} to {bundle}")
            console.print(f"  from the bundle, offline: [bold]{sound.verdict}[/]")
            if not sound.ok:
                raise DemoFailed("bundle does not verify: " + sound.first.describe())
            report["verdict"] = sound.verdict

            console.rule("[bold]7. A third party checks one event's inclusion proof")
            proof = event_proof(store, charge_event["event_id"])
            check_event_proof(proof, [vkey])
            console.print(
                f"  event {proof['event_id']} is leaf {proof['leaf_index']} of the "
                f"{proof['tree_size']}-leaf tree of partition {proof['partition']}: "
                f"{len(proof['inclusion_proof'])} hashes prove it [green]ok[/]"
            )

            console.rule("[bold]8. Someone edits the exported ledger: USD 12.99 becomes 99.99")
            data = bundle.read_bytes()
            needle = b'"amount":1299'
            at = data.find(needle, max(data.find(charge.leaf), 0))
            if at < 0:
                raise DemoFailed("the charge's amount is not in the bundle")
            forged = out_dir / "ledger.forged.bundle"
            forged.write_bytes(data[:at] + b'"amount":9999' + data[at + len(needle) :])
            tampered = verify_bundle(forged, trusted_keys=[vkey])
            console.print(f"  ledger-verify: [bold red]{tampered.verdict}[/] (exit "
                          f"{tampered.exit_code})")  # fmt: skip
            first = tampered.first
            if tampered.ok or first is None:
                raise DemoFailed("the forged bundle verified")
            console.print("  " + first.describe(), highlight=False, markup=False)
            report["forged_verdict"] = tampered.verdict
            report["forged_first_finding"] = first.to_dict()

            from wakeline.demo.compensation import run_act

            report["compensation"] = run_act(
                kafka, database, store, home, out_dir, console=console, step=9
            )
            from wakeline.demo.detection import run_act as detection_act

            report["detection"] = detection_act(
                kafka, database, home, out_dir, console=console, step=15
            )
            from wakeline.demo.approvals import run_act as approvals_act

            report["approvals"] = approvals_act(
                kafka, database, home, out_dir, console=console, step=17
            )
            from wakeline.demo.blast import run_act as blast_act

            report["blast"] = blast_act(
                kafka, database, store, home, out_dir, console=console, step=21
            )
            console.rule("[bold]25. The auditor verifies the ledger again")
            again = verify_store(store, trusted_keys=[vkey])
            console.print(f"  from PostgreSQL: [bold]{again.verdict}[/] {again.stats}")
            if not again.ok:
                raise DemoFailed("ledger does not verify: " + again.first.describe())
        finally:
            store.close()
    finally:
        stop_worker(worker)
    console.rule("[bold green]demo complete")
    return report
