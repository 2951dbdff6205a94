"""Quarantine scopes across workflows (compensator/scopes.py), on the real broker and
PostgreSQL over the example world: a taint quarantine across a three-workflow chain undoes
exactly the dependent calls, children first, and leaves an unrelated workflow of the same
agent alone; agent and boundary scopes fan out, refuse new calls in any workflow, and take
in calls that were already past the gate; a Release lifts them everywhere."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import time
import zlib
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from wakeline.cli.main import cli
from wakeline.compensator import operator, scopes
from wakeline.compensator.registry import CompensationRegistry
from wakeline.infra.settings import KafkaSettings
from wakeline.producers import Emitter
from wakeline.producers.errors import WorkflowQuarantined
from wakeline.producers.workflow import WorkflowContext
from wakeline.testkit.harness import stop_worker, worker_env
from wakeline_world import World

from .conftest import MIXED as MIXED_TOOLS
from .conftest import UNDO, new_wf, rows, spawn_compensator, wait_until, world_args

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

SUBJECT = {"payments.charge": "charge_id", "crm.update": "record_id",
           "inventory.reserve": "reservation_id", "cloud.create_vm": "vm_id"}  # fmt: skip


def act(
    ctx: WorkflowContext, world: World, tool: str, tag: str, parents: Sequence[str] = ()
) -> tuple[str, str, dict[str, Any]]:
    """One call of `tool` with a real effect; (intent id, tool, response)."""
    call = ctx.begin(tool, world_args(tool, tag), parents=parents)
    response = world.tool(tool)(**call.args)
    call.ok(response)
    return call.intent_id, tool, response


def undone(world: World) -> list[tuple[str, str]]:
    """(operation, subject) of every compensating effect performed, in the order it ran."""
    ops = set(UNDO.values())
    return [(c["operation"], c["subject"]) for c in world.calls()
            if c["operation"] in ops and c["outcome"] == "performed"]  # fmt: skip


def subject(call: tuple[str, str, dict[str, Any]]) -> tuple[str, str]:
    _, tool, response = call
    return UNDO[tool], str(response[SUBJECT[tool]])


def plans(dsn: str, origin_id: str) -> dict[str, str]:
    """workflow id -> plan state of the plans of an origin's fan-out."""
    got = rows(
        dsn,
        "SELECT p.workflow_id, p.state FROM compensator_fanouts f JOIN compensator_plans p "
        "ON p.quarantine_id = f.event_id WHERE f.origin_id = %s AND f.kind = 'quarantine'",
        origin_id,
    )
    return dict(got)


def test_a_taint_quarantine_undoes_the_dependent_calls_of_three_workflows_children_first(
    fresh_kafka: KafkaSettings,
    fresh_dsn: str,
    world: World,
    world_emitter: Emitter,
    handlers: CompensationRegistry,
    start_compensator: Any,
) -> None:
    em = world_emitter
    research = em.workflow(new_wf(), agent_id="researcher", principal="alice@example.com")
    billing = em.workflow(new_wf(), agent_id="biller", principal="alice@example.com")
    ops = em.workflow(new_wf(), agent_id="ops", principal="alice@example.com")
    unrelated = em.workflow(new_wf(), agent_id="researcher", principal="alice@example.com")
    bad = act(research, world, "crm.update", "r1")  # step three's corrupted state
    clean = act(research, world, "cloud.create_vm", "r2")  # same workflow, not dependent
    charge = act(billing, world, "payments.charge", "b1", parents=[bad[0]])
    reserve = act(ops, world, "inventory.reserve", "o1", parents=[charge[0]])
    vm = act(ops, world, "cloud.create_vm", "o2")  # same workflow, independent
    other = act(unrelated, world, "crm.update", "u1")  # same agent, another workflow
    assert em.flush(15) == 0

    start_compensator(handlers, workers=4)
    wait_until(lambda: rows(fresh_dsn, "SELECT count(*) FROM compensator_calls")[0][0] == 6,
               timeout=30, what="the causal index")  # fmt: skip
    # the dry run first: what a taint quarantine of the bad call would stop and undo
    impact = scopes.impact(fresh_dsn, fresh_kafka.topics.events, [bad[0]], handlers)
    assert {c["intent_id"]: c["action"] for c in impact["calls"]} == dict.fromkeys(
        (bad[0], charge[0], reserve[0]), "compensate"
    )
    shown = CliRunner().invoke(cli, ["workflow", "impact", bad[0]],
                               env=worker_env(fresh_kafka, fresh_dsn))  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert "3 workflow(s)" in shown.output and "dry run" in shown.output, shown.output
    assert other[0] not in shown.output and vm[0] not in shown.output
    assert undone(world) == []
    q = operator.quarantine(fresh_kafka, None, reason="prompt injection", tainted=[bad[0]])
    assert q["event"]["workflow_id"] == f"taint:{bad[0]}"
    wanted = {research.workflow_id, billing.workflow_id, ops.workflow_id}
    wait_until(lambda: len(undone(world)) >= 3 and set(plans(fresh_dsn, q["event_id"])) ==
               wanted and set(plans(fresh_dsn, q["event_id"]).values()) == {"done"},
               timeout=60, what="the fan-out's plans done")  # fmt: skip
    # exactly the dependent calls, each once, children first across workflows
    assert undone(world) == [subject(reserve), subject(charge), subject(bad)]
    for kept in (clean, vm, other):
        assert subject(kept) not in undone(world)
    # the SDK refuses the three workflows, not the unrelated one of the same agent
    for ctx in (research, billing, ops):
        with pytest.raises(WorkflowQuarantined):
            act(ctx, world, "crm.update", f"after-{ctx.workflow_id[-6:]}")
    act(unrelated, world, "crm.update", "u2")
    # impact names the same calls before anyone presses the button (a dry run: nothing more)
    # after the fact, `impact` names the same calls, already compensated
    impact = scopes.impact(fresh_dsn, fresh_kafka.topics.events, [bad[0]], handlers)
    assert set(impact["workflows"]) == wanted
    assert {c["intent_id"]: c["reason"] for c in impact["calls"]} == dict.fromkeys(
        (bad[0], charge[0], reserve[0]), "already_compensated"
    )


def test_agent_and_boundary_scopes_fan_out_refuse_new_calls_and_release_everywhere(
    fresh_kafka: KafkaSettings,
    fresh_dsn: str,
    world: World,
    world_emitter: Emitter,
    handlers: CompensationRegistry,
    start_compensator: Any,
) -> None:
    em = world_emitter
    wf1 = em.workflow(new_wf(), agent_id="injected", principal="p", boundary="tenant-a")
    wf2 = em.workflow(new_wf(), agent_id="injected", principal="p", boundary="tenant-b")
    mixed = em.workflow(new_wf(), agent_id="billing", principal="p", boundary="tenant-b")
    a1 = act(wf1, world, "crm.update", "a1")
    a2 = act(wf2, world, "payments.charge", "a2")
    m1 = act(mixed, world, "inventory.reserve", "m1")  # another agent: stays
    late = em.workflow(new_wf(), agent_id="injected", principal="p")
    late_call = late.begin("cloud.create_vm", world_args("cloud.create_vm", "late"))
    assert em.flush(15) == 0
    start_compensator(handlers)

    q = operator.quarantine(fresh_kafka, None, reason="prompt-injected", agent="injected",
                            since_us=0)  # fmt: skip
    wait_until(lambda: set(plans(fresh_dsn, q["event_id"])) ==
               {wf1.workflow_id, wf2.workflow_id, late.workflow_id},
               timeout=30, what="the agent's fan-out")  # fmt: skip
    fresh = em.workflow(new_wf(), agent_id="injected", principal="p")
    wait_until(lambda: em.gate.check("agent:injected") is not None, timeout=15,
               what="the agent's gate key")  # fmt: skip
    with pytest.raises(WorkflowQuarantined, match="agent injected is quarantined"):
        act(fresh, world, "crm.update", "new")
    # a call already past the gate when the fan-out came: its result joins the plan
    response = world.tool("cloud.create_vm")(**late_call.args)
    late_call.ok(response)
    assert em.flush(15) == 0
    want = {subject(a1), subject(a2), ("cloud.delete_vm", str(response["vm_id"]))}
    wait_until(lambda: set(undone(world)) == want, timeout=60, what="the agent's calls undone")
    assert subject(m1) not in undone(world)

    operator.release(fresh_kafka, "agent:injected", reason="fixed", dsn=fresh_dsn)
    wait_until(lambda: em.gate.check("agent:injected") is None and em.gate.check(
        wf1.workflow_id) is None, timeout=30, what="the release everywhere")  # fmt: skip
    act(fresh, world, "crm.update", "after-release")

    # boundary: every workflow with calls in it, and new calls in it anywhere
    # (through the CLI this time: `--wait` waits for the gate key)
    env = worker_env(fresh_kafka, fresh_dsn)
    argv = ["quarantine", "--boundary", "tenant-b", "--reason", "breach", "--wait", "20", "--json"]
    got = CliRunner().invoke(cli, argv, env=env)
    assert got.exit_code == 0, got.output
    b = json.loads(got.output)
    assert b["event"]["workflow_id"] == "boundary:tenant-b" and b["visible_after_s"] is not None
    wait_until(lambda: set(plans(fresh_dsn, b["event_id"])) ==
               {wf2.workflow_id, mixed.workflow_id}, timeout=30,
               what="the boundary's fan-out")  # fmt: skip
    wait_until(lambda: em.gate.check("boundary:tenant-b") is not None, timeout=15,
               what="the boundary's gate key")  # fmt: skip
    elsewhere = em.workflow(new_wf(), agent_id="someone", principal="p", boundary="tenant-b")
    with pytest.raises(WorkflowQuarantined, match="boundary tenant-b"):
        act(elsewhere, world, "crm.update", "b-new")
    act(em.workflow(new_wf(), agent_id="someone", principal="p", boundary="tenant-c"), world,
        "crm.update", "c-new")  # fmt: skip
    wait_until(lambda: subject(m1) in undone(world), timeout=60, what="the boundary's undo")
    got = CliRunner().invoke(cli, ["release", "--boundary", "tenant-b"], env=env)
    assert got.exit_code == 0 and f"quarantine {b['event_id']}" in got.output, got.output
    wait_until(lambda: em.gate.check("boundary:tenant-b") is None and
               em.gate.check(mixed.workflow_id) is None, timeout=30,
               what="the boundary released everywhere")  # fmt: skip


def test_calls_that_come_after_the_fan_out_join_it(
    fresh_kafka: KafkaSettings,
    fresh_dsn: str,
    world: World,
    world_emitter: Emitter,
    handlers: CompensationRegistry,
    start_compensator: Any,
    tmp_path: Path,
) -> None:
    """Calls made past the gate (an SDK without the quarantine gate, or one that had not
    caught up) after an origin fanned out: a new workflow of the quarantined agent, and a
    new workflow using a tainted call, each get their child quarantine and are undone."""
    start_compensator(handlers)
    em = world_emitter
    first = em.workflow(new_wf(), agent_id="injected", principal="p")
    a1 = act(first, world, "crm.update", "first")
    source = em.workflow(new_wf(), agent_id="researcher", principal="p")
    bad = act(source, world, "payments.charge", "bad")
    assert em.flush(15) == 0
    wait_until(lambda: rows(fresh_dsn, "SELECT count(*) FROM compensator_calls")[0][0] == 2,
               timeout=30, what="the causal index")  # fmt: skip
    qa = operator.quarantine(fresh_kafka, None, reason="injected", agent="injected")
    qt = operator.quarantine(fresh_kafka, None, reason="tainted", tainted=[bad[0]])
    wait_until(lambda: set(plans(fresh_dsn, qa["event_id"])) == {first.workflow_id} and
               set(plans(fresh_dsn, qt["event_id"])) == {source.workflow_id}, timeout=30,
               what="the first fan-outs")  # fmt: skip
    ungated = Emitter(fresh_kafka, spool_dir=tmp_path / "ungated", quarantine_gate=False,
                      registry=em.registry, loop_guard=False)  # fmt: skip
    try:
        late_agent = ungated.workflow(new_wf(), agent_id="injected", principal="p")
        a2 = act(late_agent, world, "inventory.reserve", "late-agent")
        late_child = ungated.workflow(new_wf(), agent_id="biller", principal="p")
        t2 = act(late_child, world, "cloud.create_vm", "late-taint", parents=[bad[0]])
        assert ungated.flush(15) == 0
    finally:
        ungated.close(10)
    want = {subject(c) for c in (a1, bad, a2, t2)}
    wait_until(lambda: set(undone(world)) == want, timeout=60, what="the late calls undone")
    assert set(plans(fresh_dsn, qa["event_id"])) == {first.workflow_id, late_agent.workflow_id}
    assert set(plans(fresh_dsn, qt["event_id"])) == {source.workflow_id, late_child.workflow_id}


def test_a_workflow_reached_already_takes_in_taint_found_later(
    fresh_kafka: KafkaSettings,
    fresh_dsn: str,
    world: World,
    world_emitter: Emitter,
    handlers: CompensationRegistry,
    start_compensator: Any,
) -> None:
    """W3 uses the tainted call c1 (so the fan-out reaches it) and, in c3, a call X of W2
    that the compensator reads only later (W2's partition lagging). When X arrives, the
    taint grows through X to c3: W2 gets its child, and W3's plan takes in c3."""
    em = world_emitter
    w1, w2, w3 = (em.workflow(new_wf(), agent_id=f"a{i}", principal="p") for i in range(3))
    c1 = act(w1, world, "crm.update", "c1")
    c5 = act(w3, world, "payments.charge", "c5", parents=[c1[0]])
    x = w2.envelope("ToolIntent", parents=[c1[0]])
    x.update(tool="crm.update", args="{}", args_digest=b"\x11" * 32, resources_read=[],
             resources_written=[], reversibility="compensable", impact="low",
             compensation="crm.restore", policy_decision="allow", policy_reason=None,
             durability="strict", redacted_fields=[], approval_id=None,
             undo_window_us=None)  # fmt: skip
    c3 = act(w3, world, "inventory.reserve", "c3", parents=[x["event_id"]])
    assert em.flush(15) == 0
    start_compensator(handlers)
    wait_until(lambda: rows(fresh_dsn, "SELECT count(*) FROM compensator_calls")[0][0] == 3,
               timeout=30, what="the causal index")  # fmt: skip
    q = operator.quarantine(fresh_kafka, None, reason="tainted", tainted=[c1[0]])
    wait_until(lambda: set(plans(fresh_dsn, q["event_id"])) == {w1.workflow_id, w3.workflow_id},
               timeout=30, what="the first fan-out")  # fmt: skip
    actions = "SELECT a.intent_id FROM compensator_actions a JOIN compensator_plans p USING " \
              "(quarantine_id) WHERE p.workflow_id = %s"  # fmt: skip
    assert {r[0] for r in rows(fresh_dsn, actions, w3.workflow_id)} == {c5[0]}
    w2.emit(x, wait=True)  # X arrives at last (no result: its outcome is unknown)
    wait_until(lambda: {r[0] for r in rows(fresh_dsn, actions, w3.workflow_id)} == {c5[0], c3[0]},
               timeout=30, what="W3's plan to take in c3")  # fmt: skip
    wait_until(lambda: w2.workflow_id in plans(fresh_dsn, q["event_id"]), timeout=30,
               what="W2's child")  # fmt: skip
    wait_until(lambda: {subject(c1), subject(c5), subject(c3)} <= set(undone(world)),
               timeout=60, what="the calls undone")  # fmt: skip


def test_a_parent_waits_for_a_dependent_whose_result_is_not_in_yet(
    fresh_kafka: KafkaSettings,
    fresh_dsn: str,
    world: World,
    world_emitter: Emitter,
    handlers: CompensationRegistry,
    start_compensator: Any,
) -> None:
    """The dependent call in W2 is still running when the taint quarantine comes (its plan
    waits for the result to decide): W1's call, its parent, is not undone before it."""
    em = world_emitter
    w1, w2 = (em.workflow(new_wf(), agent_id=f"a{i}", principal="p") for i in range(2))
    root = act(w1, world, "crm.update", "root")
    running = w2.begin("payments.charge", world_args("payments.charge", "run"), parents=[root[0]])
    response = world.tool("payments.charge")(**running.args)
    assert em.flush(15) == 0
    start_compensator(handlers)
    wait_until(lambda: rows(fresh_dsn, "SELECT count(*) FROM compensator_calls")[0][0] == 2,
               timeout=30, what="the causal index")  # fmt: skip
    q = operator.quarantine(fresh_kafka, None, reason="tainted", tainted=[root[0]])
    wait_until(lambda: len(plans(fresh_dsn, q["event_id"])) == 2, timeout=30,
               what="the fan-out's plans")  # fmt: skip
    time.sleep(1.0)  # the parent's turn has come meanwhile (no timing is asserted)
    assert undone(world) == []
    running.ok(response)  # the result arrives: the call joins W2's plan
    assert em.flush(15) == 0
    child = ("payments.refund", str(response["charge_id"]))
    wait_until(lambda: len(undone(world)) == 2, timeout=60, what="both undone")
    assert undone(world) == [child, subject(root)]


def test_children_first_across_two_compensator_processes(
    world: World,
    world_emitter: Emitter,
    fresh_kafka: KafkaSettings,
    fresh_dsn: str,
    tmp_path: Path,
) -> None:
    """A chain over three workflows on three partitions (and a fourth call depending on the
    first), two `wakeline compensator` processes sharing the partitions, slow compensating
    actions: every call's compensation ends before its parent's starts, whichever process
    runs which."""
    from .test_crash import _on_partitions, _owners

    wfs = _on_partitions(3, fresh_kafka.partitions)
    em = world_emitter
    ctxs = [em.workflow(wf, agent_id=f"agent-{i}", principal="p") for i, wf in enumerate(wfs)]
    c1 = act(ctxs[0], world, "crm.update", "c1")
    c2 = act(ctxs[1], world, "payments.charge", "c2", parents=[c1[0]])
    c3 = act(ctxs[2], world, "inventory.reserve", "c3", parents=[c2[0]])
    c4 = act(ctxs[2], world, "cloud.create_vm", "c4", parents=[c1[0]])
    assert em.flush(15) == 0
    for op in UNDO_OPS:  # each undo takes a while: out of order would show
        world.inject(op, "delay", times=None, delay_s=0.3)
    log_path = tmp_path / "compensators.log"
    args = ("--handlers", "wakeline_world.undo", "--lease-s", "3")
    procs = [spawn_compensator(fresh_kafka, fresh_dsn, *args, log_path=log_path) for _ in "AB"]
    try:
        pids = {p.pid for p in procs}
        wait_until(lambda: set(_owners(fresh_dsn).values()) == pids, timeout=60,
                   what="two processes sharing the partitions")  # fmt: skip
        # the order is known for what the compensators have read (docs/compensation.md)
        wait_until(lambda: rows(fresh_dsn, "SELECT count(*) FROM compensator_calls")[0][0] == 4,
                   timeout=60, what="the causal index")  # fmt: skip
        q = operator.quarantine(fresh_kafka, None, reason="chain", tainted=[c1[0]])
        wait_until(lambda: len(undone(world)) == 4, timeout=90, what="the chain undone")
        wait_until(lambda: set(plans(fresh_dsn, q["event_id"]).values()) == {"done"},
                   timeout=30, what="the plans done")  # fmt: skip
    finally:
        for proc in procs:
            assert stop_worker(proc, timeout=30) == 0, log_path.read_text()[-3000:]
    owners = _owners(fresh_dsn)
    ran_in = {owners[zlib.crc32(wf.encode()) % fresh_kafka.partitions] for wf in wfs}
    assert len(ran_in) == 2, f"the chain's partitions were all in one process: {owners}"
    for child, parent in ((c2, c1), (c3, c2), (c4, c1)):
        # the world received the parent's undo only after the child's had taken its 0.3 s
        gap = _requested(world, subject(parent)) - _requested(world, subject(child))
        assert gap >= timedelta(seconds=0.3), (child, parent, gap)


def _requested(world: World, what: tuple[str, str]) -> Any:
    """When the world first received a compensating operation (before its delay)."""
    return min(c["at"] for c in world.calls() if (c["operation"], c["subject"]) == what)


# -- a compensator killed in the middle of a fan-out -------------------------------------------

FANOUT_KILLS = int(os.environ.get("FANOUT_KILLS", "6"))
UNDO_OPS = tuple(UNDO.values())


def _fanout_state(dsn: str, origin_id: str) -> tuple[int, int, int]:
    """(children in the outbox, of them not sent, of them without a plan yet)."""
    got = rows(
        dsn,
        "SELECT count(*), count(*) FILTER (WHERE sent_at IS NULL), count(*) FILTER (WHERE NOT "
        "EXISTS (SELECT 1 FROM compensator_plans p WHERE p.quarantine_id = f.event_id)) "
        "FROM compensator_fanouts f WHERE origin_id = %s AND kind = 'quarantine'",
        origin_id,
    )
    return got[0]


def _owns(dsn: str, pid: int) -> bool:
    """Whether process `pid` holds a partition (it is up: it stops cleanly on SIGTERM)."""
    owners = rows(dsn, "SELECT owner FROM compensator_partitions")
    return any(f":{pid}:" in (o or "") for (o,) in owners)


@pytest.mark.slow
def test_sigkill_during_a_fan_out_loses_no_workflow_and_runs_no_action_twice(
    world: World,
    world_emitter: Emitter,
    fresh_kafka: KafkaSettings,
    fresh_dsn: str,
    tmp_path: Path,
) -> None:
    """60 workflows of one agent, one compensable call each (and one workflow of another
    agent), an agent quarantine, then `wakeline compensator` SIGKILLed FANOUT_KILLS times:
    the first time as soon as the origin is recorded (its outbox written, children not all
    sent or planned), then at seeded random moments, restarted each time. Afterwards every
    workflow has exactly one plan of the origin, each call was undone exactly once in the
    world, and the other agent's workflow was left alone."""
    seed = int(os.environ.get("CRASH_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    log.warning("fan-out crash test seed=%d", seed)
    calls, contexts = [], []
    for i in range(60):
        ctx = world_emitter.workflow(new_wf(), agent_id="injected", principal="p")
        contexts.append(ctx)
        calls.append(act(ctx, world, MIXED_TOOLS[i % len(MIXED_TOOLS)], f"k{i}"))
    bystander = world_emitter.workflow(new_wf(), agent_id="careful", principal="p")
    kept = act(bystander, world, "crm.update", "kept")
    assert world_emitter.flush(15) == 0
    for op in UNDO_OPS:  # a slow service: kills land mid-plan too
        world.inject(op, "delay", times=None, delay_s=0.02)
    log_path = tmp_path / "compensator.log"
    args = ("--handlers", "wakeline_world.undo", "--instance-id", "fanout-1", "--lease-s", "2")
    q = operator.quarantine(fresh_kafka, None, reason="crash test", agent="injected")
    origin = q["event_id"]
    mid_fanout = 0

    def origin_recorded() -> bool:
        return rows(fresh_dsn, "SELECT count(*) FROM compensator_origins")[0][0] == 1

    def halfway() -> bool:  # some children sent, not every one of them planned yet
        total, unsent, unplanned = _fanout_state(fresh_dsn, origin)
        return total == 60 and unsent < 60 and (unsent > 0 or unplanned > 0)

    for kill in range(FANOUT_KILLS):
        proc = spawn_compensator(fresh_kafka, fresh_dsn, *args, log_path=log_path)
        if kill < 2:  # the first two lives die at set points of the fan-out
            with contextlib.suppress(TimeoutError):
                wait_until(origin_recorded if kill == 0 else halfway, timeout=30, every=0.002,
                           what="a point of the fan-out")  # fmt: skip
        else:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(rng.uniform(0.5, 3.0))
        assert proc.poll() is None, log_path.read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        total, unsent, unplanned = _fanout_state(fresh_dsn, origin)
        mid_fanout += total < 60 or unsent > 0 or unplanned > 0
        log.warning("kill %d: outbox %d, unsent %d, without a plan %d", kill, total, unsent,
                    unplanned)  # fmt: skip
    assert mid_fanout >= 1, "no kill landed in the middle of the fan-out"
    proc = spawn_compensator(fresh_kafka, fresh_dsn, *args, log_path=log_path)
    try:
        wait_until(lambda: set(plans(fresh_dsn, origin).values()) == {"done"} and
                   len(plans(fresh_dsn, origin)) == 60 and _owns(fresh_dsn, proc.pid),
                   timeout=180, what="every workflow's plan done")  # fmt: skip
    finally:
        assert stop_worker(proc, timeout=30) == 0, log_path.read_text()[-3000:]
    got = rows(fresh_dsn, "SELECT workflow_id, count(*) FROM compensator_plans GROUP BY 1")
    assert dict(got) == dict.fromkeys((c.workflow_id for c in contexts), 1)
    actions = rows(fresh_dsn, "SELECT intent_id, state FROM compensator_actions")
    assert sorted(actions) == sorted((c[0], "done") for c in calls)
    performed = {op: world.performed(op) for op in UNDO_OPS}
    for call in calls:
        op, subj = subject(call)
        assert performed[op].get(subj) == 1, (op, subj, performed[op].get(subj))
    assert subject(kept) not in undone(world)


def test_the_sweep_fans_out_to_a_call_the_sink_did_not_join(fresh_dsn: str) -> None:
    """A call indexed in a transaction concurrent with its origin's is seen by neither; the
    executor's sweep (every second) reaches it, once."""
    from wakeline.compensator.operator import _envelope
    from wakeline.schemas import decode_event, encode_event

    q = _envelope("Quarantine", "agent:x", "run-1", "ops")
    q.update(scope="agent", target="x", since=None, reason="r", by="ops", alert_id=None,
             tainted_event_ids=[])  # fmt: skip
    topic = "t.events"
    with psycopg.connect(fresh_dsn, autocommit=True) as conn, conn.cursor() as cur:
        assert scopes.on_origin(cur, topic, q, 0, encode_event(q))
        assert rows(fresh_dsn, "SELECT count(*) FROM compensator_fanouts")[0][0] == 0
        late = {"event_id": "i-late", "type": "ToolIntent", "time": q["time"] + 1,
                "workflow_id": "wf-late", "agent_id": "x", "parent_event_ids": []}  # fmt: skip
        scopes.index_events(cur, topic, [(1, late)])  # what a concurrent round wrote
        assert scopes.sweep(cur, topic, [0], decode_event) == 1
        assert scopes.sweep(cur, topic, [0], decode_event) == 0  # idempotent
        assert scopes.sweep(cur, topic, [1], decode_event) == 0  # not its partition
    (child,) = rows(fresh_dsn, "SELECT workflow_id, value FROM compensator_fanouts")
    event = decode_event(bytes(child[1]))
    assert child[0] == "wf-late" and event["origin_id"] == q["event_id"]
    assert (event["workflow_id"], event["scope"], event["target"]) == ("wf-late", "agent", "x")


def test_hostile_scope_fields_do_not_stop_the_compensator(
    fresh_kafka: KafkaSettings,
    fresh_dsn: str,
    world: World,
    world_emitter: Emitter,
    handlers: CompensationRegistry,
    start_compensator: Any,
) -> None:
    """Origins with a NUL in their target or tainted ids, and one without a target, are
    taken as they come (nothing matches); the next quarantine is acted on as usual."""
    from confluent_kafka import Producer

    from wakeline.compensator.operator import _envelope
    from wakeline.schemas import cloudevents_headers, encode_event

    start_compensator(handlers)
    producer = Producer(fresh_kafka.client_config(acks="all"))
    for scope, target, tainted in (("agent", "a\x00b", []), ("tainted", None, ["e\x00f"]),
                                   ("boundary", None, [])):  # fmt: skip
        q = _envelope("Quarantine", f"{scope}:x", "run-1", "mallory")
        q.update(scope=scope, target=target, since=-1, reason="r", by="mallory", alert_id=None,
                 tainted_event_ids=tainted)  # fmt: skip
        producer.produce(fresh_kafka.topics.events, encode_event(q), q["workflow_id"].encode(),
                         headers=cloudevents_headers(q))  # fmt: skip
    assert producer.flush(15) == 0
    ctx = world_emitter.workflow(new_wf(), agent_id="injected", principal="p")
    call = act(ctx, world, "crm.update", "after")
    assert world_emitter.flush(15) == 0
    operator.quarantine(fresh_kafka, None, reason="real", agent="injected")
    wait_until(lambda: subject(call) in undone(world), timeout=60, what="the real one acted on")
    assert rows(fresh_dsn, "SELECT count(*) FROM compensator_origins")[0][0] == 4
