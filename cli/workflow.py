"""`wakeline workflow plan | impact | list | show | checkpoints | rollback`: a workflow's
calls, what the compensator does (and would do), its checkpoints and a rollback to one
(compensator/rollback.py).

Thin: read the workflow's ledgered events (and the compensator's tables), call
`wakeline.compensator.plan.build_plan` (the dry run) or `wakeline.compensator.operator`
(`timeline`, `workflow_rows`), print. Nothing is executed. Tests pass a ledger store in the
click context object (`obj={"ledger_store": store}`, and `"dsn"` for the compensator's
tables); otherwise PostgreSQL.
"""

from __future__ import annotations

import fnmatch
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import click

from wakeline.errors import SchemaError, WakelineError

_DSN = click.option("--dsn", help="PostgreSQL DSN (default: WAKELINE_DSN or the local stack).")
_JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
_HANDLERS = click.option(
    "--handlers",
    "handler_modules",
    multiple=True,
    metavar="MODULE",
    help="Python module declaring compensating actions (repeatable, or comma-separated).",
)


@click.group("workflow")
def workflow() -> None:
    """A workflow's calls and what the compensator does about them."""


@workflow.command("plan")
@click.argument("workflow_id")
@click.option("--run", "run_id", help="Plan a quarantine of this run only.")
@_HANDLERS
@_DSN
@_JSON
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
    after_event_id: str | None = None,
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
    with _ledger(dsn, store) as (ledger, decode, url):
        entries = ledger.entries_for_workflow(workflow_id)
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
    if after_event_id is not None:  # a rollback's dry run: the run after its checkpoint
        scope = Scope("run", run_id, after_event_id=after_event_id)
    elif run_id is not None:
        scope = Scope("run", run_id, quarantine_id=quarantine and quarantine["event_id"])
    elif quarantine is not None:
        scope = Scope.of(quarantine)
        if scope.kind == "tainted" and url is not None:
            scope = _with_taint(url, quarantine, scope)
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


def _with_taint(url: str, quarantine: Mapping[str, Any], scope: Any) -> Any:
    """A tainted scope with what the compensator found to descend from the tainted events
    in other workflows (its taint table, compensator/scopes.py): the plan it runs."""
    from dataclasses import replace

    from wakeline.compensator import scopes
    from wakeline.infra.db import connect

    with connect(url) as conn, conn.cursor() as cur:
        extra = scopes.tainted_of(cur, scopes.taint_origin(quarantine))
    return replace(scope, tainted=scope.tainted | extra)


def _ledger(dsn: str | None, injected: Any) -> Any:
    """(ledger store, decoder, DSN): the injected store with the packaged schemas, or the
    PostgreSQL ledger with the schemas PostgreSQL holds (producers/snapshots.py)."""
    from wakeline.cli.ledger import _dsn
    from wakeline.producers.snapshots import open_ledger

    return open_ledger(dsn if injected is not None else _dsn(dsn), injected)


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


@workflow.command("impact")
@click.argument("event_ids", nargs=-1, required=True)
@_HANDLERS
@_DSN
@_JSON
def impact_cmd(
    event_ids: tuple[str, ...], handler_modules: tuple[str, ...], dsn: str | None, as_json: bool
) -> None:
    """Print what `wakeline quarantine --tainted --events EVENT_IDS` would stop and undo: the
    calls that causally depend on the events (through parent_event_ids, across workflows, as
    far as the compensator has read them), the workflows the SDK would refuse, and each
    call's step, without running anything."""
    from wakeline.cli.ledger import _dsn
    from wakeline.cli.main import emit_json, run_guarded
    from wakeline.compensator import scopes
    from wakeline.compensator.registry import CompensationRegistry, load_handlers
    from wakeline.infra.settings import KafkaSettings

    ids = [e.strip() for raw in event_ids for e in raw.split(",") if e.strip()]
    names = [m for raw in handler_modules for m in raw.split(",") if m.strip()]
    handlers = load_handlers(names).handlers if names else CompensationRegistry()
    url = run_guarded(lambda: _dsn(dsn))
    topic = run_guarded(KafkaSettings.from_env).topics.events
    report = run_guarded(lambda: scopes.impact(url, topic, ids, handlers))
    if as_json:
        emit_json(report)
        return
    calls = report["calls"]
    counts = {a: sum(c["action"] == a for c in calls) for a in ("compensate", "escalate")}
    click.echo(
        f"dry run, nothing is executed: a taint quarantine of {len(ids)} event(s) reaches "
        f"{report['tainted_events']} event(s) in {len(report['workflows'])} workflow(s): "
        f"{counts['compensate']} call(s) to compensate, {counts['escalate']} to escalate, "
        f"{len(calls) - sum(counts.values())} to skip"
    )
    if not names:
        click.echo("no --handlers: every call needing a compensating action shows as escalated")
    for wid in report["workflows"]:
        click.echo(f"workflow {wid}: stopped (the SDK refuses its calls)")
        for c in (c for c in calls if c["workflow_id"] == wid):
            what = (
                c["tool"] if c["action"] != "compensate" else f"{c['tool']} -> {c['compensation']}"
            )
            click.echo(f"  {c['action']:<10} {what}  (intent {c['intent_id']})")
            click.echo(f"             {c['why']}")


# ------------------------------------------------------------------------------ list, show


def _compensator_reader(dsn: str | None) -> Callable[[Any], Any] | None:
    """`compensator_state` over `dsn`, or None (no DSN: the ledger alone)."""
    if dsn is None:
        return None
    from wakeline.compensator.operator import compensator_state

    return lambda ids: compensator_state(dsn, list(ids))


def _context(ctx: click.Context) -> tuple[Any, str | None]:
    obj = ctx.obj if isinstance(ctx.obj, dict) else {}
    return obj.get("ledger_store"), obj.get("dsn")


@workflow.command("list")
@click.option("--quarantined", is_flag=True, help="Only workflows with a quarantine in force.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@_DSN
@_JSON
@click.pass_context
def list_cmd(
    ctx: click.Context, quarantined: bool, limit: int, dsn: str | None, as_json: bool
) -> None:
    """Workflows in the ledger, newest activity first, with their state: active, completed
    (its newest run sealed), quarantined (the compensator has not taken it up), compensating,
    compensated, released."""
    from wakeline.cli.main import emit_json, run_guarded
    from wakeline.compensator.operator import workflow_rows

    injected, injected_dsn = _context(ctx)

    def go() -> list[dict[str, Any]]:
        with _ledger(dsn or injected_dsn, injected) as (store, decode, url):
            return workflow_rows(
                store,
                decode,
                limit=limit,
                quarantined_only=quarantined,
                state_of=_compensator_reader(url),
            )

    rows = run_guarded(go)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no quarantined workflow in the ledger" if quarantined else "ledger is empty")
        return
    click.echo(format_list(rows))


def format_list(rows: list[dict[str, Any]]) -> str:
    from wakeline.schemas import rfc3339_micros

    head = ("workflow", "state", "calls", "events", "partition", "last activity", "quarantine")
    table = [head]
    for r in rows:
        q = r["quarantine"]
        why = f"{q['by']}: {q['reason']}" if q else ""
        if r["open_tasks"]:
            why = f"{why} ({r['open_tasks']} open task(s))".strip()
        table.append(
            (
                r["workflow_id"],
                r["state"],
                str(r["calls"]),
                str(r["events"]),
                ",".join(map(str, r["partitions"])),
                rfc3339_micros(r["last_ms"] * 1000),
                why,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in table
    ).rstrip()


@workflow.command("show")
@click.argument("workflow_id")
@click.option("--tool", "tool_glob", help="Only the calls of tools matching this pattern "
              "(`payments.*`).")  # fmt: skip
@click.option("--ids", "ids_only", is_flag=True, help="Print only the calls' intent event ids, "
              "one per line (for `wakeline ledger proof`, `workflow impact`, `quarantine "
              "--events`).")  # fmt: skip
@_DSN
@_JSON
@click.pass_context
def show_cmd(
    ctx: click.Context,
    workflow_id: str,
    tool_glob: str | None,
    ids_only: bool,
    dsn: str | None,
    as_json: bool,
) -> None:
    """The timeline of every call of WORKFLOW_ID (intent and policy decision, result,
    compensation, escalation), its quarantines and releases, each with its ledger position
    for `wakeline ledger proof EVENT_ID`. Only ledgered events are shown. Exits 1 when some
    of them cannot be decoded."""
    from wakeline.cli.main import emit_json, run_guarded
    from wakeline.compensator.operator import timeline

    injected, injected_dsn = _context(ctx)

    def go() -> dict[str, Any]:
        with _ledger(dsn or injected_dsn, injected) as (store, decode, url):
            entries = store.entries_for_workflow(workflow_id)
            if not entries:
                raise WakelineError(f"workflow {workflow_id} has no ledgered events")
            read = _compensator_reader(url)
            state = None
            if read is not None:
                try:
                    state = read([workflow_id])[workflow_id]
                except WakelineError as e:
                    click.echo(f"warning: without the compensator's state: {e}", err=True)
            return timeline(workflow_id, entries, decode, state)

    report = run_guarded(go)
    if tool_glob is not None:
        report["calls"] = [
            c for c in report["calls"] if fnmatch.fnmatchcase(c["intent"]["tool"], tool_glob)
        ]
    if ids_only:
        for call in report["calls"]:
            click.echo(call["intent"]["event_id"])
    elif as_json:
        emit_json(report)
    else:
        click.echo(format_timeline(report))
    for bad in report["undecodable"]:
        click.echo(
            f"error: partition {bad['partition']} leaf {bad['leaf_index']} does not decode "
            f"({bad['error']})",
            err=True,
        )
    if report["undecodable"]:
        sys.exit(1)


def _at(where: Mapping[str, int]) -> str:
    return f"[partition {where['partition']} leaf {where['leaf_index']} offset {where['offset']}]"


def _ids(ids: Mapping[str, str] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((ids or {}).items()))


def format_timeline(report: dict[str, Any]) -> str:
    """The human form of `timeline`: one block per call, quarantine, release, escalation
    and other event, in ledger order."""
    from wakeline.schemas import rfc3339_micros

    lines = []
    q = report["quarantine"]
    state = report["state"]
    if q is not None:
        state += (
            f"; quarantined at {rfc3339_micros(q['time'])} by {q['by']}: {q['reason']} "
            f"(event {q['event_id']})"
        )
    lines.append(f"workflow {report['workflow_id']}: {state}")
    parts = ",".join(map(str, report["partitions"]))
    lines.append(
        f"{report['ledgered_events']} ledgered event(s) on partition {parts}; prove any of them "
        "with `wakeline ledger proof EVENT_ID`"
    )
    if not report["compensator_state"]:
        lines.append("(no database given: the compensator's actions and tasks are not shown)")
    blocks: list[tuple[tuple[int, int], list[str]]] = []

    def head(item: Mapping[str, Any], what: str) -> str:
        return (
            f"{rfc3339_micros(item['time'])}  {what}  {_at(item['ledger'])}\n"
            f"    event {item['event_id']} ({item['type']}, run {item['run_id']}, "
            f"agent {item['agent_id']}, principal {item['principal']})"
        )

    def pos(item: Mapping[str, Any]) -> tuple[int, int]:
        return item["ledger"]["partition"], item["ledger"]["leaf_index"]

    for call in report["calls"]:
        i = call["intent"]
        out = [head(i, f"call {i['tool']}")]
        reason = f" ({i['policy_reason']})" if i["policy_reason"] else ""
        out.append(
            f"    policy {i['policy_decision']}{reason}; approval {i['approval_id'] or '-'}; "
            f"{i['reversibility']}, compensation {i['compensation'] or '-'}"
        )
        r = call["result"]
        if r is None:
            out.append("    result: none ledgered (outcome unknown, or still running)")
        else:
            said = r["result_summary"] if r["status"] == "ok" else _error(r)
            ids = _ids(r["external_ids"])
            out.append(
                f"    result {r['status']}{': ' + said if said else ''}"
                f"{'; ids ' + ids if ids else ''}  {_at(r['ledger'])} event {r['event_id']}"
            )
        for c in call["compensations"]:
            if c["type"] == "CompensationStarted":
                what = "started"
            else:
                what = c["status"] + (" (final)" if c["final"] else "")
                if c["status"] == "failed":
                    what += f": {_error(c)}"
                if c["external_ids"]:
                    what += f"; ids {_ids(c['external_ids'])}"
            out.append(
                f"    compensation {c['compensation']} attempt {c['attempt']} {what}  "
                f"{_at(c['ledger'])} event {c['event_id']}"
            )
        for e in call["escalations"]:
            out.append(f"    escalated by event {e}")
        a = call["action"]
        if a is not None:
            detail = f": {a['detail']}" if a["detail"] else ""
            out.append(
                f"    compensator now: action {a['state']} after {a['attempts']} attempt(s){detail}"
            )
        for t in call["tasks"]:
            out.append(f"    human task {t['task_id']} ({t['state']}): {t['title']}")
        blocks.append((pos(i), out))
    for qq in report["quarantines"]:
        scope = qq["scope"] if qq["scope"] != "run" else f"run {qq['run_id']}"
        if qq.get("after_event_id"):
            scope += f" after checkpoint {qq['after_event_id']}: a rollback"
        blocks.append((pos(qq), [head(qq, f"QUARANTINE ({scope}) by {qq['by']}: {qq['reason']}")]))
    for rel in report["releases"]:
        what = f"RELEASE of {rel['quarantine_id'] or 'the quarantine in force'} by {rel['by']}"
        blocks.append((pos(rel), [head(rel, f"{what}: {rel['reason']}")]))
    for e in report["escalations"]:
        out = [head(e, f"ESCALATION (task {e['task_id'] or '-'}): {e['summary']}")]
        out += [f"    not undone: {x}" for x in e["not_undone"]]
        out += [f"    recommended: {x}" for x in e["recommended_actions"]]
        blocks.append((pos(e), out))
    for o in report["other_events"] + report["unmatched"]:
        blocks.append((pos(o), [head(o, o["type"])]))
    for _, out in sorted(blocks, key=lambda b: b[0]):
        lines.extend(out)
    for t in report["tasks"]:
        lines.append(f"incident report: task {t['task_id']} ({t['state']}): {t['title']}")
    for note in report["unledgered"]:
        lines.append(f"not in the ledger yet: {note}")
    return "\n".join(lines)


def _error(item: Mapping[str, Any]) -> str:
    kind, message = item.get("error_type"), item.get("error_message")
    return ": ".join(x for x in (kind, message) if x) or "no reason recorded"


# ------------------------------------------------------------------- checkpoints, rollback


@workflow.command("checkpoints")
@click.argument("workflow_id")
@_DSN
@_JSON
@click.pass_context
def checkpoints_cmd(ctx: click.Context, workflow_id: str, dsn: str | None, as_json: bool) -> None:
    """The checkpoints (WorkflowSnapshot events) of WORKFLOW_ID: name, event id, time,
    state digest, and ledger position once ledgered (those the compensator took in but the
    ledger does not show yet are listed last, as not ledgered)."""
    from wakeline.cli.main import emit_json, run_guarded
    from wakeline.compensator.rollback import checkpoints
    from wakeline.schemas import rfc3339_micros

    injected, injected_dsn = _context(ctx)

    def go() -> list[dict[str, Any]]:
        with _ledger(dsn or injected_dsn, injected) as (store, decode, url):
            return [s.to_json() for s in checkpoints(store, decode, workflow_id, url)]

    rows = run_guarded(go)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo(f"workflow {workflow_id} has no checkpoint")
        return
    for r in rows:
        at = r["ledger"]
        pos = _at(at) if at else "[not ledgered yet]"
        click.echo(
            f"{r['name']}  event {r['event_id']}  {rfc3339_micros(r['time'])}  run {r['run_id']}"
            f"  blake3:{r['state_digest']}  {pos}"
        )


@workflow.command("rollback")
@click.argument("workflow_id")
@click.option(
    "--to",
    "checkpoint",
    required=True,
    help="Checkpoint name (the newest of that name) or a WorkflowSnapshot event id.",
)
@click.option("--dry-run", is_flag=True, help="Only print what would be undone.")
@click.option(
    "--wait",
    is_flag=True,
    help="Wait for the compensator to finish, then release the run and print the state.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=120,
    show_default=True,
    help="Seconds --wait waits for the compensator.",
)
@click.option(
    "--handlers",
    "handler_modules",
    multiple=True,
    metavar="MODULE",
    help="For --dry-run: module declaring compensating actions (repeatable).",
)
@click.option("--reason", help="Why (default: rollback to checkpoint NAME).")
@click.option("--by", help="Who does it (default: $USER@hostname).")
@_DSN
@_JSON
@click.pass_context
def rollback_cmd(
    ctx: click.Context,
    workflow_id: str,
    checkpoint: str,
    dry_run: bool,
    wait: bool,
    timeout: float,
    handler_modules: tuple[str, ...],
    reason: str | None,
    by: str | None,
    dsn: str | None,
    as_json: bool,
) -> None:
    """Undo what WORKFLOW_ID's run did after checkpoint --to: a Quarantine of that run after
    the checkpoint (the compensator undoes those calls newest first, escalating what it
    cannot), then, with --wait, a Release once its plan is done, and the checkpoint's state
    on stdout (resume from it with `Emitter.resume`). --dry-run writes nothing."""
    from wakeline.cli.main import emit_json, run_guarded
    from wakeline.compensator.rollback import rollback
    from wakeline.infra.settings import KafkaSettings
    from wakeline.producers.snapshots import checked_state, find_snapshot, ledgered_snapshots

    injected, injected_dsn = _context(ctx)
    if dry_run:

        def dry() -> dict[str, Any]:
            with _ledger(dsn or injected_dsn, injected) as (store, decode, _url):
                snaps = ledgered_snapshots(store, workflow_id, decode)
                snap = find_snapshot(snaps, checkpoint, workflow_id)
                checked_state(snap.event)
            report = _plan(workflow_id, snap.run_id, handler_modules, dsn, injected, snap.event_id)
            return {**report, "checkpoint": snap.to_json()}

        report = run_guarded(dry)
        if as_json:
            emit_json(report)
            return
        cp = report["checkpoint"]
        click.echo(f"rollback of {workflow_id} to checkpoint {cp['name']} ({cp['event_id']})")
        _print(report)
        return
    kafka = run_guarded(KafkaSettings.from_env)

    def go() -> dict[str, Any]:
        with _ledger(dsn or injected_dsn, injected) as (store, decode, url):
            if url is None:
                from wakeline.cli.ledger import _dsn

                url = _dsn(None)
            return rollback(
                kafka, url, store, decode, workflow_id, checkpoint,
                by=by, reason=reason, wait_s=timeout if wait else None,
            )  # fmt: skip

    report = run_guarded(go)
    if as_json:
        emit_json(report)
        return
    import json

    cp, q = report["checkpoint"], report["quarantine"]
    click.echo(
        f"rollback of {workflow_id} to checkpoint {cp['name']} ({cp['event_id']}): run "
        f"{cp['run_id']} quarantined after it, event {q['event_id']} at partition "
        f"{q['partition']} offset {q['offset']}",
        err=True,
    )
    for item in report["resumed_runs"]:
        click.echo(
            f"run {item['run_id']}, resumed since from after the checkpoint, quarantined "
            f"whole: event {item['quarantine']['event_id']}",
            err=True,
        )
    if report["release"] is None:
        click.echo(
            "the compensator undoes the calls after the checkpoint; release the run with "
            "`wakeline release` once `wakeline workflow show` says compensated (or use --wait)",
            err=True,
        )
        return
    for item in (*report["resumed_runs"], report):
        run = item.get("run_id") or cp["run_id"]
        click.echo(f"run {run}: released by event {item['release']['event_id']}", err=True)
        for a in item["plan"]["actions"]:
            click.echo(f"  {a['state']:<9} {a['tool']} -> {a['compensation']}", err=True)
        for s in item["plan"]["steps"]:
            if s["action"] == "escalate":
                click.echo(f"  escalated {s['tool']}: {s['why']}", err=True)
    click.echo(json.dumps(report["state"], sort_keys=True))
