"""`wakeline incidents list|show|ack|resolve`: the human tasks the compensator files.

Thin: open PostgreSQL (`--dsn`, default `WAKELINE_DSN` or the local stack), call
`wakeline.compensator.tasks`, print. What a task and its report hold is in
docs/compensation.md ("Escalations and incident reports").
"""

from __future__ import annotations

import getpass
import re
import socket
from collections.abc import Callable
from typing import Any, TypeVar

import click

T = TypeVar("T")

_DSN = click.option("--dsn", help="PostgreSQL DSN (default: WAKELINE_DSN or the local stack).")
_JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
_BY = click.option("--by", "by", help="Who you are (default: $USER@hostname).")
#: control characters a terminal would act on (an id or a report holds what agents wrote)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@click.group("incidents")
def incidents() -> None:
    """Escalations a human must act on: list, read, acknowledge and resolve them."""


@incidents.command("list")
@click.option("--all", "every", is_flag=True, help="Resolved tasks too.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["open", "acked", "resolved"]),
    help="Only tasks in this state (repeatable; default: open and acked).",
)
@click.option("--workflow", "workflow_id", help="Only the tasks of this workflow.")
@_DSN
@_JSON
def list_cmd(
    every: bool, states: tuple[str, ...], workflow_id: str | None, dsn: str | None, as_json: bool
) -> None:
    """The tasks still to be closed (open and acked), oldest first."""
    from wakeline.cli.main import emit_json
    from wakeline.compensator import tasks

    if every and states:
        raise click.UsageError("--all and --state contradict each other: give one")
    wanted = None if every else (states or tasks.UNRESOLVED)
    found = _with_conn(dsn, lambda c: tasks.list_tasks(c, states=wanted, workflow_id=workflow_id))
    if as_json:
        emit_json([_brief(t) for t in found])
        return
    if not found:
        which = "tasks" if every else f"{' or '.join(wanted or ())} tasks"
        click.echo(f"no {which}" + (f" for workflow {_safe(workflow_id)}" if workflow_id else ""))
        return
    for t in found:
        who = ""
        if t.state == "acked":
            who = f" by {t.acked_by}"
        elif t.state == "resolved":
            who = f" by {t.resolved_by}"
        click.echo(
            _safe(
                f"{t.task_id}  {t.state}{who}  {t.kind}  {t.created_at:%Y-%m-%d %H:%M:%S}  "
                f"workflow {t.workflow_id}  {t.reason}: {t.title}"
            )
        )
    click.echo(f"{len(found)} task(s); `wakeline incidents show TASK_ID` prints a report")


@incidents.command("show")
@click.argument("task_id")
@_DSN
@_JSON
def show_cmd(task_id: str, dsn: str | None, as_json: bool) -> None:
    """Print TASK_ID's incident report and where the task stands."""
    from wakeline.cli.main import emit_json

    task = _with_conn(dsn, lambda c: _get(c, task_id))
    if as_json:
        emit_json(task.to_json())
        return
    lines = [f"task {task.task_id} ({task.kind}): {task.state}"]
    if task.acked_at is not None:
        lines.append(f"acked by {task.acked_by} at {task.acked_at:%Y-%m-%d %H:%M:%S %Z}")
    if task.resolved_at is not None:
        lines.append(f"resolved by {task.resolved_by} at {task.resolved_at:%Y-%m-%d %H:%M:%S %Z}")
        lines.append(f"note: {task.resolution_note}")
    lines.append(
        f"workflow {task.workflow_id}, quarantine {task.quarantine_id}"
        + (f", intent {task.intent_id}" if task.intent_id else "")
        + f"; escalation event {task.escalation_event_id}"
        + ("" if task.published_at else " (not published yet)")
    )
    if task.notified_at is not None:
        lines.append(f"notified at {task.notified_at:%Y-%m-%d %H:%M:%S %Z}")
    elif task.notify_error:
        lines.append(f"notification failed after {task.notify_attempts} attempt(s): "
                     f"{task.notify_error}")  # fmt: skip
    click.echo(_safe("\n".join(lines)))
    click.echo("")
    click.echo(_safe(task.report))


@incidents.command("ack")
@click.argument("task_id")
@_BY
@_DSN
def ack_cmd(task_id: str, by: str | None, dsn: str | None) -> None:
    """Say you are on TASK_ID (an open task)."""
    from wakeline.compensator import tasks

    task = _with_conn(dsn, lambda c: tasks.ack(c, task_id, by=by or _whoami()))
    click.echo(_safe(f"task {task.task_id} acked by {task.acked_by}"))


@incidents.command("resolve")
@click.argument("task_id")
@click.option("--note", required=True, help="What was done (required, not empty).")
@_BY
@_DSN
def resolve_cmd(task_id: str, note: str, by: str | None, dsn: str | None) -> None:
    """Close TASK_ID with a note saying what was done."""
    from wakeline.compensator import tasks

    task = _with_conn(dsn, lambda c: tasks.resolve(c, task_id, by=by or _whoami(), note=note))
    click.echo(_safe(f"task {task.task_id} resolved by {task.resolved_by}"))


def _get(conn: Any, task_id: str) -> Any:
    from wakeline.compensator import tasks

    task = tasks.get_task(conn, task_id)
    if task is None:
        raise tasks.UnknownTask(
            f"no task {_safe(repr(task_id))} (`wakeline incidents list --all` lists them)"
        )
    return task


def _with_conn(dsn: str | None, fn: Callable[[Any], T]) -> T:
    from wakeline.cli.ledger import _dsn
    from wakeline.cli.main import run_guarded
    from wakeline.infra import db

    def go() -> T:
        with db.connect(_dsn(dsn), autocommit=True) as conn:
            return fn(conn)

    return run_guarded(go)


def _brief(task: Any) -> dict[str, Any]:
    out = task.to_json()
    out.pop("report", None)
    out.pop("report_json", None)
    return out


def _whoami() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no $USER and no passwd entry (a bare container)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _safe(text: str) -> str:
    """`text` with terminal control characters shown as \\xNN (newlines and tabs kept)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)
