"""`wakeline tail`: follow the audit topic, one plain-language line per ledgered event (or,
with `--alerts`, the alerts topic: one line per alert)."""

from __future__ import annotations

import json

import click


@click.command("tail")
@click.option("--workflow", help="Only this workflow id.")
@click.option("--agent", help="Only this agent id.")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest audit record.")
@click.option("-n", "--limit", type=click.IntRange(min=1), help="Stop after this many records.")
@click.option("--idle-exit", type=click.FloatRange(min=0.1),
              help="Stop when nothing arrives for this many seconds.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--alerts", "alerts", is_flag=True,
              help="Follow the alerts topic instead: one line per alert.")  # fmt: skip
def tail(
    workflow: str | None,
    agent: str | None,
    from_beginning: bool,
    limit: int | None,
    idle_exit: float | None,
    as_json: bool,
    alerts: bool,
) -> None:
    """Follow what agents do, as it is ledgered (or, with --alerts, the alerts raised)."""
    from wakeline.cli.alerts import _safe
    from wakeline.cli.main import run_guarded
    from wakeline.infra.settings import KafkaSettings
    from wakeline.processors.tail import (
        follow_alerts,
        follow_audit,
        format_alert,
        format_line,
        to_json,
    )

    follow, fmt = (follow_alerts, format_alert) if alerts else (follow_audit, format_line)

    def go() -> None:
        records = follow(
            KafkaSettings.from_env(), from_beginning=from_beginning, workflow=workflow,
            agent=agent, limit=limit, idle_timeout=idle_exit,
        )  # fmt: skip
        try:
            for rec in records:
                line = json.dumps(to_json(rec), sort_keys=True) if as_json else _safe(fmt(rec))
                click.echo(line)
        except KeyboardInterrupt:
            pass

    run_guarded(go)
