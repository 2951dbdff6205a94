"""The faust-streaming app behind `wakeline worker`.

The ledger builder is the hot path and does not run as a faust agent: faust's per-event
machinery costs ~70 µs an event (measured: docs/decisions.md), so the
builder is a batch consumer (confluent-kafka, its own consumer group) hosted in the worker
as a mode Service, on its own thread. The audit publisher is a faust agent over the ledger
topic: one event per segment header (thousands of records), so faust's per-event cost is
negligible there; the work per header runs on a thread of its own. Checkpoints are a faust
timer. Per-event processors (loop and race detectors) register as agents through `agent()`,
which pins concurrency=1 (faust-streaming's GitHub issue #606: more loses messages).

Several workers can run at once: the builder's consumer group shares the events topic's
partitions between them, and each partition resumes from PostgreSQL when it moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust
from mode import Service

from wakeline.errors import ConfigError, WakelineError
from wakeline.infra.settings import KafkaSettings
from wakeline.ledger.checkpoints import Signer
from wakeline.ledger.store import LedgerStore

from .checkpointing import sign_checkpoint
from .service import LedgerBuilderService
from .settings import BuilderSettings
from .shutdown import DEADLINE, install_stopping_handlers

log = logging.getLogger(__name__)


@dataclass
class Worker:
    """The app and what it hosts, so tests and the CLI can reach them."""

    app: faust.App
    builder: LedgerBuilderService
    checkpoint_now: Callable[[], bytes | None]
    #: called first when the worker stops (e.g. forward the stop to an audit child process)
    stop_hooks: list[Callable[[], None]] = field(default_factory=list)
    _stopped: bool = False
    _stop_lock: threading.Lock = field(default_factory=threading.Lock)

    def start_builder(self) -> None:
        """Start the builder thread, unless the worker is stopping already."""
        with self._stop_lock:
            if not self._stopped:
                self.builder.start()

    def stop_hosted(self, *, wait: bool = True) -> None:
        """Run the stop hooks (once), tell the builder thread to stop (it drains what is
        pending) and, with `wait`, wait for it. faust's stop calls it without waiting, so the
        builder drains and closes its consumer (up to 5 s when a group join is in flight)
        while faust stops its own services; `run_worker` calls it again after faust, waiting,
        also because a stop signal during faust's start ends faust without stopping its
        services."""
        with self._stop_lock:
            if not self._stopped:
                self._stopped = True
                for hook in self.stop_hooks:
                    try:
                        hook()
                    except Exception as e:  # stopping goes on
                        log.warning("stop hook failed: %s", e)
        self.builder.stop(timeout=30 if wait else 0)


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
    # faust joins its app id's consumer group even with no agent. Only the audit publisher
    # consumes there, so a process without it takes another id: its start and stop then never
    # make the audit publishers rebalance (a rebalance during their own stop can hang it)
    app_id = f"{kafka.topics.prefix}worker" + ("" if settings.audit else "-host")
    app = faust.App(
        app_id,
        broker=f"kafka://{kafka.bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_partitions=kafka.partitions,
        topic_replication_factor=1,
        # a new worker's audit agent starts at the first header, never at the newest
        consumer_auto_offset_reset="earliest",
    )
    builder = LedgerBuilderService(kafka, settings, store_factory, dsn)
    lock = asyncio.Lock()
    if settings.audit:
        _add_audit_agent(app, kafka, settings, store_factory)

    def checkpoint_now() -> bytes | None:
        if signer is None:
            raise ConfigError("no signing key configured; cannot sign a checkpoint")
        store = store_factory()
        try:
            return sign_checkpoint(store, signer)
        finally:
            store.close()

    hosted = Worker(app, builder, checkpoint_now)

    @app.service
    class LedgerBuilderHost(Service):
        """Starts the builder thread with the worker and tells it to stop on shutdown."""

        async def on_start(self) -> None:
            if settings.builder:
                hosted.start_builder()
            loop = asyncio.get_running_loop()
            # `kill -USR1 <pid>` signs a checkpoint now
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGUSR1, lambda: self.add_future(_checkpoint()))

        async def on_stop(self) -> None:
            hosted.stop_hosted(wait=False)  # run_worker waits for it, after faust

        @Service.task
        async def _watch(self) -> None:
            while not self.should_stop:
                if builder.failure is not None:
                    log.critical("ledger builder failed: %s", builder.failure)
                    await self.crash(builder.failure)  # type: ignore[arg-type]
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

    return hosted


def _add_audit_agent(
    app: faust.App,
    kafka: KafkaSettings,
    settings: BuilderSettings,
    store_factory: Callable[[], LedgerStore],
) -> None:
    """A faust agent over the ledger topic: each segment header -> audit and DLQ records."""
    from concurrent.futures import ThreadPoolExecutor

    from confluent_kafka import Producer

    from wakeline.ledger.segments import SegmentHeader

    from .auditor import Auditor

    stores: list[LedgerStore] = []

    def store() -> LedgerStore:
        if not stores:
            stores.append(store_factory())
        return stores[0]

    auditor = Auditor(
        None,
        events_topic=kafka.topics.events,
        audit_topic=kafka.topics.audit,
        dlq_topic=kafka.topics.dlq,
        store=store,
        intent_cache_size=settings.intent_cache_size,
    )
    auditor.producer = Producer(
        kafka.client_config(
            **{
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "queue.buffering.max.messages": 1_000_000,
                "delivery.report.only.error": True,
                "on_delivery": auditor.on_delivery,
            }
        )
    )
    # one thread: the store connection and the intent cache are used from it alone
    executor = ThreadPoolExecutor(1, thread_name_prefix="auditor")
    ledger_topic = app.topic(
        kafka.topics.ledger, key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw",
    )  # fmt: skip
    done: dict[int, int] = {}

    def audit(header: SegmentHeader, at_us: int) -> None:
        try:
            auditor.audit_segment(header, at_us)
        except WakelineError:
            stores.clear()  # reconnect on the next try
            raise

    @agent(app, ledger_topic, name="audit-publisher")
    async def audit_publisher(stream: Any) -> None:
        loop = asyncio.get_running_loop()
        async for event in stream.events():
            header = SegmentHeader.from_bytes(event.value)
            if done.get(header.partition, -1) >= header.segment_number:
                continue  # a republished header this worker has audited already
            at_us = int(event.message.timestamp * 1_000_000)
            delay = 0.5
            while True:  # the agent must not die: faust does not restart crashed agents
                try:
                    await loop.run_in_executor(executor, audit, header, at_us)
                    break
                except WakelineError as e:
                    log.warning(
                        "audit failed, retrying partition=%d segment=%d reason=%s",
                        header.partition, header.segment_number, e,
                    )  # fmt: skip
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            done[header.partition] = header.segment_number


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
    faust_worker = DeadlineWorker(worker.app, loglevel=loglevel, quiet=True)
    try:
        faust_worker.execute_from_commandline()
    finally:
        install_stopping_handlers()
        DEADLINE.arm("the worker stopped")
        worker.stop_hosted()
    if worker.builder.failure is not None:
        raise worker.builder.failure
