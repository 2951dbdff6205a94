"""Idempotency keys, the count of calls, and failures on demand, against the real PostgreSQL:
threads and processes racing on one key, a caller killed mid-call, transient and permanent
faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from wakeline_world import (
    IdempotencyConflict,
    InvalidRequest,
    PermanentFailure,
    TransientFailure,
    World,
    fired,
)

pytestmark = pytest.mark.integration

#: every changing operation: its arguments, and a change of them (`{name}`: set up by `_prepare`)
CALLS = {
    "payments.charge": (
        {"customer": "cus_1", "amount_cents": 1299, "currency": "EUR"},
        {"amount_cents": 1300},
    ),
    "payments.refund": ({"charge_id": "{charge}"}, {"amount_cents": 5}),
    "crm.update": ({"record_id": "cus_1", "fields": {"tier": "gold"}}, {"fields": {"tier": "x"}}),
    "crm.restore": ({"record_id": "{record}", "version": 0}, {"version": 1}),
    "email.send": ({"to": "ada@example.com", "subject": "Hi", "body": "B"}, {"body": "C"}),
    "email.recall": ({"message_id": "{message}"}, {"message_id": "msg_other"}),
    "email.send_correction": ({"message_id": "{delivered}", "body": "Fix"}, {"body": "Fix!"}),
    "inventory.reserve": ({"sku": "sku-1", "quantity": 2}, {"quantity": 3}),
    "inventory.release": ({"reservation_id": "{reservation}"}, {"reservation_id": "rsv_x"}),
    "cloud.create_vm": ({"name": "b-1", "size": "small", "region": "eu"}, {"size": "large"}),
    "cloud.delete_vm": ({"vm_id": "{vm}"}, {"vm_id": "vm_other"}),
}


def _prepare(world: World) -> dict[str, str]:
    world.inventory.restock("sku-1", 100)
    delivered = world.email.send("bob@example.com", "Hi", "x", "setup-mail-2")["message_id"]
    world.email.deliver(delivered)
    return {
        "charge": world.payments.charge("cus_0", 100, "EUR", "setup-charge")["charge_id"],
        "record": world.crm.update("rec-0", {"a": 1}, "setup-crm")["record_id"],
        "message": world.email.send("ada@example.com", "Hi", "x", "setup-mail")["message_id"],
        "delivered": delivered,
        "reservation": world.inventory.reserve("sku-1", 1, "setup-rsv")["reservation_id"],
        "vm": world.cloud.create_vm("old", "small", "eu", "setup-vm")["vm_id"],
    }


@pytest.mark.parametrize("operation", sorted(CALLS))
def test_the_same_key_twice_is_one_effect_and_the_same_answer(world: World, operation):
    ids = _prepare(world)
    before = world.stats().get(operation, {}).get("performed", 0)
    args, change = CALLS[operation]
    args = {k: v.format(**ids) if isinstance(v, str) else v for k, v in args.items()}
    fn = world.tool(operation)
    first = fn(**args, idempotency_key="the-key")
    second = fn(**args, idempotency_key="the-key")
    assert second == first
    counts = world.stats()[operation]
    assert counts["performed"] == before + 1
    assert counts["deduplicated"] == 1
    with pytest.raises(IdempotencyConflict, match="other arguments"):
        fn(**{**args, **change}, idempotency_key="the-key")
    assert world.stats()[operation]["performed"] == before + 1


def test_a_key_belongs_to_one_operation(world: World):
    world.cloud.create_vm("a", "small", "eu", idempotency_key="k")
    with pytest.raises(IdempotencyConflict, match="already used for cloud.create_vm"):
        world.payments.charge("cus", 1, "EUR", idempotency_key="k")
    with pytest.raises(InvalidRequest, match="idempotency key"):
        world.payments.charge("cus", 1, "EUR", idempotency_key="")
    assert world.stats()["payments.charge"] == {
        "requested": 2,
        "performed": 0,
        "deduplicated": 0,
        "failed": 2,
        "unfinished": 0,
    }


def test_threads_racing_on_one_key_act_once(world: World):
    # the first caller holds the key for a while; the others must wait and get its answer
    world.inject("payments.charge", "delay", times=1, delay_s=0.5)
    answers: list[dict] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def call() -> None:
        start.wait()
        try:
            answers.append(world.payments.charge("cus_1", 700, "EUR", idempotency_key="race"))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(answers) == 8 and len({a["charge_id"] for a in answers}) == 1
    assert world.stats()["payments.charge"] == {
        "requested": 8,
        "performed": 1,
        "deduplicated": 7,
        "failed": 0,
        "unfinished": 0,
    }
    with psycopg.connect(world.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM world.charges").fetchone() == (1,)


_CALLER = """
import json, os, sys, time
from pathlib import Path
from wakeline_world import World
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.01)
answer = World(sys.argv[1]).payments.charge("cus_1", 700, "EUR", idempotency_key=sys.argv[3])
print(json.dumps(answer))
"""


def _caller(dsn: str, go: Path, key: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CALLER, dsn, str(go), key],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_racing_on_one_key_act_once(world: World, tmp_path: Path):
    world.inject("payments.charge", "delay", times=1, delay_s=0.5)
    go = tmp_path / "go"
    procs = [_caller(world.dsn, go, "proc-race") for _ in range(2)]
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    assert outs[0] == outs[1]
    counts = world.stats()["payments.charge"]
    assert (counts["performed"], counts["deduplicated"]) == (1, 1)


def test_a_caller_killed_mid_call_left_no_effect_and_the_retry_acts_once(
    world: World, tmp_path: Path
):
    fault = world.inject("payments.charge", "delay", times=1, delay_s=60)
    go = tmp_path / "go"
    go.touch()
    proc = _caller(world.dsn, go, "crash-key")
    deadline = time.monotonic() + 30
    while fired(world.dsn, fault) == 0:  # it holds the key now, inside its transaction
        assert time.monotonic() < deadline, "the caller never reached the operation"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert world.stats()["payments.charge"]["unfinished"] == 1

    answer = world.payments.charge("cus_1", 700, "EUR", idempotency_key="crash-key")
    assert world.payments.charge("cus_1", 700, "EUR", idempotency_key="crash-key") == answer
    assert world.stats()["payments.charge"] == {
        "requested": 3,
        "performed": 1,
        "deduplicated": 1,
        "failed": 0,
        "unfinished": 1,
    }


def test_transient_failures_n_times_then_success(world: World):
    charge_id = world.payments.charge("cus_1", 500, "EUR", "c")["charge_id"]
    fault = world.inject("payments.refund", "transient", times=2, match=charge_id)
    for _ in range(2):
        with pytest.raises(TransientFailure) as caught:
            world.payments.refund(charge_id, idempotency_key="undo-c")
        assert caught.value.retryable
    refund = world.payments.refund(charge_id, idempotency_key="undo-c")
    assert refund["amount_cents"] == 500
    assert fired(world.dsn, fault) == 2
    assert world.performed("payments.refund") == {charge_id: 1}
    counts = world.stats()["payments.refund"]
    assert (counts["requested"], counts["failed"], counts["performed"]) == (3, 2, 1)
    assert world.payments.get(charge_id)["refunded_cents"] == 500


def test_a_permanent_failure_for_one_record_leaves_the_others_alone(world: World):
    bad = world.payments.charge("cus_1", 500, "EUR", "c1")["charge_id"]
    good = world.payments.charge("cus_2", 300, "EUR", "c2")["charge_id"]
    world.inject("payments.refund", "permanent", match=bad, message="card network says no")
    for attempt in range(3):
        with pytest.raises(PermanentFailure, match="card network says no") as caught:
            world.payments.refund(bad, idempotency_key=f"undo-c1-{attempt}")
        assert not caught.value.retryable
    world.payments.refund(good, idempotency_key="undo-c2")
    assert world.performed("payments.refund") == {good: 1}
    assert world.payments.get(bad)["refunded_cents"] == 0
    failed = [c for c in world.calls("payments.refund") if c["outcome"] == "failed"]
    assert len(failed) == 3 and all("card network says no" in c["error"] for c in failed)

    world.clear_faults()
    world.payments.refund(bad, idempotency_key="undo-c1-after")
    assert world.performed("payments.refund") == {good: 1, bad: 1}


def test_a_fault_can_target_one_idempotency_key(world: World):
    world.inject("cloud.create_vm", "transient", times=None, match="cursed")
    with pytest.raises(TransientFailure):
        world.cloud.create_vm("a", "small", "eu", idempotency_key="cursed")
    world.cloud.create_vm("a", "small", "eu", idempotency_key="blessed")
    with pytest.raises(TransientFailure):
        world.cloud.create_vm("a", "small", "eu", idempotency_key="cursed")
    assert len(world.cloud.vms()) == 1
