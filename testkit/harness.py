"""Running `wakeline worker` as a child process and reading back what it did: for the crash
tests, the benchmark, and anyone checking a builder against its topic.

The child gets the topic prefix, partition count and database through the environment,
exactly as an operator would run it, and its options on the command line.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from wakeline.infra import db
from wakeline.infra.settings import DatabaseSettings, KafkaSettings
from wakeline.ledger.merkle import MerkleTree, root_of
from wakeline.ledger.records import LedgerRecord, leaf_bytes, record_of_message
from wakeline.ledger.segments import GENESIS
from wakeline.ledger.store import LedgerStore

_WORKER = "import sys\nfrom wakeline.cli.worker import worker\nworker(sys.argv[1:])\n"
_COMPENSATOR = (
    "import sys\nfrom wakeline.cli.compensator import compensator\ncompensator(sys.argv[1:])\n"
)


def worker_env(kafka: KafkaSettings, dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAKELINE_")}
    keep = ("WAKELINE_HOME", "WAKELINE_KAFKA_PORT", "WAKELINE_SIGNING_KEY", "WAKELINE_KAFKA_CONFIG")
    env.update({k: os.environ[k] for k in keep if k in os.environ})
    env.update(
        {
            "WAKELINE_BOOTSTRAP": kafka.bootstrap,
            "WAKELINE_TOPIC_PREFIX": kafka.topics.prefix,
            "WAKELINE_PARTITIONS": str(kafka.partitions),
            "WAKELINE_DSN": dsn,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def start_worker(
    kafka: KafkaSettings,
    dsn: str,
    *args: str,
    log_path: str | None = None,
    nice: int = 0,
    env: dict[str, str] | None = None,
    program: str = _WORKER,
) -> subprocess.Popen:
    """Start `wakeline worker <args>`; its output goes to `log_path` (or is discarded).
    `nice` lowers its CPU priority (e.g. an audit publisher that may lag the builder);
    `env` adds variables (e.g. `WAKELINE_MAX_RECORD_BYTES`) to the worker's environment.

    The worker runs without its detectors unless `args` has `--detectors`: the tests of the
    ledger and the audit topic count the records they produced, and the sample traffic
    (testkit.samples) repeats charges fast enough to trip the loop rules, whose alerts would
    be records of their own; the detectors have tests of their own."""
    if program == _WORKER:
        args = ("--no-detectors", *args)  # a later --detectors wins
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            [sys.executable, "-c", program, *args],
            env={**worker_env(kafka, dsn), **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )  # fmt: skip
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]


def wait_until(
    check: Callable[[], Any], timeout: float = 30, what: str = "condition", every: float = 0.05
) -> Any:
    """Call `check` until it returns something true, and return that; TimeoutError naming
    `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def start_compensator(
    kafka: KafkaSettings,
    dsn: str,
    *args: str,
    log_path: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start `wakeline compensator <args>` (e.g. `--handlers wakeline_world.undo`) like
    `start_worker` starts a worker; stop it with `stop_worker`."""
    return start_worker(kafka, dsn, *args, log_path=log_path, env=env, program=_COMPENSATOR)


def stop_worker(proc: subprocess.Popen, timeout: float = 30) -> int:
    """SIGTERM, then SIGKILL if it does not exit in `timeout`; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def create_database(prefix: str = "wl_bench", base: str | None = None) -> str:
    """A new, migrated database next to the configured one (or on the server of `base`, a
    DSN whose database it connects to for CREATE DATABASE); its DSN. psycopg.Error (e.g.
    InsufficientPrivilege) if the server refuses."""
    import psycopg
    from psycopg import conninfo

    base = base or DatabaseSettings.from_env().dsn
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = conninfo.make_conninfo(base, dbname=name)
    db.migrate(dsn)
    return dsn


def drop_database(dsn: str, base: str | None = None, *, check: bool = False) -> None:
    """Drop a database `create_database` made (connections to it are ended), connecting to
    `base` (default: the configured database) to do it. Errors are ignored unless `check`."""
    import psycopg
    from psycopg import conninfo

    name = conninfo.conninfo_to_dict(dsn)["dbname"]
    with (
        contextlib.suppress(*(() if check else (psycopg.Error,))),
        psycopg.connect(base or DatabaseSettings.from_env().dsn, autocommit=True) as conn,
    ):
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- reading back what the builder did --------------------------------------------------


def read_topic(kafka: KafkaSettings, topic: str, idle: float = 2.0) -> list[Any]:
    """Every record of `topic`, read until nothing arrives for `idle` seconds, and at least
    one second before the first record: a new consumer's first records take ~0.3-0.6 s to
    arrive on an idle machine (more on a busy one), so a short `idle` alone ends a read of a
    topic that has records with nothing."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer(
        kafka.client_config(
            **{"group.id": f"wakeline-read-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
        )
    )
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        out: list[Any] = []
        last = time.monotonic() + max(0.0, 1.0 - idle)  # the first wait: at least 1 s
        while time.monotonic() - last < idle:
            for m in c.consume(1000, 0.3):
                if m.error() is None:
                    out.append(m)
                    last = time.monotonic()
        return out
    finally:
        c.close()


def ledger_size(store: LedgerStore) -> int:
    """Leaves in persisted segments, over every partition."""
    total = 0
    for p in store.partitions():
        last = store.last_segment(p)
        total += last[0].tree_size if last else 0
    return total


def wait_for_ledger(store: LedgerStore, total: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    size = ledger_size(store)
    while size < total:
        if time.monotonic() > deadline:
            raise TimeoutError(f"ledger holds {size} leaves after {timeout}s, want {total}")
        time.sleep(0.2)
        size = ledger_size(store)


def check_against_topic(kafka: KafkaSettings, store: LedgerStore) -> int:
    """Replay the events topic and hold the store to it: every record ledgered exactly once,
    in offset order, byte for byte; every chain link; the roots recomputed from the replay.
    Returns the number of records; raises AssertionError naming the first difference."""
    suite = None
    msgs = read_topic(kafka, kafka.topics.events)
    by_part: dict[int, list[LedgerRecord]] = {}
    for m in sorted(msgs, key=lambda m: (m.partition(), m.offset())):
        by_part.setdefault(m.partition(), []).append(record_of_message(m))
    for p, recs in by_part.items():
        entries = list(store.entries(p))
        offsets = [e.offset for e in entries]
        assert offsets == [r.offset for r in recs], f"partition {p}: ledgered offsets differ"
        leaves = [leaf_bytes(r) for r in recs]
        for e, leaf in zip(entries, leaves, strict=True):
            assert e.leaf == leaf, f"partition {p} offset {e.offset}: leaf differs"
        last = store.last_segment(p)
        assert last is not None
        suite = last[0].suite
        assert last[0].tree_size == len(leaves)
        hashes = [suite.leaf_hash(x) for x in leaves]
        prev, tree = GENESIS, MerkleTree(suite)
        for h in store.headers(p):
            where = f"partition {p} segment {h.segment_number}"
            assert h.prev_hash == prev, f"{where}: broken link"
            assert h.first_leaf_index == tree.size, f"{where}: starts at the wrong leaf"
            tree.extend(hashes[tree.size : tree.size + h.leaf_count])
            assert h.tree_root == tree.root(), f"{where}: root differs from the replay"
            prev = h.hash()
        assert tree.root() == root_of(suite, hashes)
    return len(msgs)
