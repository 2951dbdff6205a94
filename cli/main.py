"""The `wakeline` command. Thin: each command parses options and calls a component function."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from wakeline.errors import WakelineError
from wakeline.infra.settings import Variable, choice, declare

console = Console()
err_console = Console(stderr=True)

LOG_LEVEL = Variable(
    "WAKELINE_LOG_LEVEL",
    choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
    None,
    "log level of every `wakeline` command (default: WARNING; -v INFO, -vv DEBUG)",
)
declare("cli", "the `wakeline` command", LOG_LEVEL)


def run_guarded(fn: Callable[[], Any]) -> Any:
    """Map expected failures to a one-line message and the error's exit code."""
    try:
        return fn()
    except WakelineError as e:
        # the message may quote input (an id, a file name): never read it as rich markup
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        sys.exit(e.exit_code)


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str, sort_keys=True))


@click.group()
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """Wakeline: a tamper-evident audit ledger and compensation daemon for AI agents."""
    level = run_guarded(lambda: LOG_LEVEL.read(os.environ))
    level = level or ["WARNING", "INFO", "DEBUG"][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Modules named on the command line (`--handlers myapp.undo`, a policy's registry) are
    # found in the current directory too, as with `python -m`; installed packages come first.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())


# ------------------------------------------------------------------------------ stack


@cli.group()
def stack() -> None:
    """Start, stop and inspect the local Kafka + PostgreSQL under WAKELINE_HOME."""


@stack.command("up")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stack_up(as_json: bool) -> None:
    """Start the local broker and database (no-op for what already runs)."""
    from wakeline.devstack import stack as local
    from wakeline.infra.settings import DatabaseSettings, KafkaSettings, StackSettings

    def go() -> dict:
        settings = StackSettings.from_env()
        kafka_ext = KafkaSettings.from_env().external
        db_ext = DatabaseSettings.from_env().external
        with console.status("starting the local stack...", spinner="dots"):
            return local.up(settings, kafka=not kafka_ext, postgres=not db_ext)

    report = run_guarded(go)
    if as_json:
        emit_json(report)
        return
    for name in ("postgres", "kafka"):
        part = report.get(name)
        if part is None:
            console.print(f"{name}: external (not started)")
            continue
        where = part.get("dsn") or part.get("bootstrap")
        if part["started"]:
            extra = f", jars fetched in {part['fetch_s']:.1f}s" if part.get("fetch_s") else ""
            console.print(
                f"{name}: started pid {part['pid']} at {where} in {part['start_s']:.1f}s{extra}"
            )
        else:
            console.print(f"{name}: already running, pid {part['pid']} at {where}")


@stack.command("down")
def stack_down() -> None:
    """Stop the local broker and database."""
    from wakeline.devstack import stack as local
    from wakeline.infra.settings import StackSettings

    stopped = run_guarded(lambda: local.down(StackSettings.from_env()))
    for name, was in stopped.items():
        console.print(f"{name}: {'stopped' if was else 'was not running'}")


@stack.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stack_status(as_json: bool) -> None:
    """Versions, addresses and pids of the local stack."""
    from wakeline.devstack import stack as local
    from wakeline.infra.settings import StackSettings

    report = run_guarded(lambda: local.status(StackSettings.from_env()))
    if as_json:
        emit_json(report)
        return
    table = Table(title=f"local stack in {report['home']}")
    for col in ("component", "state", "pid", "version", "address"):
        table.add_column(col)
    k, p = report["kafka"], report["postgres"]
    table.add_row("kafka", "running" if k["running"] else "stopped", str(k["pid"] or "-"),
                  k["version"], k["bootstrap"])  # fmt: skip
    table.add_row("postgres", "running" if p["running"] else "stopped", str(p["pid"] or "-"),
                  p["version"] or "?", p["dsn"])  # fmt: skip
    console.print(table)
    if not (k["running"] and p["running"]):
        sys.exit(1)


# ------------------------------------------------------------------------------ init, doctor


@cli.command("init")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def init(as_json: bool) -> None:
    """Create every topic and apply the database migrations (idempotent)."""
    from wakeline.infra.provision import initialise
    from wakeline.infra.settings import DatabaseSettings, KafkaSettings

    report = run_guarded(lambda: initialise(KafkaSettings.from_env(), DatabaseSettings.from_env()))
    if as_json:
        emit_json(report)
        return
    console.print(f"topics created: {', '.join(report['topics_created']) or 'none (all present)'}")
    console.print(f"migrations applied: {', '.join(report['migrations_applied']) or 'none'}")
    console.print(f"database schema version: {report['schema_version']}")
    published = report.get("schemas_published")
    if published is not None:
        new = sum(1 for s in published if s.get("new_in_postgres"))
        console.print(
            f"event schemas published to PostgreSQL and {KafkaSettings.from_env().topics.schemas}:"
            f" {len(published)} ({new} new)"
        )


@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json: bool) -> None:
    """Check Java, Maven, broker, database, topics, schema version and ledger progress
    (`stalled` when records older than WAKELINE_STALL_AFTER_S are not ledgered)."""
    from wakeline.devstack.doctor import run_checks
    from wakeline.infra.settings import DatabaseSettings, KafkaSettings, StackSettings
    from wakeline.processors.settings import BuilderSettings

    checks = run_guarded(
        lambda: run_checks(
            StackSettings.from_env(),
            KafkaSettings.from_env(),
            DatabaseSettings.from_env(),
            stall_after_s=BuilderSettings.from_env().stall_after_s,
        )  # fmt: skip
    )
    if as_json:
        emit_json([c.__dict__ for c in checks])
    else:
        table = Table(title="wakeline doctor")
        for col in ("check", "", "detail", "how to fix"):
            table.add_column(col)
        for c in checks:
            mark = "[green]ok[/]" if c.ok else "[red]FAIL[/]"
            if c.state:
                mark = f"[green]{c.state}[/]" if c.ok else f"[red]{c.state}[/]"
            table.add_row(c.name, mark, c.detail, "" if c.ok else c.fix)
        console.print(table)
    if not all(c.ok for c in checks):
        sys.exit(1)


@cli.command("demo")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--keep",
    is_flag=True,
    help="Leave the local stack running, and the demo's topics, database and files "
    "(WAKELINE_HOME/demo) for exploring: `. WAKELINE_HOME/demo/env.sh; wakeline workflow "
    "list` (and `wakeline approvals list`, `ledger-verify`).",
)
def demo(as_json: bool, keep: bool) -> None:
    """Run the end-to-end scenario and print what happened: starts the local stack if it is
    not running, and stops what it started at the end unless --keep. A stack you started
    yourself, or an external one, is left as it was.

    The demo runs in a namespace of its own, made for each run and removed at its end (with
    --keep, or if it fails, by the next run): topics under the prefix
    `demo.<run>.<WAKELINE_TOPIC_PREFIX>` and a database `wl_demo_<run>` on WAKELINE_DSN's
    server. It never reads or writes the configured topics and database. Against your own
    Kafka and PostgreSQL (WAKELINE_BOOTSTRAP, WAKELINE_DSN) the client must be allowed to
    create and delete those topics, and the PostgreSQL role to create databases (CREATEDB);
    the demo says so if either is refused."""
    from wakeline.demo import run
    from wakeline.devstack import stack as local
    from wakeline.infra.settings import DatabaseSettings, KafkaSettings, StackSettings

    # with --json the story goes to stderr and only the report to stdout
    out = err_console if as_json else console
    kafka, database = KafkaSettings.from_env(), DatabaseSettings.from_env()
    stack = StackSettings.from_env()

    def go() -> dict:
        with out.status("starting the local stack...", spinner="dots"):
            up = local.up(stack, kafka=not kafka.external, postgres=not database.external)
        started = [n for n in ("kafka", "postgres") if (up.get(n) or {}).get("started")]
        try:
            report = run(kafka, database, console=out, keep=keep)
        finally:
            if started and not keep:
                if "kafka" in started:
                    local.stop_kafka(stack)
                if "postgres" in started:
                    local.stop_postgres(stack)
                out.print(f"stopped what the demo started: {', '.join(sorted(started))}")
        if keep:
            out.print(f"the stack and the demo's files ({stack.home / 'demo'}) are kept")
        return report

    report = run_guarded(go)
    if as_json:
        emit_json(report)


def _attach_component_commands() -> None:
    """Commands owned by components, each in its own cli/ module."""
    from wakeline.cli.alerts import alerts
    from wakeline.cli.approvals import approvals
    from wakeline.cli.compensator import compensator
    from wakeline.cli.config import config
    from wakeline.cli.grants import grants
    from wakeline.cli.incidents import incidents
    from wakeline.cli.ledger import ledger
    from wakeline.cli.operator import quarantine, release
    from wakeline.cli.policy import policy
    from wakeline.cli.tail import tail
    from wakeline.cli.worker import worker
    from wakeline.cli.workflow import workflow

    for command in (
        ledger,
        worker,
        tail,
        config,
        workflow,
        compensator,
        quarantine,
        release,
        incidents,
        alerts,
        grants,
        policy,
        approvals,
    ):
        cli.add_command(command)


_attach_component_commands()


def main() -> None:
    cli(prog_name="wakeline")


if __name__ == "__main__":
    main()
