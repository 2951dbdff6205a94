"""`wakeline compensator`: the compensation daemon (compensator/daemon.py) in the foreground."""

from __future__ import annotations

from typing import Any

import click


@click.command("compensator")
@click.option(
    "--handlers",
    "handler_modules",
    multiple=True,
    metavar="MODULE",
    help="Python module declaring compensating actions (repeatable, or comma-separated; "
    "added to WAKELINE_COMPENSATOR_HANDLERS).",
)
@click.option("--group", help="Consumer group (default: <topic prefix>compensator).")
@click.option(
    "--instance-id",
    help="Static group membership id: a restarted process with the same id takes its "
    "partitions back at once (WAKELINE_COMPENSATOR_INSTANCE_ID).",
)
@click.option("--lease-s", type=click.FloatRange(min=1), help="Lease of one attempt, seconds.")
@click.option("--max-attempts", type=click.IntRange(min=1), help="Transient failures allowed.")
@click.option("--workers", type=click.IntRange(min=1), help="Plans run at once.")
@click.option("--dsn", help="PostgreSQL DSN (default: WAKELINE_DSN or the local stack).")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Serve Prometheus metrics at http://127.0.0.1:PORT/metrics (0 = off).",
)
def compensator(
    handler_modules: tuple[str, ...],
    group: str | None,
    instance_id: str | None,
    lease_s: float | None,
    max_attempts: int | None,
    workers: int | None,
    dsn: str | None,
    metrics_port: int,
) -> None:
    """Run the compensator until stopped (SIGTERM/SIGINT).

    On a Quarantine of a workflow it publishes the quarantine (SDK gates refuse the
    workflow's calls), then undoes the workflow's calls newest first with the compensating
    actions the handler modules provide, and files a human task with an incident report for
    everything it cannot undo. It refuses to start while a tool registry declared by the
    handler modules names a compensating action no module provides.
    """
    from wakeline.cli.main import run_guarded

    overrides = {
        "group_id": group,
        "instance_id": instance_id,
        "lease_s": lease_s,
        "max_attempts": max_attempts,
        "workers": workers,
    }
    run_guarded(lambda: _run(handler_modules, dsn, metrics_port, overrides))


def _run(
    modules: tuple[str, ...], dsn: str | None, metrics_port: int, overrides: dict[str, Any]
) -> None:
    import logging
    import signal
    from dataclasses import replace

    from wakeline.compensator.daemon import Compensator
    from wakeline.compensator.registry import check_tools, load_handlers
    from wakeline.compensator.settings import CompensatorSettings
    from wakeline.errors import ConfigError
    from wakeline.infra import db
    from wakeline.infra.settings import DatabaseSettings, KafkaSettings
    from wakeline.processors.schema_sync import worker_resolver
    from wakeline.schemas import default_codec

    settings = CompensatorSettings.from_env()
    names = [m.strip() for raw in modules for m in raw.split(",") if m.strip()]
    names = list(dict.fromkeys([*settings.handlers, *names]))
    settings = replace(
        settings, handlers=tuple(names), **{k: v for k, v in overrides.items() if v is not None}
    )
    if not names:
        raise ConfigError(
            "no handler modules: name them with --handlers MODULE or "
            "WAKELINE_COMPENSATOR_HANDLERS (every quarantined call would be escalated)"
        )
    loaded = load_handlers(names)
    check_tools(loaded.handlers, loaded.tools)
    kafka = KafkaSettings.from_env()
    url = dsn or DatabaseSettings.from_env().dsn
    db.migrate(url)
    default_codec().resolver = worker_resolver(kafka, url)
    from wakeline.compensator.notify import Webhook

    daemon = Compensator(
        kafka, url, loaded.handlers, settings, notifier=Webhook.from_env(), tools=loaded.tools
    )
    log = logging.getLogger("wakeline.compensator")

    def stop(signum: int, _frame: object) -> None:
        log.warning("compensator: signal %d, stopping", signum)
        daemon.runner._stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(
        f"compensator {daemon.owner}: {len(loaded.handlers)} compensating action(s) from "
        f"{', '.join(loaded.modules)}; group {settings.group_for(kafka.topics.prefix)}",
        err=True,
    )
    if metrics_port:
        from wakeline.infra.metrics import PrometheusMetrics

        registry = PrometheusMetrics()
        registry.observe(daemon.samples)
        registry.serve(metrics_port)
    daemon.run()
    if daemon.runner.failure is not None:
        raise daemon.runner.failure
