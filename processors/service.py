"""The ledger builder as a stream processor (processors/stream.py runs it).

    consumer thread: records -> builder.add -> builder.prepare (leaf hashes, tree, header)
    sink thread, in segment order: store the segment (one PostgreSQL transaction) ->
        the runner publishes its header on the ledger topic and waits for the broker ->
        record the publication -> the runner commits the consumer offsets

It never decodes a value: audit and DLQ records are the audit publisher's work (auditor.py),
which follows the published headers, so the hot path is leaf bytes, hashes and one
transaction.

Positions come from PostgreSQL: on assignment every partition is loaded from the store and
the consumer seeks to the offset after its last stored segment; headers stored but not yet
published are republished first. Committed consumer offsets are for lag monitoring only.
After a failure the runner drops what is not persisted and assigns again (reload, seek).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wakeline.infra.settings import KafkaSettings
from wakeline.ledger.hashing import suite_named
from wakeline.ledger.segments import SegmentHeader
from wakeline.ledger.store import LedgerStore

from .builder import LedgerBuilder, LedgerDivergence, Prepared, SealedSegment
from .publisher import PublicationLog, header_record
from .settings import BuilderSettings
from .stream import Applied, Assigned, KafkaRunner, Output, PublishError, RunnerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Republish:
    """Headers stored before a crash but never published: published before anything new."""

    partition: int
    headers: list[SegmentHeader]


class LedgerProcessor:
    """Records of the events topic -> persisted segments -> headers on the ledger topic."""

    name = "ledger-builder"
    fatal: tuple[type[BaseException], ...] = (LedgerDivergence,)

    def __init__(
        self,
        settings: BuilderSettings,
        store_factory: Callable[[], LedgerStore],
        publications: Callable[[], PublicationLog],
        ledger_topic: str,
        *,
        on_segments: Callable[[list[SealedSegment]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.ledger_topic = ledger_topic
        self._store_factory = store_factory
        self._publications_factory = publications
        # the consumer thread's store (loading, re-delivery checks) and the sink's (appends)
        self._store: LedgerStore | None = None
        self._sink_store: LedgerStore | None = None
        self._publications: PublicationLog | None = None
        self._sink_publications: PublicationLog | None = None
        self.on_segments = on_segments
        self.builder = LedgerBuilder(
            _Lazy(self._consumer_store),
            suite_named(settings.hash_suite),
            max_leaves=settings.segment_max_leaves,
            max_age_s=settings.segment_max_age_s,
        )
        self.builder.before_store_check = lambda: self.wait_for_sink()
        self.wait_for_sink: Callable[[], None] = lambda: None
        self.segments_stored = 0
        self.records_stored = 0

    # -- stores: one per thread, reconnected after a failure --------------------------------

    def _consumer_store(self) -> LedgerStore:
        if self._store is None:
            self._store = self._store_factory()
        return self._store

    def _close_consumer_side(self) -> None:
        for attr in ("_store", "_publications"):
            obj = getattr(self, attr)
            if obj is not None:
                with contextlib.suppress(Exception):  # the connection may be broken already
                    obj.close()
                setattr(self, attr, None)

    # -- consumer thread --------------------------------------------------------------------

    def assign(self, partitions: list[int]) -> Assigned:
        offsets: dict[int, int | None] = {}
        works: list[Any] = []
        try:
            for p in partitions:
                offsets[p] = self.builder.assign([p])[p]  # an offset or FROM_BEGINNING
                pending = self._unpublished(p)
                if pending:
                    log.info("republishing headers partition=%d count=%d", p, len(pending))
                    works.append(Republish(p, pending))
        except LedgerDivergence:
            raise
        except Exception:
            self.builder.revoke(partitions)
            self._close_consumer_side()
            raise
        return Assigned(offsets, works)

    def _unpublished(self, partition: int) -> list[SegmentHeader]:
        store = self._consumer_store()
        last = store.last_segment(partition)
        if last is None:
            return []
        if self._publications is None:
            self._publications = self._publications_factory()
        done = self._publications.last_published(partition)
        if done >= last[0].segment_number:
            return []
        return [h for h in store.headers(partition) if h.segment_number > done]

    def revoke(self, partitions: list[int]) -> None:
        self.builder.revoke(partitions)

    def handle(self, records: list[Any], now: float) -> list[Any]:
        self.builder.add(records)
        return []

    def due(self, now: float) -> list[Any]:
        return list(self.builder.prepare())

    def drain(self, partitions: list[int]) -> list[Any]:
        return list(self.builder.prepare(partitions))

    # -- sink thread --------------------------------------------------------------------------

    def apply(self, works: list[Any]) -> list[Applied]:
        if self._sink_store is None:
            self._sink_store = self._store_factory()
        out = []
        for w in works:
            if isinstance(w, Republish):
                out.append(Applied(w, [self._header_output(h) for h in w.headers]))
                continue
            prep: Prepared = w
            sealed = self.builder.persist(prep, self._sink_store)
            h = sealed.header
            out.append(Applied(sealed, [self._header_output(h)], {h.partition: h.last_offset + 1}))
        return out

    def _header_output(self, header: SegmentHeader) -> Output:
        part, key, value = header_record(header)
        return Output(self.ledger_topic, value, key, partition=part)

    def delivered(self, applied: list[Applied], refused: list[tuple[Output, str]]) -> list[Output]:
        if refused:
            raise PublishError(f"{len(refused)} segment headers refused; first: {refused[0][1]}")
        headers: list[SegmentHeader] = []
        sealed: list[SealedSegment] = []
        for a in applied:
            if isinstance(a.work, Republish):
                headers += a.work.headers
            else:
                sealed.append(a.work)
                headers.append(a.work.header)
        if self._sink_publications is None:
            self._sink_publications = self._publications_factory()
        self._sink_publications.mark(headers)
        self.segments_stored += len(sealed)
        self.records_stored += sum(s.header.leaf_count for s in sealed)
        if self.on_segments is not None and sealed:
            self.on_segments(sealed)
        return []

    def reset(self) -> None:
        """After a sink failure (sink thread): reconnect the sink's side on the next use.
        The consumer thread's side reconnects when its own next use fails (`assign`)."""
        for attr in ("_sink_store", "_sink_publications"):
            obj = getattr(self, attr)
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.close()
                setattr(self, attr, None)

    def close(self) -> None:
        self.reset()
        self._close_consumer_side()


class _Lazy:
    """A LedgerStore proxy that asks `factory` for the live store on every use, so the
    builder always reads through the current connection (reconnected after a failure)."""

    def __init__(self, factory: Callable[[], LedgerStore]) -> None:
        self._factory = factory

    def __getattr__(self, name: str) -> Any:
        return getattr(self._factory(), name)


class LedgerBuilderService(KafkaRunner):
    """The ledger builder on the Kafka runner: what `wakeline worker` hosts."""

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: BuilderSettings,
        store_factory: Callable[[], LedgerStore],
        dsn: str,
        *,
        on_segments: Callable[[list[SealedSegment]], None] | None = None,
    ) -> None:
        ledger_topic = kafka.topics.ledger
        self.ledger = LedgerProcessor(
            settings,
            store_factory,
            lambda: PublicationLog(dsn, ledger_topic),
            ledger_topic,
            on_segments=on_segments,
        )
        super().__init__(
            self.ledger,
            kafka.topics.events,
            kafka.client_config,
            RunnerSettings(
                group_id=settings.group_for(kafka.topics.prefix),
                batch_size=settings.batch_size,
                poll_timeout_s=settings.poll_timeout_s,
                stall_after_s=settings.stall_after_s,
                consumer_config={
                    "fetch.max.bytes": 52_428_800,
                    "max.partition.fetch.bytes": 4_194_304,
                },
            ),
            producer_config={"linger.ms": 1},
        )

    @property
    def builder(self) -> LedgerBuilder:
        return self.ledger.builder

    @property
    def records_ledgered(self) -> int:
        return self.ledger.records_stored
