"""The compensator killed and moved around mid-plan, against the real broker and database:
every compensating effect in the example world happens exactly once however often the
process dies, and no action ever runs in two processes at once.

`CRASH_KILLS` (default 20; `make soak` runs 100) bounds the kills, `CRASH_SEED` repeats a
run (the seed is logged). Kills land at seeded random moments: while the process boots,
joins the group or claims its partitions, and, mostly, mid-plan: mid-handler (the world's
transaction rolls back with the dead connection), between the world's commit and the
CompensationResult, between the result and the end of the attempt in PostgreSQL.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import signal
import subprocess
import zlib
from pathlib import Path

import pytest

from wakeline.compensator.registry import idempotency_key
from wakeline.infra.settings import KafkaSettings
from wakeline.producers import Emitter
from wakeline.testkit.harness import stop_worker
from wakeline_world import World

from . import probe_undo
from .conftest import (
    act_on_world,
    assert_undone_once,
    new_wf,
    ok_results,
    plan_state,
    quarantine,
    rows,
    spawn_compensator,
    topic_events,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

log = logging.getLogger(__name__)

CRASH_KILLS = int(os.environ.get("CRASH_KILLS", "20"))
UNDO_OPS = ("payments.refund", "crm.restore", "inventory.release", "cloud.delete_vm")
#: each compensating action holds its idempotency key this long in the world (a slow
#: service), so a kill that follows the first request of a life lands mid-plan
HANDLER_DELAY_S = 0.1
#: the backoff of a retry is not under test here
FAST_RETRY = {"WAKELINE_COMPENSATOR_BACKOFF_INITIAL_S": "0.05",
              "WAKELINE_COMPENSATOR_BACKOFF_MAX_S": "0.2"}  # fmt: skip


def _seed() -> tuple[int, random.Random]:
    seed = int(os.environ.get("CRASH_SEED") or random.randrange(1 << 30))
    log.warning("compensator crash test seed=%d (CRASH_SEED=%d repeats it)", seed, seed)
    return seed, random.Random(seed)


def _undo_requests(dsn: str) -> int:
    """Requests of the compensating operations the world received (finished or not)."""
    return rows(dsn, "SELECT count(*) FROM world.calls WHERE operation = ANY(%s)",
                list(UNDO_OPS))[0][0]  # fmt: skip


def _slow_world(world: World) -> None:
    for op in UNDO_OPS:
        world.inject(op, "delay", times=None, delay_s=HANDLER_DELAY_S)


def _alive(proc: subprocess.Popen, log_path: Path) -> bool:
    assert proc.poll() is None, (
        f"compensator exited rc={proc.returncode}: " + (log_path.read_text()[-3000:])
    )
    return True


def _stop(proc: subprocess.Popen, log_path: Path) -> None:
    rc = stop_worker(proc, timeout=30)
    assert rc == 0, f"rc={rc}: " + log_path.read_text()[-3000:]


def test_sigkill_at_random_points_of_a_100_action_plan(
    world: World,
    world_emitter: Emitter,
    fresh_kafka: KafkaSettings,
    fresh_dsn: str,
    tmp_path: Path,
) -> None:
    """100 compensable calls with real effects, a quarantine, then `wakeline compensator`
    (static membership `crash-1`, 2 s lease) SIGKILLed CRASH_KILLS times at random moments
    and restarted each time; a last life finishes the plan. Afterwards each compensating
    effect happened exactly once in the world, the plan and its 100 actions are done, and
    the events topic holds a CompensationResult ok for every call, repeated (a life that
    died after recording it) only with the same idempotency key."""
    seed, rng = _seed()
    wf = new_wf()
    ctx = world_emitter.workflow(wf, agent_id="bot", principal="alice@example.com")
    calls = act_on_world(ctx, world, 100)
    _slow_world(world)
    log_path = tmp_path / "compensator.log"
    args = ("--handlers", "wakeline_world.undo", "--instance-id", "crash-1", "--lease-s", "2")

    def spawn() -> subprocess.Popen:
        return spawn_compensator(fresh_kafka, fresh_dsn, *args, log_path=log_path,
                                 env=FAST_RETRY)  # fmt: skip

    qid = quarantine(ctx, reason="crash test")
    kills = mid_plan = 0
    while kills < CRASH_KILLS and plan_state(fresh_dsn, qid) != "done":
        mid_plan += _one_life(spawn(), boot=kills % 4 == 3, rng=rng, dsn=fresh_dsn, qid=qid,
                              log_path=log_path)  # fmt: skip
        kills += 1
    states = [r[0] for r in rows(fresh_dsn, ACTION_STATES, qid)]
    log.warning("seed=%d: %d kills, %d mid-plan, %d of 100 actions done by then",
                seed, kills, mid_plan, states.count("done"))  # fmt: skip
    # every life not killed while booting was killed mid-plan (but the one that finished it)
    assert kills == CRASH_KILLS or CRASH_KILLS > 20, f"the plan outlived {kills} kills only"
    assert mid_plan >= kills - kills // 4 - 1, f"{mid_plan} kills mid-plan (seed {seed})"

    proc = spawn()
    try:
        wait_until(lambda: _alive(proc, log_path) and plan_state(fresh_dsn, qid) == "done",
                   timeout=180, what="the plan to finish after the last restart")  # fmt: skip
    finally:
        _stop(proc, log_path)

    actions = rows(fresh_dsn, "SELECT intent_id, compensation, idempotency_key, state, attempts "
                   "FROM compensator_actions WHERE quarantine_id = %s", qid)  # fmt: skip
    assert len(actions) == 100
    assert {a[3] for a in actions} == {"done"}, sorted({(a[3], a[0]) for a in actions})[:5]
    assert_undone_once(world, calls)
    stats = world.stats()
    log.warning("seed=%d: attempts %d (max %d per action); world: %s", seed,
                sum(a[4] for a in actions), max(a[4] for a in actions),
                {op: stats.get(op) for op in UNDO_OPS})  # fmt: skip

    events = topic_events(fresh_kafka, wf)
    by_intent = ok_results(events)
    want = {a[0]: {idempotency_key(a[0], a[1])} for a in actions}
    assert {a[0]: a[2] for a in actions} == {i: k for i, (k,) in want.items()}
    assert by_intent == want, "a call without its CompensationResult ok, or one with another key"


ACTION_STATES = "SELECT state FROM compensator_actions WHERE quarantine_id = %s"


def _one_life(
    proc: subprocess.Popen, *, boot: bool, rng: random.Random, dsn: str, qid: str, log_path: Path
) -> bool:
    """SIGKILL `proc` at a random moment: while it boots (`boot`), else after its first
    request to the world. Whether the kill landed mid-plan."""
    before = _undo_requests(dsn)
    mid = False
    if boot:  # booting, joining, claiming, restoring its state
        _sleep_alive(proc, log_path, rng.uniform(0.1, 2.0))
    else:
        wait_until(
            lambda: (
                _alive(proc, log_path)
                and (_undo_requests(dsn) > before or plan_state(dsn, qid) == "done")
            ),
            timeout=90,
            what="the restarted compensator to act",
        )
        _sleep_alive(proc, log_path, rng.uniform(0.0, 3 * HANDLER_DELAY_S))
        mid = plan_state(dsn, qid) == "running"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return mid


def _sleep_alive(proc: subprocess.Popen, log_path: Path, seconds: float) -> None:
    """Wait `seconds` (the moment of a kill), failing at once if the process died."""
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        return
    _alive(proc, log_path)


# -- two compensators, a third joins, one leaves -----------------------------------------------

PROBE = Path(__file__).parent  # probe_undo.py: the world's handlers, each attempt recorded
ATTEMPTS = "SELECT pid, idempotency_key, started, ended FROM probe.attempts ORDER BY started"


def _on_partitions(count: int, partitions: int) -> list[str]:
    """`count` workflow ids, one per partition (librdkafka's default partitioner puts a key
    on CRC-32(key) mod partitions; the test checks where the plans ran)."""
    found: dict[int, str] = {}
    while len(found) < count:
        wf = new_wf()
        found.setdefault(zlib.crc32(wf.encode()) % partitions, wf)
    return list(found.values())


def _owners(dsn: str) -> dict[int, int]:
    """partition -> pid of the compensator process holding its fencing epoch."""
    got = rows(dsn, "SELECT partition, owner FROM compensator_partitions")
    return {p: int(owner.split(":")[1]) for p, owner in got}


def test_two_compensators_and_rebalances_in_the_middle_of_plans(
    world: World,
    world_emitter: Emitter,
    fresh_kafka: KafkaSettings,
    fresh_dsn: str,
    tmp_path: Path,
) -> None:
    """Three workflows of 30 calls, one per partition, quarantined while compensators A and
    B share the partitions; mid-plan C joins (partitions move to it), later B leaves
    (SIGTERM: its partitions move to A and C). Afterwards each compensating effect
    happened exactly once and every action is done, as in the kill test.

    No action ever ran in two processes at once: the handlers (probe_undo.py) record each
    attempt's process, idempotency key, start and end with the database's clock; for one key,
    no two attempts of different processes overlap. That is the property itself (two
    handlers acting at once), measured where it matters, so it does not rely on what the
    daemon says about itself: the lease and the fencing epoch are what is under test. The
    partitions really moved mid-plan: some workflow's actions ran in two processes."""
    probe_undo.install(fresh_dsn)
    _slow_world(world)
    workflows = _on_partitions(3, fresh_kafka.partitions)
    contexts = [world_emitter.workflow(wf, agent_id="bot", principal="bob") for wf in workflows]
    calls = [c for ctx in contexts for c in act_on_world(ctx, world, 30)]
    log_path = tmp_path / "compensators.log"
    env = {**FAST_RETRY, "PYTHONPATH": str(PROBE)}
    args = ("--handlers", "probe_undo", "--lease-s", "2")

    def spawn() -> subprocess.Popen:
        return spawn_compensator(fresh_kafka, fresh_dsn, *args, log_path=log_path, env=env)

    def attempts() -> list[tuple]:
        return rows(fresh_dsn, ATTEMPTS)

    procs = {name: spawn() for name in ("A", "B")}
    try:
        pids = {p.pid for p in procs.values()}
        wait_until(lambda: set(_owners(fresh_dsn).values()) == pids, timeout=60,
                   what="A and B to share the partitions")  # fmt: skip
        qids = [quarantine(ctx, reason="rebalance test") for ctx in contexts]
        wait_until(lambda: len(attempts()) >= 15, timeout=60, what="the plans to start")
        procs["C"] = spawn()
        wait_until(lambda: procs["C"].pid in _owners(fresh_dsn).values(), timeout=60,
                   what="C to take a partition")  # fmt: skip
        wait_until(lambda: len(attempts()) >= 50, timeout=60, what="more progress")
        assert any(plan_state(fresh_dsn, q) == "running" for q in qids), "B leaves mid-plan"
        _stop(procs.pop("B"), log_path)
        wait_until(
            lambda: all(plan_state(fresh_dsn, q) == "done" for q in qids),
            timeout=120,
            what="every plan to finish",
        )
    finally:
        for proc in procs.values():
            _stop(proc, log_path)

    actions = rows(fresh_dsn, "SELECT idempotency_key, quarantine_id, state, intent_id, "
                   "compensation FROM compensator_actions")  # fmt: skip
    assert len(actions) == 90 and {a[2] for a in actions} == {"done"}
    plans = rows(fresh_dsn, "SELECT partition FROM compensator_plans")
    assert sorted(p for (p,) in plans) == list(range(fresh_kafka.partitions))
    assert_undone_once(world, calls)

    runs = attempts()
    assert all(r[3] is not None for r in runs), "an attempt never ended"
    by_key: dict[str, list[tuple]] = {}
    for r in runs:
        by_key.setdefault(r[1], []).append(r)
    for key, tries in by_key.items():
        for a, b in itertools.combinations(tries, 2):
            overlap = a[2] < b[3] and b[2] < a[3]
            assert a[0] == b[0] or not overlap, f"{key} ran in {a[0]} and {b[0]} at once"
    plan_of = {a[0]: a[1] for a in actions}
    pids_per_plan: dict[str, set[int]] = {}
    for r in runs:
        pids_per_plan.setdefault(plan_of[r[1]], set()).add(r[0])
    log.warning("processes per plan: %s; attempts %d for 90 actions",
                sorted(len(p) for p in pids_per_plan.values()), len(runs))  # fmt: skip
    assert max(len(p) for p in pids_per_plan.values()) >= 2, "no plan moved between processes"

    events = topic_events(fresh_kafka)
    assert ok_results(events) == {a[3]: {idempotency_key(a[3], a[4])} for a in actions}
