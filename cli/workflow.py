"""`wakeline workflow plan WF`: the compensation plan of a workflow, as a dry run.

Thin: read the workflow's ledgered events, load the handler modules, call
`wakeline.compensator.plan.build_plan`, print. Nothing is executed. Tests pass a ledger
store in the click context object (`obj={"ledger_store": store}`); otherwise PostgreSQL.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import click

from wakeline.errors import SchemaError, WakelineError


@click.group("workflow")
def workflow() -> None:
    """A workflow's calls and what the compensator does about them."""


@workflow.command("plan")
@click.argument("workflow_id")
@click.option("--run", "run_id", help="Plan a quarantine of this run only.")
@click.option(
    "--handlers",
    "handler_modules",
    multiple=True,
    metavar="MODULE",
    help="Python module declaring compensating actions (repeatable, or comma-separated).",
)
@click.option("--dsn", help="PostgreSQL DSN (default: WAKELINE_DSN or the local stack).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def plan_cmd(
    ctx: click.Context,
    workflow_id: str,
    run_id: str | None,
    handler_modules: tuple[str, ...],
    dsn: str | None,
    as_json: bool,
) -> None:
    """Print what a quarantine of WORKFLOW_ID compensates, skips and escalates, newest call
    first, without running anything. Uses the quarantine in force, if any (--run plans one
    of that run instead); otherwise shows the plan as if it were quarantined now. Exits 1
    when some of the workflow's ledgered events cannot be decoded (the plan may miss calls)."""
    from wakeline.cli.main import emit_json, run_guarded

    injected = ctx.obj.get("ledger_store") if isinstance(ctx.obj, dict) else None
    report = run_guarded(lambda: _plan(workflow_id, run_id, handler_modules, dsn, injected))
    if as_json:
        emit_json(report)
    else:
        _print(report)
    if report["undecodable"]:
        sys.exit(1)


def _plan(
    workflow_id: str,
    run_id: str | None,
    modules: tuple[str, ...],
    dsn: str | None,
    store: Any,
) -> dict[str, Any]:
    from wakeline.compensator.plan import Scope, active_quarantine, build_plan
    from wakeline.compensator.registry import (
        CompensationRegistry,
        load_handlers,
        missing_compensations,
    )

    names = [m for raw in modules for m in raw.split(",") if m.strip()]
    loaded = load_handlers(names) if names else None
    handlers = loaded.handlers if loaded is not None else CompensationRegistry()
    if store is not None:
        from wakeline.schemas import decode_event

        entries = store.entries_for_workflow(workflow_id)
        decode: Callable[[bytes], dict[str, Any]] = decode_event
    else:
        from wakeline.cli.ledger import _dsn
        from wakeline.infra.schema_registry import PostgresSchemaResolver
        from wakeline.ledger.store_postgres import PostgresLedgerStore
        from wakeline.schemas import Codec, packaged_schemas

        url = _dsn(dsn)
        decode = Codec(packaged_schemas(), resolver=PostgresSchemaResolver(url)).decode
        with PostgresLedgerStore(url) as pg:
            entries = pg.entries_for_workflow(workflow_id)
    if not entries:
        raise WakelineError(f"workflow {workflow_id} has no ledgered events")
    events, positions, undecodable = [], {}, []
    for e in entries:
        where = {"partition": e.partition, "leaf_index": e.leaf_index, "offset": e.offset}
        value = e.record().value
        try:
            event = decode(value or b"")
        except SchemaError as err:
            undecodable.append({**where, "error": str(err)})
            continue
        events.append(event)
        positions[event["event_id"]] = where
    quarantine = active_quarantine(events)
    if run_id is not None:
        scope = Scope("run", run_id, quarantine_id=quarantine and quarantine["event_id"])
    elif quarantine is not None:
        scope = Scope.of(quarantine)
    else:
        scope = Scope()
    now_us = time.time_ns() // 1000
    steps = build_plan(events, handlers, scope=scope, now_us=now_us)
    missing = {}
    if loaded is not None and loaded.tools is not None:
        missing = missing_compensations(handlers, loaded.tools)
    return {
        "workflow_id": workflow_id,
        "quarantine": None if quarantine is None else _quarantine(quarantine),
        "scope": {"kind": scope.kind, "run_id": scope.run_id, "describe": scope.describe()},
        "now_us": now_us,
        "handler_modules": [] if loaded is None else loaded.modules,
        "handlers": handlers.names(),
        "missing_compensations": missing,
        "steps": [{**s.to_json(), "ledger": positions.get(s.intent_id)} for s in steps],
        "undecodable": undecodable,
    }


def _quarantine(q: Mapping[str, Any]) -> dict[str, Any]:
    return {k: q.get(k) for k in ("event_id", "time", "scope", "run_id", "reason", "by")}


def _print(report: dict[str, Any]) -> None:
    from wakeline.schemas import rfc3339_micros

    wf, q = report["workflow_id"], report["quarantine"]
    scope = report["scope"]["describe"]
    if q is None:
        click.echo(f"workflow {wf} is not quarantined: the plan if it were, now ({scope})")
    else:
        click.echo(
            f"workflow {wf} quarantined at {rfc3339_micros(q['time'])} by {q['by']}: "
            f"{q['reason']} (event {q['event_id']}; {scope})"
        )
    if not report["handler_modules"]:
        click.echo("no --handlers: every call needing a compensating action shows as escalated")
    for name, tools in sorted(report["missing_compensations"].items()):
        click.echo(f"warning: no handler provides {name} (named by {', '.join(tools)})", err=True)
    steps = report["steps"]
    counts = {a: sum(1 for s in steps if s["action"] == a) for a in ("compensate", "escalate")}
    click.echo(
        f"dry run, nothing is executed; {len(steps)} call(s), newest first: "
        f"{counts['compensate']} to compensate, {counts['escalate']} to escalate, "
        f"{len(steps) - sum(counts.values())} to skip"
    )
    for i, s in enumerate(steps, 1):
        what = s["tool"] if s["action"] != "compensate" else f"{s['tool']} -> {s['compensation']}"
        at = s["ledger"]
        pos = f"partition {at['partition']} leaf {at['leaf_index']}" if at else "not ledgered"
        click.echo(f"{i:>3}. {s['action']:<10} {what}  (run {s['run_id']}, {pos})")
        click.echo(f"     {s['why']}")
        if s["idempotency_key"]:
            click.echo(f"     idempotency key {s['idempotency_key']}, attempt {s['attempt']}")
        if s["escalated_by"]:
            click.echo(f"     escalated already (event {s['escalated_by']})")
    for bad in report["undecodable"]:
        click.echo(
            f"error: partition {bad['partition']} leaf {bad['leaf_index']} does not decode "
            f"({bad['error']}): the plan may miss a call",
            err=True,
        )
