"""Crash and restart: the ledger survives kill -9 of the worker, and restarts of the broker
and the database, while events stream in. Afterwards it holds every record of the topic
exactly once, in order, and a replay of the topic (`ledger-verify --from-kafka`) agrees
with the stored roots. Broker and database restarts hit the shared local stack and always
bring it back, in `finally`.
"""

from __future__ import annotations

import logging
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from wakeline.devstack import stack
from wakeline.infra.kafka_source import verify_from_kafka
from wakeline.infra.settings import DatabaseSettings, KafkaSettings, StackSettings
from wakeline.ledger.checkpoints import generate_signer
from wakeline.ledger.segments import SegmentHeader
from wakeline.processors.audit import decode_audit
from wakeline.processors.checkpointing import sign_checkpoint
from wakeline.processors.runner import postgres_store_factory
from wakeline.testkit.harness import (
    check_against_topic,
    ledger_size,
    read_topic,
    start_worker,
    stop_worker,
    wait_for_ledger,
)
from wakeline.testkit.samples import frames, traffic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

log = logging.getLogger(__name__)

# no detectors: the sample traffic, made fast, is a loop by their rules, and their alerts
# would be records of the events topic this test counts exactly
# the ledger builder and the audit publisher only: the detectors and the approval queue
# would share the audit child's core with the publisher this test waits for
WORKER_ARGS = ("--segment-max-leaves", "400", "--segment-max-age-ms", "100",
               "--checkpoint-interval-s", "0", "--no-detectors", "--no-approvals")  # fmt: skip


class Stream:
    """Produces `count` events at about `rate`/s on a thread, surviving broker outages. With
    `hold_at`, it stops after that many until `release()`."""

    def __init__(
        self, kafka: KafkaSettings, count: int, rate: float, hold_at: int | None = None
    ) -> None:
        self.kafka, self.count, self.rate, self.hold_at = kafka, count, rate, hold_at
        self.sent = 0
        self.error: BaseException | None = None
        self._released = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Stream:
        self._thread.start()
        return self

    def release(self) -> None:
        self._released.set()

    def _run(self) -> None:
        try:
            p = Producer(self.kafka.client_config(**{"enable.idempotence": True, "acks": "all",
                                                    "message.timeout.ms": 300_000}))  # fmt: skip
            t0, base = time.monotonic(), 0
            for event in traffic(self.count, workflows=50):
                if self.sent == self.hold_at:
                    assert self._released.wait(300), "stream never released"
                    t0, base = time.monotonic(), self.sent
                key, value, headers = frames(event)
                p.produce(self.kafka.topics.events, key=key, value=value, headers=headers)
                self.sent += 1
                p.poll(0)
                ahead = (self.sent - base) / self.rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
            if p.flush(300) != 0:
                raise AssertionError("producer could not deliver every event")
        except BaseException as e:
            self.error = e

    def join(self, timeout: float = 300) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "producer did not finish"
        if self.error is not None:
            raise self.error


def assert_sound(kafka: KafkaSettings, dsn: str, count: int) -> None:
    """Exactly once, in order, replayed roots, Kafka headers, Kafka verification, audit."""
    store = postgres_store_factory(dsn)()
    try:
        assert check_against_topic(kafka, store) == count

        headers: dict[tuple[int, int], bytes] = {}
        for m in read_topic(kafka, kafka.topics.ledger):
            h = SegmentHeader.from_bytes(m.value())
            seen = headers.setdefault((h.partition, h.segment_number), m.value())
            assert seen == m.value(), f"two different headers for {h.partition}/{h.segment_number}"
        stored = {
            (p, h.segment_number): h.to_bytes()
            for p in store.partitions()
            for h in store.headers(p)
        }
        assert headers == stored

        signer = generate_signer("crash-test")
        sign_checkpoint(store, signer)
        report = verify_from_kafka(kafka, trusted_keys=[signer.verifier.vkey()], dsn=dsn,
                                   decode=False)  # fmt: skip
        assert report.ok, report.findings[:3]

        audited: dict[tuple[int, int], bytes] = {}
        for m in read_topic(kafka, kafka.topics.audit):
            rec = decode_audit(m.value())
            audited[(rec["partition"], rec["leaf_index"])] = rec["leaf_hash"]
        want = {(e.partition, e.leaf_index): e.leaf_hash
                for p in store.partitions() for e in store.entries(p)}  # fmt: skip
        assert audited == want
    finally:
        store.close()


STOP_DEADLINE_S = 10


def stop_promptly(proc: subprocess.Popen, log_path: Path) -> None:
    """SIGTERM must stop the worker cleanly within STOP_DEADLINE_S, whatever the broker did
    before (a bound on shutdown, not a performance figure: stopping takes about 1 s)."""
    t0 = time.monotonic()
    rc = stop_worker(proc, timeout=STOP_DEADLINE_S)
    took = time.monotonic() - t0
    log.warning("worker stopped rc=%s in %.1fs", rc, took)
    assert rc == 0, f"rc={rc} after {took:.1f}s: " + log_path.read_text()[-3000:]


def finish(kafka: KafkaSettings, dsn: str, stream: Stream, log_path: Path) -> None:
    """Let the stream end, run one clean worker to the end of the topic, stop it."""
    stream.join()
    proc = start_worker(kafka, dsn, *WORKER_ARGS, log_path=str(log_path))
    store = postgres_store_factory(dsn)()
    try:
        wait_for_ledger(store, stream.count, timeout=120)
        deadline = time.monotonic() + 120  # audit records follow the headers
        while len(read_topic(kafka, kafka.topics.audit, idle=1)) < stream.count:
            assert time.monotonic() < deadline, "audit records missing"
    finally:
        store.close()
        stop_promptly(proc, log_path)


def test_kill_9_at_random_points_while_events_stream(fresh_kafka, fresh_dsn, tmp_path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    log.warning("crash test seed=%d", seed)
    kafka, log_path = fresh_kafka, tmp_path / "worker.log"
    stream = Stream(kafka, count=24_000, rate=1_500).start()
    kills = 0
    while stream.sent < stream.count and kills < 6:
        proc = start_worker(kafka, fresh_dsn, *WORKER_ARGS, log_path=str(log_path))
        time.sleep(rng.uniform(1.0, 5.0))  # boot, mid-batch, mid-transaction, mid-publish
        proc.kill()
        proc.wait()
        kills += 1
    assert kills >= 3, f"only {kills} kills before the stream ended (seed {seed})"
    finish(kafka, fresh_dsn, stream, log_path)
    assert_sound(kafka, fresh_dsn, stream.count)


def _local(local_stack: StackSettings, what: str) -> None:
    external = (KafkaSettings.from_env().external if what == "kafka"
                else DatabaseSettings.from_env().external)  # fmt: skip
    if external:
        pytest.skip(f"{what} is external; this test restarts the local one")


def wait_until_live(kafka: KafkaSettings, dsn: str, proc: subprocess.Popen, log_path: Path) -> None:
    """Until the worker ledgers (builder) and audits (the audit child): a restart must hit a
    running worker, not one still booting on a loaded machine (startup is not under test)."""
    store = postgres_store_factory(dsn)()
    try:
        deadline = time.monotonic() + 120
        while ledger_size(store) == 0 or not read_topic(kafka, kafka.topics.audit, idle=0.5):
            assert proc.poll() is None, "worker exited: " + log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "worker not live after 120 s"
            time.sleep(0.2)
    finally:
        store.close()


def _restart_mid_stream(kafka, dsn, tmp_path, kill, start, *, worker_survives: bool) -> None:
    """Stream events through a worker, kill one service for 3 s mid-stream, start it again;
    the ledger must end up holding every record, soundly. The stream holds after a few events
    until the worker ledgers and audits them, so the restart hits a running worker mid-stream
    however long the worker takes to boot."""
    log_path = tmp_path / "worker.log"
    stream = Stream(kafka, count=12_000, rate=1_500, hold_at=300).start()
    proc = start_worker(kafka, dsn, *WORKER_ARGS, log_path=str(log_path))
    try:
        wait_until_live(kafka, dsn, proc, log_path)
        stream.release()
        time.sleep(2)
        try:
            kill()
            time.sleep(3)
        finally:
            start()
        stream.join()
        store = postgres_store_factory(dsn)()
        try:
            wait_for_ledger(store, stream.count, timeout=180)
        finally:
            store.close()
        if worker_survives:
            assert proc.poll() is None, "the worker must ride out a database restart"
    finally:
        stop_promptly(proc, log_path)
    finish(kafka, dsn, stream, log_path)
    assert_sound(kafka, dsn, stream.count)


def test_broker_restart_mid_stream(fresh_kafka, fresh_dsn, local_stack, tmp_path) -> None:
    _local(local_stack, "kafka")
    _restart_mid_stream(
        fresh_kafka, fresh_dsn, tmp_path,
        lambda: stack.kill_kafka(local_stack), lambda: stack.start_kafka(local_stack),
        worker_survives=False,
    )  # fmt: skip


def test_database_restart_mid_stream(fresh_kafka, fresh_dsn, local_stack, tmp_path) -> None:
    _local(local_stack, "postgres")
    _restart_mid_stream(
        fresh_kafka, fresh_dsn, tmp_path,
        lambda: stack.kill_postgres(local_stack), lambda: stack.start_postgres(local_stack),
        worker_survives=True,
    )  # fmt: skip
