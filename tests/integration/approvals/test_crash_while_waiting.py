"""A process killed while a call waits for its approval leaves no silent gap: the call is in
the spool's journal of waiting calls, and reopening the run writes its `aborted` result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from .kit import make_emitter, new_wf

pytestmark = pytest.mark.integration

AGENT = Path(__file__).with_name("waiting_agent.py")


def test_a_call_killed_while_waiting_is_aborted_when_its_run_reopens(world, follow, tmp_path):
    spool = tmp_path / "spool"
    wf, run = new_wf(), str(uuid.uuid4())
    events = follow(wf)
    env = {**os.environ, "WAKELINE_TOPIC_PREFIX": world.kafka.topics.prefix}
    agent = subprocess.Popen([sys.executable, str(AGENT), str(spool), wf, run], env=env)
    try:
        (request,) = events.requests(timeout=60)
        deadline = time.monotonic() + 20
        while not list((spool / "waiting").glob("*.json")):
            assert time.monotonic() < deadline and agent.poll() is None, "no journal entry"
            time.sleep(0.02)
        os.kill(agent.pid, signal.SIGKILL)
        assert agent.wait(20) == -signal.SIGKILL
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(20)
    (intent,) = events.of_type("ToolIntent")
    assert request["intent_id"] == intent["event_id"] and intent["run_id"] == run
    assert not events.of_type("ToolResult")

    emitter = make_emitter(world, spool)
    try:
        assert emitter.waiting.orphans == 1
        emitter.workflow(wf, run_id="another-run", agent_id="billing-bot", principal="carol")
        assert emitter.waiting.orphans == 1  # another run of the workflow: not this call's
        emitter.workflow(wf, run_id=run, agent_id="billing-bot", principal="carol")
        assert emitter.flush(20) == 0
        result = events.result_of(intent["event_id"])
        assert result["status"] == "aborted" and result["run_id"] == run
        assert "waiting" in result["error_message"]
        assert emitter.waiting.orphans == 0
        assert not list((spool / "waiting").glob("*.json"))
        # opened once more: nothing is aborted twice (the seal after it marks the end)
        again = emitter.workflow(wf, run_id=run, agent_id="billing-bot", principal="carol")
        again.complete_workflow("failed")
        assert emitter.flush(20) == 0
    finally:
        emitter.close(timeout=10)
    events.until(lambda ev: any(e["type"] == "WorkflowCompleted" for e in ev))
    assert [e["type"] for e in events.events if e["type"] == "ToolResult"] == ["ToolResult"]
