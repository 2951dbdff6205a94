"""Helpers of the compensator's integration tests: an SDK emitter, quarantines, a daemon
(in-process, or `wakeline compensator` as a child process), the example world and a workflow
that acts on it, and what the events topic says about a workflow."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
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
from wakeline.schemas import decode_event
from wakeline.testkit.harness import (
    read_topic,
    wait_until,  # noqa: F401 - the tests import it from here
    worker_env,
)
from wakeline_world import World
from wakeline_world import tools as world_tools

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


# -- the example world -------------------------------------------------------------------------

#: the world's tools an agent makes mixed workflows of, each with its compensating action
MIXED = ("payments.charge", "crm.update", "inventory.reserve", "cloud.create_vm")
SKU = "sku-widget"


@pytest.fixture
def world(fresh_dsn: str) -> World:
    """The example world in the test's database (schema `world`), with stock to reserve."""
    w = World(fresh_dsn).install()
    w.inventory.restock(SKU, 10_000)
    return w


#: the example world's tools and the compensating action of each
UNDO = {"payments.charge": "payments.refund", "crm.update": "crm.restore",
        "inventory.reserve": "inventory.release", "cloud.create_vm": "cloud.delete_vm"}  # fmt: skip


@pytest.fixture
def handlers(world: World) -> Iterator[CompensationRegistry]:
    """The world's compensating actions (wakeline_world.undo), acting on the test's world."""
    from wakeline.compensator.registry import load_handlers
    from wakeline_world import undo

    undo.set_world(world)
    yield load_handlers(["wakeline_world.undo"]).handlers
    undo.set_world(None)


@pytest.fixture
def world_emitter(fresh_kafka: KafkaSettings, tmp_path: Path) -> Iterator[Emitter]:
    """An SDK emitter declaring the world's tools."""
    em = Emitter(
        fresh_kafka,
        spool_dir=tmp_path / "world-spool",
        registry=world_tools.registry(),
        loop_guard=False,
    )
    assert em.gate is not None and em.gate.wait_ready(15)
    yield em
    em.close(timeout=10)


def world_args(tool: str, tag: str) -> dict[str, Any]:
    """Arguments of one call of `tool`, unique by `tag` (its own record, VM, key)."""
    args: dict[str, Any] = {
        "payments.charge": {"customer": f"cus_{tag}", "amount_cents": 1000 + len(tag),
                            "currency": "EUR", "card_number": "4242 4242 4242 4242"},
        "crm.update": {"record_id": f"rec_{tag}", "fields": {"tier": "gold", "tag": tag}},
        "inventory.reserve": {"sku": SKU, "quantity": 1, "order_ref": tag},
        "cloud.create_vm": {"name": f"vm-{tag}", "size": "small", "region": "eu-west"},
        "email.send": {"to": f"{tag}@example.com", "subject": "Receipt", "body": "Paid"},
    }[tool]  # fmt: skip
    return {**args, "idempotency_key": f"agent/{tag}"}


def act_on_world(
    ctx: WorkflowContext, world: World, count: int, tools: Sequence[str] = MIXED
) -> list[tuple[str, dict[str, Any]]]:
    """`count` calls of `tools` in turn, with real effects in the world; (tool, response)."""
    done, batch = [], uuid.uuid4().hex[:6]
    for i in range(count):
        tool = tools[i % len(tools)]
        tag = f"{ctx.workflow_id[-8:]}-{batch}-{i}"
        done.append((tool, ctx.call(tool, world.tool(tool), world_args(tool, tag))))
    return done


def assert_undone_once(world: World, calls: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Every call's compensating effect happened in the world exactly once, and the world's
    state says so: each charge fully refunded once, each reservation released once, each VM
    deleted once, each record restored once (to version 0: it is gone again)."""
    undo = {"payments.charge": ("payments.refund", "charge_id"),
            "crm.update": ("crm.restore", "record_id"),
            "inventory.reserve": ("inventory.release", "reservation_id"),
            "cloud.create_vm": ("cloud.delete_vm", "vm_id")}  # fmt: skip
    for op in {undo[t][0] for t, _ in calls}:
        want = {r[undo[t][1]] for t, r in calls if undo[t][0] == op}
        got = world.performed(op)
        assert got == dict.fromkeys(want, 1), f"{op}: performed {got}, want each of {want} once"
    for tool, r in calls:
        if tool == "payments.charge":
            row = world.payments.get(r["charge_id"])
            assert row["refunded_cents"] == row["amount_cents"], row
            assert len(world.payments.refunds(r["charge_id"])) == 1
        elif tool == "crm.update":
            assert world.crm.get(r["record_id"]) is None, r
        elif tool == "inventory.reserve":
            assert world.inventory.reservation(r["reservation_id"])["status"] == "released"
        elif tool == "cloud.create_vm":
            assert world.cloud.vm(r["vm_id"])["status"] == "deleted"


# -- what the events topic says ----------------------------------------------------------------


def topic_events(kafka: KafkaSettings, workflow_id: str | None = None) -> list[dict[str, Any]]:
    """The decodable events of the events topic (of one workflow), in partition order."""
    msgs = sorted(read_topic(kafka, kafka.topics.events, idle=1.0),
                  key=lambda m: (m.partition(), m.offset()))  # fmt: skip
    out = []
    for m in msgs:
        if workflow_id is not None and m.key() != workflow_id.encode():
            continue
        try:
            out.append(decode_event(m.value()))
        except Exception:  # noqa: BLE001, S112 - garbage a test produced on purpose
            continue
    return out


def ok_results(events: Sequence[dict[str, Any]]) -> dict[str, set[str]]:
    """Intent id -> the idempotency keys of its CompensationResult events with status ok."""
    out: dict[str, set[str]] = {}
    for e in events:
        if e["type"] == "CompensationResult" and e["status"] == "ok":
            out.setdefault(e["original_event_id"], set()).add(e["idempotency_key"])
    return out


# -- `wakeline compensator` as a child process -------------------------------------------------

_CLI = "import sys\nfrom wakeline.cli.main import cli\ncli(sys.argv[1:], prog_name='wakeline')\n"


def spawn_compensator(
    kafka: KafkaSettings,
    dsn: str,
    *args: str,
    log_path: Path,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """`wakeline compensator <args>` with the test's topics, database and world (the world
    lives in the test's database); its output is appended to `log_path`."""
    full_env = {**worker_env(kafka, dsn), "WAKELINE_WORLD_DSN": dsn, **(env or {})}
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", _CLI, "compensator", *args],
            env=full_env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
