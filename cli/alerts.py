"""`wakeline alerts list|show`: the alerts of loops and races, from the `<prefix>alerts` topic.

Thin: read the topic (`wakeline.processors.tail.read_alerts`), print. Why the topic and not
the ledger is in that module's docstring; the rules behind the alerts in docs/detection.md.
"""

from __future__ import annotations

import re
from typing import Any

import click

_JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
#: control characters a terminal would act on (an alert quotes what agents did)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _safe(text: str) -> str:
    return _CONTROL.sub("?", text)


@click.group("alerts")
def alerts() -> None:
    """Alerts of runaway loops and races (the SDK's loop guard and the worker's detectors)."""


@alerts.command("list")
@click.option("--workflow", help="Only the alerts of this workflow id.")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=50, show_default=True,
              help="The most recent this many.")  # fmt: skip
@_JSON
def list_cmd(workflow: str | None, limit: int, as_json: bool) -> None:
    """The most recent alerts, oldest first."""
    from wakeline.cli.main import emit_json, run_guarded
    from wakeline.infra.settings import KafkaSettings
    from wakeline.processors.tail import format_alert, read_alerts

    found = run_guarded(lambda: read_alerts(KafkaSettings.from_env(), workflow=workflow,
                                            limit=limit))  # fmt: skip
    if as_json:
        emit_json(found)
        return
    if not found:
        click.echo("no alerts" + (f" for workflow {_safe(workflow)}" if workflow else ""))
        return
    for event in found:
        click.echo(_safe(format_alert(event)))
    click.echo(f"{len(found)} alert(s); `wakeline alerts show ALERT_ID` prints one in full")


@alerts.command("show")
@click.argument("alert_id")
@_JSON
def show_cmd(alert_id: str, as_json: bool) -> None:
    """Print ALERT_ID (its event id) in full: rule, evidence, attributes."""
    from wakeline.cli.main import emit_json, run_guarded
    from wakeline.errors import WakelineError
    from wakeline.infra.settings import KafkaSettings
    from wakeline.processors.tail import describe_alert, read_alerts

    def go() -> dict[str, Any]:
        found = read_alerts(KafkaSettings.from_env(), alert_id=alert_id)
        if not found:
            raise WakelineError(f"no alert {alert_id} on the alerts topic")
        return found[-1]

    event = run_guarded(go)
    if as_json:
        emit_json(event)
        return
    click.echo(_safe(describe_alert(event)))
