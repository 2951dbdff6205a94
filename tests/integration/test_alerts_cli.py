"""`wakeline alerts list|show` and `wakeline tail --alerts` against the real broker."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from wakeline.cli.main import cli
from wakeline.infra.settings import KafkaSettings
from wakeline.processors.tail import read_alerts
from wakeline.producers import Emitter, LoopGuard, LoopRefused, ToolRegistry

pytestmark = pytest.mark.integration


def _env(kafka: KafkaSettings) -> dict[str, str]:
    return {"WAKELINE_BOOTSTRAP": kafka.bootstrap, "WAKELINE_TOPIC_PREFIX": kafka.topics.prefix}


def _loop(kafka: KafkaSettings, tmp_path: Path, workflow_id: str, tool: str = "pay") -> None:
    registry = ToolRegistry()
    registry.declare(tool, reversibility="irreversible", impact="high")
    with Emitter(kafka, spool_dir=tmp_path / workflow_id, registry=registry,
                 quarantine_gate=False, publish_schemas=False,
                 loop_guard=LoopGuard(max_repeats=2, window_s=60)) as em:  # fmt: skip
        ctx = em.workflow(workflow_id, agent_id="billing-bot", principal="alice")
        ctx.call(tool, lambda **_: None, {"customer": 123})
        with pytest.raises(LoopRefused):
            ctx.call(tool, lambda **_: None, {"customer": 123})


def test_alerts_list_show_and_tail(fresh_kafka: KafkaSettings, tmp_path: Path) -> None:
    kafka = fresh_kafka
    runner = CliRunner()
    env = _env(kafka)
    empty = runner.invoke(cli, ["alerts", "list"], env=env)
    assert empty.exit_code == 0, empty.output
    assert "no alerts" in empty.output
    wf_a, wf_b = f"wf-{uuid.uuid4()}", f"wf-{uuid.uuid4()}"
    _loop(kafka, tmp_path, wf_a)
    _loop(kafka, tmp_path, wf_b, tool="refund")

    found = read_alerts(kafka)
    assert [a["workflow_id"] for a in found] == [wf_a, wf_b]
    assert read_alerts(kafka, limit=1) == found[-1:]
    assert [a["workflow_id"] for a in read_alerts(kafka, workflow=wf_a)] == [wf_a]

    listed = runner.invoke(cli, ["alerts", "list", "--workflow", wf_a], env=env)
    assert listed.exit_code == 0, listed.output
    assert wf_a in listed.output and wf_b not in listed.output
    assert "repeat" in listed.output and "billing-bot called pay" in listed.output

    as_json = runner.invoke(cli, ["alerts", "list", "--json", "-n", "5"], env=env)
    rows = json.loads(as_json.output)
    assert [r["detector"] for r in rows] == ["repeat", "repeat"]
    alert_id = rows[0]["event_id"]

    shown = runner.invoke(cli, ["alerts", "show", alert_id], env=env)
    assert shown.exit_code == 0, shown.output
    assert f"alert {alert_id}" in shown.output and "rule:      repeat" in shown.output
    assert "limit = 2" in shown.output  # the attributes: the evidence
    one = json.loads(runner.invoke(cli, ["alerts", "show", alert_id, "--json"], env=env).output)
    assert one["event_id"] == alert_id and len(one["related_event_ids"]) == 1

    missing = runner.invoke(cli, ["alerts", "show", "no-such-alert"], env=env)
    assert missing.exit_code != 0 and "no alert no-such-alert" in missing.output

    tailed = runner.invoke(
        cli,
        ["tail", "--alerts", "--from-beginning", "-n", "2", "--idle-exit", "5"],
        env=env,
    )
    assert tailed.exit_code == 0, tailed.output
    lines = tailed.output.strip().splitlines()
    assert len(lines) == 2  # partitions interleave: in any order
    assert sorted(wf for wf in (wf_a, wf_b) for line in lines if wf in line) == sorted([wf_a, wf_b])
    assert all("repeat" in line for line in lines)
