"""The worker's metrics without a broker: lag and stalls as the runner's consumer thread
computes them, the samples read from the runners and processors, the checkpoint clock, and
the settings and command line that turn metrics on."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from wakeline.cli.worker import _child_metrics, worker
from wakeline.errors import ConfigError
from wakeline.infra import metrics as m
from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.ledger.checkpoints import generate_signer, parse_body, split_note
from wakeline.ledger.hashing import BLAKE3
from wakeline.ledger.records import LedgerRecord
from wakeline.ledger.store_memory import MemoryLedgerStore
from wakeline.processors.app import CheckpointClock, create_worker
from wakeline.processors.auditor import AuditProcessor
from wakeline.processors.builder import LedgerBuilder
from wakeline.processors.checkpointing import sign_checkpoint
from wakeline.processors.settings import BuilderSettings
from wakeline.processors.stream import KafkaRunner, RunnerSettings

from ..infra.test_metrics import scraped

KAFKA = KafkaSettings(bootstrap="127.0.0.1:1", topics=Topics("u."), partitions=3)


class Offset:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class FakeConsumer:
    """position() and cached watermarks, per partition; None plays "no fetch response"."""

    def __init__(self, at: dict[int, tuple[int, int] | None]) -> None:
        self.at = at

    def position(self, tps):  # type: ignore[no-untyped-def]
        got = self.at[tps[0].partition]
        if got is None:
            raise RuntimeError("no position yet")
        return [Offset(got[0])]

    def get_watermark_offsets(self, tp, cached=False):  # type: ignore[no-untyped-def]
        got = self.at[tp.partition]
        assert got is not None and cached
        return (0, got[1])


class Idle:
    name = "idle"
    fatal = ()


def runner(at: dict[int, tuple[int, int] | None], stall_after_s: float = 60) -> KafkaRunner:
    r = KafkaRunner(
        Idle(),  # type: ignore[arg-type]
        "u.events",
        KAFKA.client_config,
        RunnerSettings(group_id="g", stall_after_s=stall_after_s),
    )
    r.consumer = FakeConsumer(at)
    r._assigned.update(at)
    return r


def by_key(samples: list[m.Sample]) -> dict[tuple[str, tuple[str, ...]], float]:
    return {(s.spec.name, s.labels): s.value for s in samples}


def test_lag_per_partition_is_computed_on_the_stall_check():
    r = runner({0: (10, 15), 1: (5, 5), 2: None})
    r.records_in, r.restarts = 30, 2
    r._check_stalls()
    assert r.lag == {0: 5, 1: 0}  # partition 2: nothing known yet, so no value at all
    got = by_key(r.samples())
    assert got[("wakeline_runner_lag", ("idle", "u.events", "0"))] == 5
    assert got[("wakeline_runner_lag", ("idle", "u.events", "1"))] == 0
    assert ("wakeline_runner_lag", ("idle", "u.events", "2")) not in got
    assert got[("wakeline_runner_records_read", ("idle",))] == 30
    assert got[("wakeline_runner_restarts", ("idle",))] == 2
    assert got[("wakeline_runner_stalled_partitions", ("idle",))] == 0


def test_a_stalled_partition_is_a_gauge_until_it_is_revoked():
    r = runner({0: (10, 15), 1: (5, 5)}, stall_after_s=60)
    r._progress_at[0] = time.monotonic() - 100  # records waiting, no progress for 100 s
    r._check_stalls()
    got = by_key(r.samples())
    assert got[("wakeline_runner_stalled_partitions", ("idle",))] == 1
    assert got[("wakeline_runner_stalled_seconds", ("idle", "0"))] >= 100
    r._assigned.discard(0)
    r._stall_checked_at = 0.0
    r._check_stalls()
    got = by_key(r.samples())
    assert got[("wakeline_runner_stalled_partitions", ("idle",))] == 0
    assert r.lag == {1: 0}
    assert not any(name == "wakeline_runner_stalled_seconds" for name, _ in got)


def test_the_worker_exports_what_its_runners_and_processors_count():
    store = MemoryLedgerStore()
    w = create_worker(KAFKA, BuilderSettings(metrics_port=9), "", lambda: store, None)
    assert isinstance(w.metrics, m.PrometheusMetrics) and w.metrics_address == ("127.0.0.1", 9)
    assert w.builder is not None
    w.builder.ledger.records_stored, w.builder.ledger.segments_stored = 1200, 3
    audit = next(r.processor for r in w.runners if isinstance(r.processor, AuditProcessor))
    audit.auditor.records_audited, audit.auditor.records_dead_lettered = 1199, 1
    got = scraped(w.metrics.render().decode())
    assert got[("wakeline_events_ledgered_total", ())] == 1200
    assert got[("wakeline_segments_stored_total", ())] == 3
    assert got[("wakeline_audit_records_total", ())] == 1199
    assert got[("wakeline_dlq_records_total", ())] == 1
    for runner_name in ("ledger-builder", "audit-publisher"):
        key = ("wakeline_runner_records_read_total", (("runner", runner_name),))
        assert got[key] == 0
    assert ("wakeline_checkpoint_age_seconds", ()) not in got  # nothing signed yet


def test_metrics_are_off_by_default():
    w = create_worker(KAFKA, BuilderSettings(), "", MemoryLedgerStore, None)
    assert w.metrics is m.NO_METRICS and w.metrics_address is None


def test_the_checkpoint_clock_reads_the_store_at_most_every_few_seconds():
    store = MemoryLedgerStore()
    store.close = lambda: None  # type: ignore[method-assign]
    opened = []

    def factory() -> MemoryLedgerStore:
        opened.append(1)
        return store

    clock = CheckpointClock(factory, every_s=3600)
    assert clock() is None and len(opened) == 1  # nothing signed yet
    b = LedgerBuilder(store, BLAKE3, max_leaves=10, max_age_s=1)
    b.assign([0])
    b.add([LedgerRecord(0, 0, 0, b"k", b"v")])
    b.seal([0])
    note = sign_checkpoint(store, generate_signer("k"), now_ms=1_700_000_000_000)
    assert note is not None
    assert clock() is None and len(opened) == 1  # cached
    clock.every_s = 0
    assert clock() == parse_body(split_note(note)[0]).time_ms / 1000 == 1_700_000_000
    assert len(opened) == 2


def test_the_checkpoint_clock_survives_a_store_that_is_away(caplog):
    def away() -> MemoryLedgerStore:
        raise ConnectionError("no database")

    assert CheckpointClock(away)() is None
    assert "no database" in caplog.text


def test_metrics_settings_from_env_and_validation():
    s = BuilderSettings.from_env(
        {"WAKELINE_METRICS_PORT": "9400", "WAKELINE_METRICS_HOST": "0.0.0.0"}
    )
    assert (s.metrics_port, s.metrics_host) == (9400, "0.0.0.0")
    assert BuilderSettings.from_env({}).metrics_port == 0
    with pytest.raises(ConfigError, match="WAKELINE_METRICS_PORT"):
        BuilderSettings.from_env({"WAKELINE_METRICS_PORT": "70000"})
    with pytest.raises(ConfigError, match="metrics_host"):
        BuilderSettings(metrics_port=1, metrics_host="")


def test_the_audit_child_always_gets_its_own_port(monkeypatch):
    monkeypatch.delenv("WAKELINE_METRICS_PORT", raising=False)
    assert _child_metrics(None) == ["--metrics-port", "0"]
    assert _child_metrics(9400) == ["--metrics-port", "9401"]
    assert _child_metrics(0) == ["--metrics-port", "0"]
    monkeypatch.setenv("WAKELINE_METRICS_PORT", "9500")  # the child inherits it: overridden
    assert _child_metrics(None) == ["--metrics-port", "9501"]
    with pytest.raises(ConfigError, match="65535"):
        _child_metrics(65535)


def test_the_worker_help_names_the_options():
    out = CliRunner().invoke(worker, ["--help"]).output
    assert "--metrics-port" in out and "--metrics-host" in out and "audit child" in out


def test_a_caught_up_partition_is_never_stalled_however_long_it_is_idle():
    """Nothing read and unfinished, nothing unread: idle, not stalled (the pending-commit
    map is emptied on every commit, so it cannot say what was finished)."""
    r = runner({0: (5, 5)}, stall_after_s=60)
    r._progress_at[0] = time.monotonic() - 3600
    r._check_stalls()
    assert r.stalled == {}
    # read but not finished by the sink since: that is waiting, and stalls in time
    r._done[0] = 3
    r._progress_at[0] = time.monotonic() - 3600
    r._stall_checked_at = 0.0
    r._check_stalls()
    assert list(r.stalled) == [0]
