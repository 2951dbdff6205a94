"""`wakeline config`: every variable the components declare, its value and where it came from."""

from __future__ import annotations

import os
import sys
from typing import Any

import click


@click.command("config")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def config(as_json: bool) -> None:
    """Print every WAKELINE_* variable by component: value (secrets and passwords masked),
    source (environment or default) and meaning. Exits 2 when a value is invalid or a
    WAKELINE_* name is unknown."""
    from wakeline.cli.main import emit_json
    from wakeline.infra.settings import describe

    report = describe(os.environ)
    if as_json:
        emit_json(report)
    else:
        _print(report)
    bad = report["unknown"] or any(
        "error" in v for c in report["components"] for v in c["variables"]
    )
    if bad:
        sys.exit(2)


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _print(report: dict[str, Any]) -> None:
    rows = [v for c in report["components"] for v in c["variables"]]
    width = max(len(v["name"]) for v in rows)
    for component in report["components"]:
        click.echo(f"{component['name']}: {component['doc']}")
        for v in component["variables"]:
            click.echo(f"  {v['name']:<{width}}  {_shown(v['value'])}  ({v['source']})")
            click.echo(f"  {'':<{width}}    {v['doc']}")
            if "error" in v:
                click.echo(f"  {'':<{width}}    error: {v['error']}")
        click.echo()
    for u in report["unknown"]:
        hint = f"; did you mean {u['did_you_mean']}?" if u["did_you_mean"] else ""
        click.echo(f"unknown: {u['name']}{hint}")
