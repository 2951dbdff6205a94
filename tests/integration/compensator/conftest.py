"""Helpers of the compensator's integration tests: an SDK emitter, quarantines, a daemon."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from wakeline.compensator.daemon import Compensator
from wakeline.compensator.registry import CompensationRegistry
from wakeline.compensator.settings import CompensatorSettings
from wakeline.infra.settings import KafkaSettings
from wakeline.producers import Emitter, ToolRegistry, ToolSpec
from wakeline.producers.workflow import WorkflowContext

pytestmark = pytest.mark.integration

KV_TOOLS = ToolRegistry(
    [
        ToolSpec("kv.put", reversibility="reversible", impact="low", compensation="kv.undo"),
        ToolSpec("kv.get", reversibility="read", impact="low"),
        ToolSpec("kv.burn", reversibility="irreversible", impact="high"),
    ]
)


def new_wf() -> str:
    return f"wf-{uuid.uuid4()}"


def quarantine(ctx: WorkflowContext, reason: str = "test", **fields: Any) -> str:
    event = ctx.envelope("Quarantine")
    event.update(
        {"scope": "workflow", "reason": reason, "by": "tester@example.com", "alert_id": None,
         "tainted_event_ids": [], **fields}
    )  # fmt: skip
    return ctx.emit(event, wait=True)


def release(ctx: WorkflowContext, quarantine_id: str | None = None) -> str:
    event = ctx.envelope("Release")
    event.update({"reason": "fixed", "by": "tester@example.com", "quarantine_id": quarantine_id})
    return ctx.emit(event, wait=True)


def wait_until(check: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def rows(dsn: str, sql: str, *args: Any) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


def plan_state(dsn: str, qid: str) -> str | None:
    got = rows(dsn, "SELECT state FROM compensator_plans WHERE quarantine_id = %s", qid)
    return got[0][0] if got else None


@pytest.fixture
def emitter(fresh_kafka: KafkaSettings, tmp_path: Path) -> Iterator[Emitter]:
    em = Emitter(fresh_kafka, spool_dir=tmp_path / "spool", registry=KV_TOOLS, loop_guard=False)
    assert em.gate is not None and em.gate.wait_ready(15)
    yield em
    em.close(timeout=10)


@pytest.fixture
def start_compensator(
    fresh_kafka: KafkaSettings, fresh_dsn: str
) -> Iterator[Callable[..., Compensator]]:
    started: list[Compensator] = []

    def start(handlers: CompensationRegistry, **settings: Any) -> Compensator:
        s = CompensatorSettings(**{"lease_s": 3, "backoff_initial_s": 0.05,
                                   "backoff_max_s": 0.2, **settings})  # fmt: skip
        daemon = Compensator(fresh_kafka, fresh_dsn, handlers, s).start()
        started.append(daemon)
        return daemon

    yield start
    for d in started:
        d.stop(10)
