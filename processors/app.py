"""The faust-streaming app behind `wakeline worker`.

The ledger builder is the hot path and does not run as a faust agent: faust's per-event
machinery costs ~70 µs an event (NOTES.md; measured again in docs/decisions.md), so the
builder is a batch consumer (confluent-kafka, its own consumer group) hosted in the worker
as a mode Service, on its own thread. Checkpoints are a faust timer. Per-event processors
(loop and race detectors) register as agents through `agent()`, which pins concurrency=1
(faust issue #606 loses messages above 1).

Several workers can run at once: the builder's consumer group shares the events topic's
partitions between them, and each partition resumes from PostgreSQL when it moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faust
from mode import Service

from wakeline.errors import ConfigError
from wakeline.infra.settings import KafkaSettings
from wakeline.ledger.checkpoints import Signer
from wakeline.ledger.store import LedgerStore

from .checkpointing import sign_checkpoint
from .service import LedgerBuilderService
from .settings import BuilderSettings

log = logging.getLogger(__name__)


@dataclass
class Worker:
    """The app and what it hosts, so tests and the CLI can reach them."""

    app: faust.App
    builder: LedgerBuilderService
    checkpoint_now: Callable[[], bytes | None]


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
    app = faust.App(
        f"{kafka.topics.prefix}worker",
        broker=f"kafka://{kafka.bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_partitions=kafka.partitions,
        topic_replication_factor=1,
    )
    builder = LedgerBuilderService(kafka, settings, store_factory, dsn)
    lock = asyncio.Lock()

    def checkpoint_now() -> bytes | None:
        if signer is None:
            raise ConfigError("no signing key configured; cannot sign a checkpoint")
        store = store_factory()
        try:
            return sign_checkpoint(store, signer)
        finally:
            store.close()

    @app.service
    class LedgerBuilderHost(Service):
        """Starts the builder thread with the worker and stops it first on shutdown."""

        async def on_start(self) -> None:
            builder.start()
            loop = asyncio.get_running_loop()
            # `kill -USR1 <pid>` signs a checkpoint now
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGUSR1, lambda: self.add_future(_checkpoint()))

        async def on_stop(self) -> None:
            await asyncio.get_running_loop().run_in_executor(None, builder.stop)

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

    return Worker(app, builder, checkpoint_now)


def run_worker(worker: Worker, loglevel: str = "warn") -> None:
    """Run the faust worker in this process until it is stopped (SIGTERM/SIGINT)."""
    faust_worker = faust.Worker(worker.app, loglevel=loglevel, quiet=True)
    faust_worker.execute_from_commandline()
    if worker.builder.failure is not None:
        raise worker.builder.failure
