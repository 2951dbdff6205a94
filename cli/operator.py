"""`wakeline quarantine WF` and `wakeline release WF`: thin, over compensator/operator.py."""

from __future__ import annotations

import sys
from typing import Any

import click

_BY = "Who does it (default: $USER@hostname); recorded as the event's `by` and principal."


@click.command("quarantine")
@click.argument("workflow_id")
@click.option("--reason", required=True, help="Why (recorded in the event; required).")
@click.option("--run", "run_id", help="Quarantine this run only (scope `run`).")
@click.option(
    "--tainted",
    multiple=True,
    metavar="EVENT_ID",
    help="Quarantine what descends from this event (scope `tainted`; repeatable).",
)
@click.option("--by", help=_BY)
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    help="Then wait up to this many seconds until SDK gates see the quarantine (exit 1 if "
    "they do not: the compensator, which publishes it to them, is not running).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def quarantine(
    workflow_id: str,
    reason: str,
    run_id: str | None,
    tainted: tuple[str, ...],
    by: str | None,
    wait_s: float | None,
    as_json: bool,
) -> None:
    """Quarantine WORKFLOW_ID: write a Quarantine event on its partition of the events
    topic and print its id, partition and offset once the broker acknowledged it. The
    compensator then stops the workflow's calls and undoes what it did."""
    from wakeline.cli.main import emit_json, run_guarded
    from wakeline.compensator import operator
    from wakeline.infra.settings import KafkaSettings

    kafka = run_guarded(KafkaSettings.from_env)
    report = run_guarded(
        lambda: operator.quarantine(
            kafka, workflow_id, reason=reason, by=by, run_id=run_id, tainted=tainted
        )
    )
    waited: float | None = None
    if wait_s is not None:
        waited = run_guarded(
            lambda: operator.wait_visible(kafka, workflow_id, report["event_id"], wait_s)
        )
        report["visible_after_s"] = waited
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
    if wait_s is not None and waited is None:
        click.echo(
            f"error: {kafka.topics.quarantines} did not show the quarantine within {wait_s:g} s: "
            "is `wakeline compensator` running? (the event is written; the compensator acts "
            "on it when it starts)",
            err=True,
        )
        sys.exit(1)


@click.command("release")
@click.argument("workflow_id")
@click.option("--reason", default="released by an operator", show_default=True, help="Why.")
@click.option("--by", help=_BY)
@click.option("--dsn", help="PostgreSQL DSN (default: WAKELINE_DSN or the local stack).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def release(workflow_id: str, reason: str, by: str | None, dsn: str | None, as_json: bool) -> None:
    """Lift the quarantine of WORKFLOW_ID: write a Release naming the quarantine in force
    (from the compensator's plans, else the quarantines topic). What was compensated stays
    compensated."""
    from wakeline.cli.ledger import _dsn
    from wakeline.cli.main import emit_json, run_guarded
    from wakeline.compensator import operator
    from wakeline.infra.settings import KafkaSettings

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


def _scope(event: dict[str, Any]) -> str:
    if event["scope"] == "run":
        return f"run {event['run_id']}"
    if event["scope"] == "tainted":
        return f"what descends from {len(event['tainted_event_ids'])} event(s)"
    return "every run"
