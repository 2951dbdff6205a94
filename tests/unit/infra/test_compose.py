"""Every service of docker-compose.yml runs a command the `wakeline` CLI has.

A service with `restart: unless-stopped` whose command does not exist would crash-loop, so each
`wakeline ...` command is asked for `--help` through click (an unknown command exits 2).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from wakeline.cli.main import cli

COMPOSE = Path(__file__).resolve().parents[3] / "docker-compose.yml"


def _services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _command(service: dict) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def _wakeline_services() -> list[tuple[str, list[str]]]:
    return [
        (name, _command(service))
        for name, service in _services().items()
        if _command(service)[:1] == ["wakeline"]
    ]


def test_every_image_service_runs_a_wakeline_command() -> None:
    # the image has no entrypoint: a service built from it without a command would run nothing
    for name, service in _services().items():
        if "build" in service:
            assert _command(service)[:1] == ["wakeline"], f"service {name!r}: no wakeline command"
    assert len(_wakeline_services()) >= 2  # init and worker at least: never a vacuous pass


#: commands being written on another branch: expected to fail (strictly) while absent from
#: the CLI, checked like every other command once they exist
def _param(name: str, command: list[str]) -> object:
    return pytest.param(name, command, id=name)


def test_the_compensator_service_loads_the_example_worlds_handlers() -> None:
    service = _services()["compensator"]
    assert _command(service) == ["wakeline", "compensator", "--handlers", "wakeline_world.undo"]
    assert service["depends_on"] == {"init": {"condition": "service_completed_successfully"}}
    assert "./examples/world" in (COMPOSE.parent / "Dockerfile").read_text()


@pytest.mark.parametrize(("name", "command"), [_param(n, c) for n, c in _wakeline_services()])
def test_service_command_exists(name: str, command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command[1:], "--help"], prog_name="wakeline")
    assert result.exit_code == 0, f"service {name!r}: `{' '.join(command)}`: {result.output}"
