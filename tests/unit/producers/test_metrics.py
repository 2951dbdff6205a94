"""The SDK's opt-in metrics: calls by tool and status, refusals by gate; off costs an
attribute check and never loads prometheus-client."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from wakeline.infra.metrics import NO_METRICS, PrometheusMetrics
from wakeline.producers import LoopRefused, PolicyDecision, PolicyDenied

from ..infra.test_metrics import scraped


def calls(metrics: PrometheusMetrics) -> dict[tuple[str, ...], float]:
    out = {}
    for (name, labels), value in scraped(metrics.render().decode()).items():
        if name in ("wakeline_sdk_calls_total", "wakeline_sdk_refusals_total"):
            out[(name.split("_")[2], *(v for _, v in labels))] = value
    return out


def test_calls_are_counted_by_tool_and_status_and_refusals_by_gate(recorded):
    emitter, _ = recorded
    emitter.metrics = metrics = PrometheusMetrics()
    ctx = emitter.workflow("wf-m", agent_id="a", principal="p")
    ctx.call("kv.get", lambda **a: 1, {"key": "x"})
    ctx.call("kv.get", lambda **a: 2, {"key": "y"})
    with pytest.raises(KeyError):
        ctx.call("kv.put", lambda **a: {}["missing"], {"key": "x"})
    for _ in range(2):
        ctx.call("kv.put", lambda **a: None, {"key": "same"})
    with pytest.raises(LoopRefused):  # the third identical call in the window
        ctx.call("kv.put", lambda **a: None, {"key": "same"})
    emitter.policy = lambda req: PolicyDecision("deny", "no", "limits")
    with pytest.raises(PolicyDenied):
        ctx.call("kv.put", lambda **a: None, {"key": "z"})
    emitter.policy = lambda req: PolicyDecision("allow")
    asyncio.run(ctx.acall("kv.get", lambda **a: 3, {"key": "async"}))
    assert calls(metrics) == {
        # label values in sorted label-name order: status, tool
        ("calls", "ok", "kv.get"): 3,
        ("calls", "error", "kv.put"): 1,
        ("calls", "ok", "kv.put"): 2,
        ("calls", "denied", "kv.put"): 2,
        ("refusals", "loop-guard"): 1,
        ("refusals", "policy"): 1,
    }


def test_metrics_are_off_unless_given(recorded):
    emitter, _ = recorded
    assert emitter.metrics is None
    emitter.workflow("wf", agent_id="a", principal="p").call("kv.get", lambda **a: 1, {"key": 1})


def test_the_no_op_is_taken_as_off(tmp_path):
    from wakeline.infra.settings import KafkaSettings
    from wakeline.producers import Emitter

    em = Emitter(
        KafkaSettings(bootstrap="127.0.0.1:1"),
        spool_dir=tmp_path,
        spool_only=True,
        publish_schemas=False,
        quarantine_gate=False,
        metrics=NO_METRICS,
    )
    try:
        assert em.metrics is None
    finally:
        em.close(timeout=1)


def test_an_agent_without_metrics_never_loads_prometheus_client():
    code = (
        "import json, sys, tempfile\n"
        "from pathlib import Path\n"
        "import wakeline.producers as p\n"
        "from wakeline.infra.settings import KafkaSettings, Topics\n"
        "kafka = KafkaSettings(bootstrap='127.0.0.1:1', topics=Topics('b.'))\n"
        "with tempfile.TemporaryDirectory() as tmp:\n"
        "    em = p.Emitter(kafka, spool_dir=Path(tmp), spool_only=True, publish_schemas=False,\n"
        "                   quarantine_gate=False)\n"
        "    ctx = em.workflow('wf', agent_id='a', principal='p')\n"
        "    ctx.call('t', lambda x: x, {'x': 1})\n"
        "    ctx.complete_workflow()\n"
        "    em.close()\n"
        "print(json.dumps([m for m in sys.modules if m.split('.')[0] == 'prometheus_client']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
