"""A running `wakeline worker --metrics-port N` serves Prometheus metrics: the builder's
process on N, its audit child on N + 1, scraped over HTTP while events are ledgered."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from wakeline.infra.settings import KafkaSettings
from wakeline.testkit.harness import start_worker, stop_worker
from wakeline.testkit.samples import frames, traffic

pytestmark = pytest.mark.integration

EVENTS = 300


def two_free_ports() -> int:
    """A loopback port N with N + 1 free too (free when asked: the worker binds them)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no two adjacent free ports")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    """The samples served on `port`, or None while nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def wait_for(port: int, done, what: str, proc, timeout: float = 90):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the worker exited with {proc.returncode}"
        got = scrape(port)
        if got is not None and done(got):
            return got
        time.sleep(0.3)
    raise AssertionError(f"{what} not reached in {timeout}s; last scrape: {got}")


def of(samples: dict, name: str, **labels: str) -> list[float]:  # type: ignore[type-arg]
    want = set(labels.items())
    return [v for (n, ls), v in samples.items() if n == name and want <= set(ls)]


def test_a_running_worker_serves_its_metrics(
    fresh_kafka: KafkaSettings, fresh_dsn: str, tmp_path: Path
) -> None:
    port = two_free_ports()
    proc = start_worker(
        fresh_kafka, fresh_dsn,
        "--metrics-port", str(port), "--segment-max-leaves", "40",
        "--segment-max-age-ms", "100", "--checkpoint-interval-s", "1",
        log_path=str(tmp_path / "worker.log"),
        env={"WAKELINE_SIGNING_KEY": str(tmp_path / "ledger.key")},
    )  # fmt: skip
    try:
        producer = Producer(fresh_kafka.client_config(**{"enable.idempotence": True}))
        for event in traffic(EVENTS, workflows=20):
            key, value, headers = frames(event)
            producer.produce(fresh_kafka.topics.events, key=key, value=value, headers=headers)
        assert producer.flush(30) == 0

        def ledgered(s: dict) -> bool:  # type: ignore[type-arg]
            lag = of(s, "wakeline_runner_lag", runner="ledger-builder")
            return (
                of(s, "wakeline_events_ledgered_total") == [EVENTS]
                and len(lag) == fresh_kafka.partitions
                and sum(lag) == 0
                and bool(of(s, "wakeline_checkpoint_age_seconds"))
            )

        builder = wait_for(port, ledgered, f"{EVENTS} events ledgered", proc)
        assert of(builder, "wakeline_segments_stored_total")[0] >= fresh_kafka.partitions
        read = of(builder, "wakeline_runner_records_read_total", runner="ledger-builder")
        assert read[0] >= EVENTS
        assert of(builder, "wakeline_runner_restarts_total", runner="ledger-builder") == [0]
        assert of(builder, "wakeline_runner_stalled_partitions", runner="ledger-builder") == [0]
        assert 0 <= of(builder, "wakeline_checkpoint_age_seconds")[0] < 60
        assert not of(builder, "wakeline_audit_records_total")  # the child audits

        def audited(s: dict) -> bool:  # type: ignore[type-arg]
            lag = of(s, "wakeline_runner_lag", runner="audit-publisher")
            done = of(s, "wakeline_audit_records_total") == [EVENTS]
            return done and len(lag) == fresh_kafka.partitions and sum(lag) == 0

        child = wait_for(port + 1, audited, f"{EVENTS} events audited", proc)
        assert of(child, "wakeline_dlq_records_total") == [0]
        assert of(child, "wakeline_runner_lag", topic=fresh_kafka.topics.ledger)
        assert not of(child, "wakeline_events_ledgered_total")
    finally:
        rc = stop_worker(proc)
    assert rc == 0, (tmp_path / "worker.log").read_text()[-3000:]
    assert scrape(port) is None and scrape(port + 1) is None  # both endpoints are closed
