"""`wakeline demo`: one end-to-end scenario over the real stack, told as it happens.

It runs in a namespace of its own (demo/namespace.py): a topic prefix and a database made
for the run, so whatever else is on the stack is neither verified nor touched. One
`wakeline worker` (ledger, audit, approval queue, detectors) and one `wakeline compensator`
(with the example world's compensating actions) serve the whole story.

An agent (billing-bot) handles a refund workflow through the SDK: it looks a customer up,
charges a card (the card number is redacted before anything is written), sends an e-mail
(the body kept only as a digest), and calls a tool that fails; the events are shown in the
ledger and in the audit trail. Then, on the example outside world (`examples/world`):
a policy lets ordinary work through, holds a large charge until an approver signs for
exactly that call, and denies an e-mail to an outside address (demo/approvals.py); an
operator quarantines an agent, the compensator undoes its calls newest first and escalates
the delivered e-mail with its incident report (demo/compensation.py); the worker's detectors
catch a charge re-issued through two agent processes (quarantined, each charge refunded
newest first) and two agents racing on one CRM record (demo/detection.py); a taint
quarantine stops and undoes a prompt-injected agent's write and the charge another workflow
made on it, and nothing else, and a workflow goes back to a checkpoint (demo/blast.py).

Last, the world's tables are checked (each refund exactly once), a checkpoint of the whole
ledger is signed, the ledger verified from PostgreSQL and as an exported bundle offline, one
event's inclusion proof checked, and one byte of a copy of the bundle (the charged amount)
changed: `ledger-verify` names the event.

Exit status is non-zero if any step does not behave: the demo is a test a person can watch.
"""

from __future__ import annotations

import os
import shutil
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


def _run_agent(kafka: KafkaSettings, spool: Path, workflow_id: str, console: Console) -> None:
    from wakeline.producers import Emitter

    def crm_lookup(customer: int) -> dict[str, Any]:
        return {"customer": customer, "name": "Ada Example", "tier": "gold"}

    def stripe_charge(customer: int, amount: int, currency: str, card_number: str) -> dict:
        return {"charge_id": f"ch_{uuid.uuid4().hex[:12]}", "status": "succeeded"}

    def email_send(to: str, subject: str, body: str) -> dict[str, str]:
        return {"message_id": f"<{uuid.uuid4().hex[:10]}@mail>"}

    def inventory_reserve(sku: str, qty: int) -> None:
        raise OutOfStock(f"{sku}: only 0 left, wanted {qty}")

    emitter = Emitter(kafka, spool_dir=spool, registry=_tools())
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


def _ledger_complete(kafka: KafkaSettings, store: Any, timeout: float = 60) -> int:
    """Wait until the ledger holds every record of the events topic; the count."""
    from confluent_kafka import Consumer, TopicPartition

    from wakeline.testkit.harness import wait_for_ledger

    topic = kafka.topics.events
    c = Consumer(kafka.client_config(**{"group.id": "wakeline-demo", "log_level": 0}))
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        total = sum(c.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in parts)
    finally:
        c.close()
    try:
        wait_for_ledger(store, total, timeout)
    except TimeoutError as e:
        raise DemoFailed(f"the ledger skipped events: {e}") from e
    return total


def _world_check(dsn: str, report: dict[str, Any], console: Console) -> None:
    """The example world's own tables against what the acts did: every charge that was to be
    undone refunded exactly once, and no other charge refunded."""
    from wakeline.demo.compensation import _rows

    undone = {c for act in report.values() if isinstance(act, dict)
              for c in act.get("refunded", ())}  # fmt: skip
    kept = {c for act in report.values() if isinstance(act, dict) for c in act.get("kept", ())}
    refunds = dict(_rows(dsn, "SELECT charge_id, count(*) FROM world.refunds GROUP BY charge_id"))
    charges = _rows(dsn, "SELECT count(*) FROM world.charges")[0][0]
    console.print(
        f"  world.charges: {charges} charges; world.refunds: {sum(refunds.values())} refunds of "
        f"{len(refunds)} charges, each refunded {sorted(set(refunds.values()))} time(s); "
        f"the {len(kept)} approved charges stand"
    )
    if set(refunds) != undone or any(n != 1 for n in refunds.values()) or kept & set(refunds):
        raise DemoFailed(
            f"the world disagrees: refunds {refunds}, want exactly one of each of "
            f"{sorted(undone)} and none of {sorted(kept)}"
        )


def run(
    kafka: KafkaSettings, database: DatabaseSettings, *, console: Console, keep: bool = False
) -> dict:
    """`wakeline demo`: `run_demo` in a namespace of its own (demo/namespace.py), made for the
    run on the configured broker and PostgreSQL server after the earlier runs' are removed.
    The namespace is removed at the end, unless `keep` or the run failed: then
    `$WAKELINE_HOME/demo/env.sh` points wakeline at it."""
    from psycopg import conninfo

    from wakeline.demo import namespace

    out_dir = StackSettings.from_env().home / "demo"
    namespace.refuse_demo_namespace(kafka, database)
    with namespace.exclusive(out_dir):
        removed, failed = namespace.remove_previous(kafka, out_dir)
        ns = namespace.create(kafka, database, out_dir)
        db_name = conninfo.conninfo_to_dict(ns.database.dsn)["dbname"]
        console.print(
            f"the demo's namespace: topics {ns.kafka.topics.prefix}*, database "
            f"{db_name}" + (f" (earlier runs' removed: {len(removed)})" if removed else ""),
            highlight=False,
        )
        for f in failed:
            console.print(f"  [yellow]an earlier run's namespace stays (next run retries): {f}[/]")
        done = False
        try:
            report = run_demo(ns.kafka, ns.database, console=console)
            done = True
        finally:
            if keep or not done:
                env = namespace.write_env(ns, out_dir)
                shown = os.path.relpath(env) if env.is_relative_to(Path.cwd()) else str(env)
                console.print(
                    f"the demo's topics and database are kept: `. {shown}; wakeline workflow "
                    "list` (also `wakeline approvals list`, `wakeline incidents list`); the next "
                    "`wakeline demo` removes them",
                    highlight=False,
                )
            else:
                try:
                    namespace.discard(ns, out_dir)
                except Exception as e:  # noqa: BLE001 - the next run removes it
                    console.print(f"  [yellow]the namespace stays until the next run: {e}[/]")
        report["namespace"] = {"run": ns.run, "prefix": ns.kafka.topics.prefix,
                               "database": db_name, "kept": keep}  # fmt: skip
    return report


def run_demo(kafka: KafkaSettings, database: DatabaseSettings, *, console: Console) -> dict:
    """The scenario on the topics of `kafka` and the database of `database`, which it verifies
    whole: give it a namespace of its own (`run`)."""
    try:
        from wakeline_world import World
    except ImportError as e:
        raise DemoFailed(
            "the example world is not installed: `make demo` installs it "
            "(pip install -e examples/world)"
        ) from e
    from wakeline.ledger.service import check_event_proof, event_proof, export_bundle
    from wakeline.ledger.sources import verify_bundle, verify_store
    from wakeline.ledger.store_postgres import PostgresLedgerStore
    from wakeline.processors.checkpointing import load_signer, signing_key_path
    from wakeline.processors.tail import format_line
    from wakeline.schemas import decode_event
    from wakeline.testkit.harness import start_compensator, start_worker, stop_worker

    home = StackSettings.from_env().home
    out_dir = home / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    spools = out_dir / "spool"  # the SDK's spools: a run never replays an earlier run's
    shutil.rmtree(spools, ignore_errors=True)
    for log in ("worker.log", "compensator.log"):
        (out_dir / log).unlink(missing_ok=True)
    World(database.dsn).install()
    workflow_id = f"refund-{uuid.uuid4().hex[:8]}"
    report: dict[str, Any] = {"workflow_id": workflow_id}

    console.rule("[bold]1. The worker and the compensator start, for the whole story")
    worker = start_worker(
        kafka, database.dsn, "--segment-max-age-ms", "200", "--checkpoint-interval-s", "0",
        "--detectors",
        log_path=str(out_dir / "worker.log"),
    )  # fmt: skip
    # one compensator for every act: the world's handlers undo what each act's agents did
    # (the first agent's tools are never quarantined, so need no handler)
    comp = start_compensator(
        kafka, database.dsn, "--handlers", "wakeline_world.undo",
        log_path=str(out_dir / "compensator.log"), env={"WAKELINE_WORLD_DSN": database.dsn},
    )  # fmt: skip
    console.print(
        f"  wakeline worker (ledger, audit, approvals, detectors) pid {worker.pid}; wakeline "
        f"compensator --handlers wakeline_world.undo pid {comp.pid} (logs: {out_dir})"
    )
    try:
        console.rule("[bold]2. An agent acts, through the SDK")
        _run_agent(kafka, spools / "refund", workflow_id, console)
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

            console.rule("[bold]4. The audit trail compliance tools read")
            trail = _audit_trail(kafka, workflow_id, len(entries))
            for rec in trail:
                console.print("  " + format_line(rec), highlight=False, markup=False)
            if len(trail) < len(entries):
                raise DemoFailed(f"audit topic holds {len(trail)} of {len(entries)} records")
            report["audit_records"] = len(trail)

            from wakeline.demo.approvals import run_act as approvals_act
            from wakeline.demo.blast import run_act as blast_act
            from wakeline.demo.compensation import run_act as compensation_act
            from wakeline.demo.detection import run_act as detection_act

            report["approvals"] = approvals_act(
                kafka, database, spools, out_dir, console=console, step=5
            )
            report["compensation"] = compensation_act(
                kafka, database, store, spools, console=console, step=9
            )
            report["detection"] = detection_act(kafka, database, spools, console=console, step=14)
            report["blast"] = blast_act(kafka, database, store, spools, console=console, step=16)

            console.rule("[bold]20. The outside world at the end: each refund exactly once")
            _world_check(database.dsn, report, console)

            console.rule("[bold]21. A signed checkpoint of the whole ledger (C2SP signed note)")
            ledgered = _ledger_complete(kafka, store)
            from wakeline.processors.checkpointing import sign_checkpoint

            signer = load_signer(signing_key_path())
            note = sign_checkpoint(store, signer, force=True)
            if note is None:
                raise DemoFailed("no checkpoint could be signed")
            console.print(f"  all {ledgered} events of the story ledgered; the checkpoint:")
            console.print(note.decode(), highlight=False)

            console.rule("[bold]22. An auditor verifies the whole ledger, and offline")
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
            console.print(f"  ledger-verify {bundle.name}, offline: [bold]{sound.verdict}[/]")
            if not sound.ok:
                raise DemoFailed("bundle does not verify: " + sound.first.describe())
            report["verdict"] = sound.verdict

            console.rule("[bold]23. A third party checks one event's inclusion proof")
            proof = event_proof(store, charge_event["event_id"])
            check_event_proof(proof, [vkey])
            console.print(
                f"  the USD 12.99 charge, event {proof['event_id']}, is leaf "
                f"{proof['leaf_index']} of the {proof['tree_size']}-leaf tree of partition "
                f"{proof['partition']}: {len(proof['inclusion_proof'])} hashes prove it "
                "[green]ok[/]"
            )

            console.rule("[bold]24. One byte of a copy of the bundle changes: USD 12.99 is 92.99")
            data = bundle.read_bytes()
            needle = b'"amount":1299'
            at = data.find(needle, max(data.find(charge.leaf), 0))
            if at < 0:
                raise DemoFailed("the charge's amount is not in the bundle")
            forged = out_dir / "ledger.forged.bundle"
            forged.write_bytes(data[:at] + b'"amount":9299' + data[at + len(needle) :])
            tampered = verify_bundle(forged, trusted_keys=[vkey])
            console.print(f"  ledger-verify {forged.name}: [bold red]{tampered.verdict}[/] "
                          f"(exit {tampered.exit_code})")  # fmt: skip
            first = tampered.first
            if tampered.ok or first is None:
                raise DemoFailed("the forged bundle verified")
            console.print("  " + first.describe(), highlight=False, markup=False)
            report["forged_verdict"] = tampered.verdict
            report["forged_first_finding"] = first.to_dict()
        finally:
            store.close()
    finally:
        codes = [stop_worker(comp), stop_worker(worker)]
    console.print(f"  the compensator and the worker stopped (exit {codes[0]}, {codes[1]})")
    console.rule("[bold green]demo complete")
    return report
