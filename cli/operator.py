"""`wakeline quarantine WF` and `wakeline release WF`: thin, over compensator/operator.py."""

from __future__ import annotations

import sys
from typing import Any

import click

_BY = "Who does it (default: $USER@hostname); recorded as the event's `by` and principal."


@click.command("quarantine")
@click.argument("workflow_id", required=False)
@click.option("--reason", required=True, help="Why (recorded in the event; required).")
@click.option("--run", "run_id", help="Quarantine this run only (scope `run`).")
@click.option(
    "--tainted",
    is_flag=True,
    help="Quarantine every call that causally depends on --events, in any workflow "
    "(scope `tainted`: fans out to each workflow it reaches).",
)
@click.option(
    "--events",
    "events",
    multiple=True,
    metavar="E1,E2",
    help="The tainted events (comma-separated, repeatable; implies --tainted).",
)
@click.option(
    "--agent",
    help="Quarantine what this agent did (since --since) in every workflow, and refuse the "
    "agent's calls everywhere until released (scope `agent`).",
)
@click.option(
    "--since",
    metavar="TIME",
    help="With --agent: from when (RFC 3339, e.g. 2026-01-31T12:00:00Z, or an age: 90s, "
    "30m, 2h, 1d); default: everything the agent did.",
)
@click.option(
    "--boundary",
    help="Quarantine every workflow with calls in this boundary (the envelope's `boundary`), "
    "and refuse new calls in it until released (scope `boundary`).",
)
@click.option("--by", help=_BY)
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    help="Then wait up to this many seconds until SDK gates see the quarantine (exit 1 if "
    "they do not: the compensator, which publishes it to them, is not running).",
)
@click.option(
    "--until-undone",
    "undone_s",
    type=click.FloatRange(min=0),
    help="Then wait up to this many seconds until the compensator has finished the plan "
    "(undone what it can, escalated the rest) and print what it did (exit 3 if it has not: "
    "the quarantine stays in force). A workflow or --run quarantine only.",
)
@click.option("--dsn", help="PostgreSQL DSN of the compensator's state, for --until-undone "
              "(default: WAKELINE_DSN or the local stack).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def quarantine(
    workflow_id: str | None,
    reason: str,
    run_id: str | None,
    tainted: bool,
    events: tuple[str, ...],
    agent: str | None,
    since: str | None,
    boundary: str | None,
    by: str | None,
    wait_s: float | None,
    undone_s: float | None,
    dsn: str | None,
    as_json: bool,
) -> None:
    """Quarantine WORKFLOW_ID (or, with --agent, --boundary or --tainted --events, what
    spans workflows): write a Quarantine event on its partition of the events topic and
    print its id, partition and offset once the broker acknowledged it. The compensator
    then stops the calls in scope and undoes what they did (docs/compensation.md)."""
    from wakeline.cli.main import emit_json, run_guarded
    from wakeline.compensator import operator
    from wakeline.infra.settings import KafkaSettings

    ids = [e.strip() for chunk in events for e in chunk.split(",") if e.strip()]
    if tainted and not ids:
        raise click.UsageError("--tainted needs --events E1,E2 (the tainted events)")
    since_us = None if since is None else _since_us(since)
    if undone_s is not None and (tainted or agent or boundary):
        raise click.UsageError(
            "--until-undone waits for one workflow's plan; a quarantine that fans out has one "
            "plan per workflow it reaches (`wakeline workflow list --quarantined` shows them)"
        )
    kafka = run_guarded(KafkaSettings.from_env)
    report = run_guarded(
        lambda: operator.quarantine(
            kafka,
            workflow_id,
            reason=reason,
            by=by,
            run_id=run_id,
            tainted=ids,
            agent=agent,
            since_us=since_us,
            boundary=boundary,
        )  # fmt: skip
    )
    workflow_id = report["event"]["workflow_id"]
    waited: float | None = None
    if wait_s is not None:
        waited = run_guarded(
            lambda: operator.wait_visible(kafka, workflow_id, report["event_id"], wait_s)
        )
        report["visible_after_s"] = waited
    plan: dict[str, Any] | None = None
    if undone_s is not None and (wait_s is None or waited is not None):
        plan = run_guarded(lambda: _wait_undone(dsn, report["event_id"], undone_s))
        report["plan"] = plan
    if as_json:
        emit_json(report)
    else:
        ev = report["event"]
        click.echo(
            f"quarantined {workflow_id} ({_scope(ev)}) by {ev['by']}: event {report['event_id']}"
            f" at {report['topic']} partition {report['partition']} offset {report['offset']}"
        )
        if wait_s is not None and waited is not None:
            click.echo(f"SDK gates see it after {waited:.3f} s ({kafka.topics.quarantines})")
        if plan is not None:
            click.echo(f"the compensator's plan is {plan['state']}, newest call first:")
            for line in _plan_lines(plan):
                click.echo("  " + line)
    if wait_s is not None and waited is None:
        click.echo(
            f"error: {kafka.topics.quarantines} did not show the quarantine within {wait_s:g} s: "
            "is `wakeline compensator` running? (the event is written; the compensator acts "
            "on it when it starts)",
            err=True,
        )
        sys.exit(1)


def _plan_lines(plan: dict[str, Any]) -> list[str]:
    """One line per step of a finished plan: what was undone (and how), escalated, skipped."""
    actions = {a["intent_id"]: a for a in plan["actions"]}
    lines = []
    for step in plan["steps"]:
        a = actions.get(step["intent_id"])
        if step["action"] == "compensate" and a is not None:
            detail = f": {a['detail']}" if a["detail"] else ""
            lines.append(f"{step['tool']} -> {a['compensation']}: {a['state']}{detail}")
        else:
            done = {"escalate": "escalated", "skip": "skipped"}.get(step["action"], step["action"])
            lines.append(f"{step['tool']}: {done}: {step['why']}")
    return lines


def _wait_undone(dsn: str | None, quarantine_id: str, wait_s: float) -> dict[str, Any]:
    import time

    from wakeline.cli.ledger import _dsn
    from wakeline.compensator.rollback import wait_plan_done

    return wait_plan_done(_dsn(dsn), quarantine_id, time.monotonic() + wait_s, wait_s)


@click.command("release")
@click.argument("workflow_id", required=False)
@click.option("--agent", help="Lift the quarantine of this agent (what `quarantine --agent` set).")
@click.option("--boundary", help="Lift the quarantine of this boundary.")
@click.option("--reason", default="released by an operator", show_default=True, help="Why.")
@click.option("--by", help=_BY)
@click.option("--dsn", help="PostgreSQL DSN (default: WAKELINE_DSN or the local stack).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def release(
    workflow_id: str | None,
    agent: str | None,
    boundary: str | None,
    reason: str,
    by: str | None,
    dsn: str | None,
    as_json: bool,
) -> None:
    """Lift the quarantine of WORKFLOW_ID (or of an agent, a boundary, or a taint quarantine
    written as workflow `taint:<event>`): write a Release naming the quarantine in force
    (from the compensator's plans, else the quarantines topic). A quarantine that fanned out
    is lifted in every workflow it reached. What was compensated stays compensated."""
    from wakeline.cli.ledger import _dsn
    from wakeline.cli.main import emit_json, run_guarded
    from wakeline.compensator import operator
    from wakeline.infra.settings import KafkaSettings

    given = [f"{k}:{v}" for k, v in (("agent", agent), ("boundary", boundary)) if v]
    if workflow_id is not None:
        given.append(workflow_id)
    if len(given) != 1:
        raise click.UsageError("give one of WORKFLOW_ID, --agent or --boundary")
    workflow_id = given[0]
    kafka = run_guarded(KafkaSettings.from_env)
    url = run_guarded(lambda: _dsn(dsn))
    report = run_guarded(
        lambda: operator.release(kafka, workflow_id, reason=reason, by=by, dsn=url)
    )
    if as_json:
        emit_json(report)
        return
    ev = report["event"]
    lifted = ev["quarantine_id"]
    what = (
        f"quarantine {lifted} (found in {report['found_in']})"
        if lifted
        else "no quarantine found in force (the Release lifts whatever is)"
    )
    click.echo(
        f"released {workflow_id} by {ev['by']}: {what}; event {report['event_id']} at "
        f"{report['topic']} partition {report['partition']} offset {report['offset']}"
    )


def _since_us(text: str) -> int:
    """RFC 3339, or an age (`90s`, `30m`, `2h`, `1d`) before now, as microseconds."""
    import re
    import time
    from datetime import datetime

    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return int((time.time() - float(m.group(1)) * unit) * 1_000_000)
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither RFC 3339 (2026-01-31T12:00:00Z) nor an age (30m, 2h)",
            param_hint="--since",
        ) from None
    if t.tzinfo is None:
        raise click.BadParameter(
            f"{text!r} has no time zone (add Z or +00:00)", param_hint="--since"
        )
    return int(t.timestamp() * 1_000_000)


def _scope(event: dict[str, Any]) -> str:
    if event["scope"] == "agent":
        return f"agent {event['target']}" + (" since a time" if event.get("since") else "")
    if event["scope"] == "boundary":
        return f"boundary {event['target']}"
    if event["scope"] == "run":
        return f"run {event['run_id']}"
    if event["scope"] == "tainted":
        return f"what descends from {len(event['tainted_event_ids'])} event(s)"
    return "every run"
