from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: an agent's set-up: Kafka settings of a broker that is not there, a spool of its own
AGENT = (
    "import tempfile\n"
    "from pathlib import Path\n"
    "import wakeline.producers as p\n"
    "from wakeline.infra.settings import KafkaSettings, Topics\n"
    "kafka = KafkaSettings(bootstrap='127.0.0.1:1', topics=Topics('b.'))\n"
    "spool_dir = tempfile.TemporaryDirectory()  # removed when the interpreter ends\n"
    "spool = Path(spool_dir.name)\n"
)


def loaded_by(code: str) -> set[str]:
    """The modules a fresh interpreter holds once it ran `code`."""
    code += "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def among(loaded: set[str], forbidden: set[str]) -> set[str]:
    """The modules of `loaded` that are, or are inside, one of `forbidden`."""
    return {m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden)}


def test_the_sdk_never_loads_the_stream_engine_or_other_components():
    loaded = loaded_by("import wakeline.producers, wakeline.producers.adapters.langchain")
    forbidden = {"faust", "wakeline.processors", "wakeline.compensator", "wakeline.cli", "click"}
    assert not among(loaded, forbidden)


def test_an_agent_needs_kafka_only_no_psycopg_no_faust():
    """Import the SDK, run a workflow (gates, intent, result, seal) and load the Kafka side of
    the schema registry: neither psycopg nor faust nor the database layer is ever loaded."""
    loaded = loaded_by(
        AGENT + "from wakeline.infra.schema_registry import publish_to_kafka\n"
        "em = p.Emitter(kafka, spool_dir=spool, spool_only=True, publish_schemas=False,\n"
        "               quarantine_gate=p.QuarantineGate(kafka, startup_timeout_s=0.05))\n"
        "ctx = em.workflow('wf', agent_id='a', principal='p')\n"
        "ctx.call('t', lambda x: x, {'x': 1})\n"
        "ctx.complete_workflow()\n"
        "em.close()\n"
    )
    forbidden = {"psycopg", "psycopg_binary", "faust", "wakeline.infra.db", "wakeline.ledger"}
    assert "wakeline.producers.workflow" in loaded and "confluent_kafka" in loaded
    assert not among(loaded, forbidden)


def test_a_langgraph_agent_loads_neither_the_compensator_nor_psycopg():
    """Import the LangGraph adapter and run a graph (each checkpoint a snapshot): the rollback
    it would run on going back (compensator/rollback.py) is loaded only then."""
    pytest.importorskip("langgraph")
    loaded = loaded_by(
        AGENT + "from typing import TypedDict\n"
        "from langgraph.graph import END, START, StateGraph\n"
        "from wakeline.producers.adapters.langgraph import WakelineGraph\n"
        "class S(TypedDict):\n"
        "    n: int\n"
        "em = p.Emitter(kafka, spool_dir=spool, spool_only=True, publish_schemas=False,\n"
        "               quarantine_gate=False)\n"
        "wl = WakelineGraph(em, 'wf', agent_id='a', principal='p')\n"
        "g = StateGraph(S)\n"
        "g.add_node('a', lambda s: {'n': wl.call('t', lambda x: x + 1, {'x': s['n']})})\n"
        "g.add_edge(START, 'a')\n"
        "g.add_edge('a', END)\n"
        "app = g.compile(checkpointer=wl.checkpointer)\n"
        "assert wl.invoke(app, {'n': 1}, wl.config('t')) == {'n': 2}\n"
        "assert len(wl.snapshots) == 3\n"
        "em.close()\n"
    )
    assert "wakeline.producers.adapters.langgraph" in loaded
    assert not among(
        loaded, {"psycopg", "psycopg_binary", "wakeline.compensator", "wakeline.infra.db"}
    )
