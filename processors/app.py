"""The faust-streaming app behind `wakeline worker`: the host of the stream processors.

The ledger builder, the audit publisher with the approval queue (processors/approvals.py)
and (beside them, unless `--no-detectors`) the loop and race detectors (processors/loops.py,
processors/races.py) run on the Kafka runner (processors/stream.py), each on threads of its
own inside the worker, hosted as a mode Service: batch consumption with confluent-kafka is ~20x
faster than faust's per-event machinery (docs/decisions.md has the figures), and the runner
gives both one way to restore, retry, commit after the sink and stop. faust stays the host: the
worker's lifecycle and signals, checkpoint signing on a timer, and agents where volume is low
and per-event logic is the point (`agent()` pins concurrency=1: faust-streaming can skip
offsets with more, its issue #606).

Several workers can run at once: each runner's consumer group shares its topic's partitions
between them, and each partition resumes from PostgreSQL (builder) or the committed offset
(audit publisher) when it moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust
from mode import Service

from wakeline.errors import ConfigError, WakelineError
from wakeline.infra import metrics as m
from wakeline.infra.detection import DetectionRules
from wakeline.infra.settings import KafkaSettings
from wakeline.ledger.checkpoints import Signer, parse_body, split_note
from wakeline.ledger.store import LedgerStore
from wakeline.schemas import default_codec

from .approvals import approval_runner
from .auditor import Auditor, AuditProcessor
from .checkpointing import sign_checkpoint
from .loops import loop_runner
from .races import race_runners
from .schema_sync import worker_resolver
from .service import LedgerBuilderService
from .settings import BuilderSettings
from .shutdown import DEADLINE, install_stopping_handlers
from .stream import KafkaRunner, RunnerSettings

log = logging.getLogger(__name__)


@dataclass
class Worker:
    """The app and what it hosts, so tests and the CLI can reach them."""

    app: faust.App
    #: the ledger builder's runner (None when this worker runs the audit publisher only)
    builder: LedgerBuilderService | None
    checkpoint_now: Callable[[], bytes | None]
    #: called first when the worker stops (e.g. forward the stop to an audit child process)
    stop_hooks: list[Callable[[], None]] = field(default_factory=list)
    #: every runner this worker hosts (builder, audit publisher)
    runners: list[KafkaRunner] = field(default_factory=list)
    #: what `run_worker` serves on (host, port) when that is set (`--metrics-port`)
    metrics: m.Metrics = m.NO_METRICS
    metrics_address: tuple[str, int] | None = None
    #: time (s since the epoch) of the newest signed checkpoint, or None (see `samples`)
    checkpoint_time: Callable[[], float | None] | None = None
    _stopped: bool = False
    _stop_lock: threading.Lock = field(default_factory=threading.Lock)

    def start_runners(self) -> None:
        """Start the runners' threads, unless the worker is stopping already."""
        with self._stop_lock:
            if not self._stopped:
                for runner in self.runners:
                    runner.start()

    def stop_hosted(self, *, wait: bool = True) -> None:
        """Run the stop hooks (once), tell every runner to stop (each drains what is
        pending) and, with `wait`, wait for them. faust's stop calls it without waiting, so
        the runners drain and close their consumers (up to 5 s when a group join is in
        flight) while faust stops its own services; `run_worker` calls it again after
        faust, waiting, also because a stop signal during faust's start ends faust without
        stopping its services."""
        with self._stop_lock:
            if not self._stopped:
                self._stopped = True
                for hook in self.stop_hooks:
                    try:
                        hook()
                    except Exception as e:  # stopping goes on
                        log.warning("stop hook failed: %s", e)
        for runner in self.runners:
            runner._stop.set()  # all at once, then wait for each
        if wait:
            for runner in self.runners:
                runner.stop(timeout=max(DEADLINE.remaining() - 0.5, 0.1))

    @property
    def failure(self) -> BaseException | None:
        return next((r.failure for r in self.runners if r.failure is not None), None)

    def samples(self) -> list[m.Sample]:
        """The worker's metrics, read from what its runners and processors count."""
        out: list[m.Sample] = []
        for runner in self.runners:
            out += runner.samples()
            auditor = getattr(runner.processor, "auditor", None)
            if isinstance(auditor, Auditor):
                out.append(m.Sample(m.AUDIT_RECORDS, (), auditor.records_audited))
                out.append(m.Sample(m.DLQ_RECORDS, (), auditor.records_dead_lettered))
        if self.builder is not None:
            out.append(m.Sample(m.EVENTS_LEDGERED, (), self.builder.records_ledgered))
            out.append(m.Sample(m.SEGMENTS_STORED, (), self.builder.ledger.segments_stored))
        signed = self.checkpoint_time() if self.checkpoint_time is not None else None
        if signed is not None:
            out.append(m.Sample(m.CHECKPOINT_AGE, (), max(time.time() - signed, 0.0)))
        return out


def agent(app: faust.App, channel: Any, **kwargs: Any) -> Callable[..., Any]:
    """`app.agent` with concurrency pinned to 1 (faust #606: >1 can skip offsets)."""
    if kwargs.get("concurrency", 1) != 1:
        raise ConfigError(
            f"agent concurrency={kwargs['concurrency']}, want 1 (faust issue #606 loses "
            "messages with more); scale with more workers instead"
        )
    kwargs["concurrency"] = 1
    return app.agent(channel, **kwargs)


def create_worker(
    kafka: KafkaSettings,
    settings: BuilderSettings,
    dsn: str,
    store_factory: Callable[[], LedgerStore],
    signer: Signer | None,
) -> Worker:
    # faust joins its app id's consumer group even with no agent; a process of another role
    # takes another id, so starting or stopping one never rebalances the other (a rebalance
    # during a process's own stop can hang it)
    role = (
        "all" if settings.builder and settings.audit else "builder" if settings.builder else "audit"
    )
    app = faust.App(
        f"{kafka.topics.prefix}worker-{role}",
        broker=f"kafka://{kafka.bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_partitions=kafka.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
    )
    runners: list[KafkaRunner] = []
    builder = None
    if settings.builder:
        builder = LedgerBuilderService(kafka, settings, store_factory, dsn)
        runners.append(builder)
    if settings.detectors and settings.audit:  # they run beside the audit publisher
        rules = DetectionRules.from_env()
        runners.append(loop_runner(kafka, rules, stall_after_s=settings.stall_after_s))
        runners.extend(race_runners(kafka, rules, stall_after_s=settings.stall_after_s))
    if settings.audit:
        runners.append(audit_runner(kafka, settings, store_factory))
        if settings.approvals:
            runners.append(approval_runner(kafka, dsn, stall_after_s=settings.stall_after_s))
        # frames written with schemas agents published on the schemas topic decode too
        default_codec().resolver = worker_resolver(kafka, dsn)
    lock = asyncio.Lock()
    stop_hooks: list[Callable[[], None]] = []

    def checkpoint_now() -> bytes | None:
        if signer is None:
            raise ConfigError("no signing key configured; cannot sign a checkpoint")
        store = store_factory()
        try:
            return sign_checkpoint(store, signer)
        finally:
            store.close()

    worker = Worker(app, builder, checkpoint_now, stop_hooks, runners)

    @app.service
    class RunnerHost(Service):
        """Starts the runners' threads with the worker and tells them to stop on shutdown."""

        async def on_start(self) -> None:
            worker.start_runners()
            loop = asyncio.get_running_loop()
            # `kill -USR1 <pid>` signs a checkpoint now
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGUSR1, lambda: self.add_future(_checkpoint()))

        async def on_stop(self) -> None:
            worker.stop_hosted(wait=False)  # run_worker waits for them, after faust

        @Service.task
        async def _watch(self) -> None:
            while not self.should_stop:
                for runner in runners:
                    if runner.failure is not None or (
                        runner._thread is not None and not runner.running and not self.should_stop
                    ):
                        why = runner.failure or WakelineError(f"{runner.processor.name} exited")
                        log.critical("%s failed: %s", runner.processor.name, why)
                        await self.crash(why)  # type: ignore[arg-type]
                        return
                await self.sleep(0.5)

    async def _checkpoint() -> None:
        async with lock:
            try:
                await asyncio.get_running_loop().run_in_executor(None, checkpoint_now)
            except Exception as e:  # the next interval tries again
                log.warning("checkpoint failed: %s", e)

    if signer is not None and settings.checkpoint_interval_s > 0:

        @app.timer(settings.checkpoint_interval_s)
        async def checkpoint_timer() -> None:
            await _checkpoint()

    if settings.metrics_port:
        worker.metrics = m.PrometheusMetrics()
        worker.metrics.observe(worker.samples)
        worker.metrics_address = (settings.metrics_host, settings.metrics_port)
        if builder is not None:  # the ledger's processes say how old its checkpoint is
            worker.checkpoint_time = CheckpointClock(store_factory)
    return worker


class CheckpointClock:
    """The time of the newest checkpoint in the store (whoever signed it), read at most
    once every `every_s` (a scrape opens no more connections than that); None if there is
    none yet or the store cannot be read."""

    def __init__(self, store_factory: Callable[[], LedgerStore], every_s: float = 5.0) -> None:
        self._store_factory = store_factory
        self.every_s = every_s
        self._read_at = float("-inf")
        self._time: float | None = None

    def __call__(self) -> float | None:
        now = time.monotonic()
        if now - self._read_at >= self.every_s:
            self._read_at = now
            try:
                store = self._store_factory()
                try:
                    note = store.latest_checkpoint()
                finally:
                    store.close()
                if note is None:
                    self._time = None
                else:
                    self._time = parse_body(split_note(note)[0]).time_ms / 1000
            except Exception as e:  # noqa: BLE001 - the metric is left out, the worker goes on
                log.warning("checkpoint age unknown: %s: %s", type(e).__name__, e)
                self._time = None
        return self._time


def audit_runner(
    kafka: KafkaSettings, settings: BuilderSettings, store_factory: Callable[[], LedgerStore]
) -> KafkaRunner:
    """The audit publisher on the Kafka runner: each segment header on the ledger topic ->
    audit and DLQ records (one unit of work per header, thousands of records each)."""
    auditor = Auditor(
        None,
        events_topic=kafka.topics.events,
        audit_topic=kafka.topics.audit,
        dlq_topic=kafka.topics.dlq,
        intent_cache_size=settings.intent_cache_size,
        max_record_bytes=settings.max_record_bytes,
    )
    return KafkaRunner(
        AuditProcessor(auditor, store_factory),
        kafka.topics.ledger,
        kafka.client_config,
        RunnerSettings(
            group_id=f"{kafka.topics.prefix}audit-publisher",
            batch_size=64,
            poll_timeout_s=0.1,
            stall_after_s=settings.stall_after_s,
            sink_batch=4,
        ),
    )


class DeadlineWorker(faust.Worker):
    """faust's worker, arming the shutdown deadline when a stop signal arrives (these two
    hooks are the ones faust's own Worker overrides to flag a stop by signal)."""

    def _on_sigterm(self) -> None:
        DEADLINE.arm("SIGTERM")
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        DEADLINE.arm("SIGINT")
        super()._on_sigint()


def run_worker(worker: Worker, loglevel: str = "warn") -> None:
    """Run the faust worker in this process until it is stopped (SIGTERM/SIGINT). From the
    stop signal on, the process has SHUTDOWN_DEADLINE_S to exit (shutdown.py)."""
    if worker.metrics_address is not None:  # a port in use is a clear error, before anything
        worker.metrics.serve(worker.metrics_address[1], worker.metrics_address[0])
    try:
        faust_worker = DeadlineWorker(worker.app, loglevel=loglevel, quiet=True)
        faust_worker.execute_from_commandline()
    finally:
        install_stopping_handlers()
        DEADLINE.arm("the worker stopped")
        worker.stop_hosted()
        worker.metrics.close()
    if worker.failure is not None:
        raise worker.failure
