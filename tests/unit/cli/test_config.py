"""`wakeline config` through click's CliRunner, with an environment of the test's own."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from wakeline.cli.main import cli


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    for name in [k for k in os.environ if k.startswith("WAKELINE_")]:
        monkeypatch.delenv(name)

    def invoke(env: dict[str, str], *args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(cli, ["config", *args], env=env)

    return invoke


def _variables(output: str) -> dict[str, dict]:
    report = json.loads(output)
    return {v["name"]: {**v, "component": c["name"]} for c in report["components"]
            for v in c["variables"]}  # fmt: skip


def test_json_lists_every_variable_with_value_and_source(run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {
        "WAKELINE_HOME": str(tmp_path),
        "WAKELINE_DSN": "postgresql://wakeline:s3cret@db:5432/wakeline",
        "WAKELINE_SEGMENT_MAX_LEAVES": "500",
        "WAKELINE_SIGNING_KEY": "/keys/ledger.key",
    }
    result = run(env, "--json")
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    v = _variables(result.output)
    assert v["WAKELINE_DSN"]["value"] == "postgresql://wakeline:***@db:5432/wakeline"
    assert v["WAKELINE_DSN"]["source"] == "environment"
    assert v["WAKELINE_SIGNING_KEY"]["value"] == "/keys/ledger.key"  # a path is not a secret
    assert v["WAKELINE_SEGMENT_MAX_LEAVES"] | {"doc": ""} == {
        "name": "WAKELINE_SEGMENT_MAX_LEAVES",
        "component": "builder",
        "value": 500,
        "source": "environment",
        "doc": "",
    }
    assert v["WAKELINE_CONTROLLER_PORT"] == v["WAKELINE_CONTROLLER_PORT"] | {
        "value": 19093,
        "source": "default",
        "component": "stack",
    }
    assert v["WAKELINE_BOOTSTRAP"]["value"] == "127.0.0.1:19092"
    assert all(row["doc"] for row in v.values())
    assert {"WAKELINE_LOG_LEVEL", "WAKELINE_MAX_RECORD_BYTES", "WAKELINE_STALL_AFTER_S"} <= set(v)


def test_text_groups_by_component_with_each_doc_line(run) -> None:  # type: ignore[no-untyped-def]
    result = run({"WAKELINE_PARTITIONS": "3"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    builder = lines.index(next(line for line in lines if line.startswith("builder: ")))
    leaves = next(i for i, line in enumerate(lines) if "WAKELINE_SEGMENT_MAX_LEAVES" in line)
    assert leaves > builder and lines[leaves].split()[1:] == ["20000", "(default)"]
    assert lines[leaves + 1].strip() == "a segment closes at this many leaves"
    partitions = next(line for line in lines if "WAKELINE_PARTITIONS" in line)
    assert partitions.split()[1:] == ["3", "(environment)"]


def test_a_typo_and_a_bad_value_are_shown_and_fail(run) -> None:  # type: ignore[no-untyped-def]
    result = run({"WAKELINE_SEGMNT_MAX_LEAVES": "500", "WAKELINE_PARTITIONS": "three"})
    assert result.exit_code == 2
    assert "unknown: WAKELINE_SEGMNT_MAX_LEAVES; did you mean WAKELINE_SEGMENT_MAX_LEAVES?" in (
        result.output
    )
    assert "error: WAKELINE_PARTITIONS='three' is not a whole number" in result.output
    report = json.loads(run({"WAKELINE_SEGMNT_MAX_LEAVES": "1"}, "--json").output)
    assert report["unknown"] == [
        {"name": "WAKELINE_SEGMNT_MAX_LEAVES", "did_you_mean": "WAKELINE_SEGMENT_MAX_LEAVES"}
    ]


def test_a_password_in_kafka_extras_is_masked(run) -> None:  # type: ignore[no-untyped-def]
    env = {"WAKELINE_KAFKA_CONFIG": "security.protocol=SASL_SSL,sasl.password=hunter2"}
    result = run(env, "--json")
    assert "hunter2" not in result.output
    value = _variables(result.output)["WAKELINE_KAFKA_CONFIG"]["value"]
    assert value == "security.protocol=SASL_SSL,sasl.password=***"


def test_a_bad_log_level_is_one_clear_error(run) -> None:  # type: ignore[no-untyped-def]
    result = run({"WAKELINE_LOG_LEVEL": "loud"})
    assert result.exit_code == 2
    assert "WAKELINE_LOG_LEVEL='loud' is not one of DEBUG, INFO" in result.output
