"""The ledger builder as a batch consumer: confluent-kafka in, PostgreSQL + Kafka out.

One loop, on its own thread inside the faust worker (see app.py):

    consume(batch) -> builder.add -> builder.seal (PostgreSQL transaction per segment)
        -> publish the segment headers, wait for the broker
        -> record the publication -> commit the consumer offsets

It never decodes a value: audit and DLQ records are the auditor's work (auditor.py), which
follows the published headers, so the hot path is leaf bytes, hashes and one transaction.

Positions come from PostgreSQL: on assignment every partition is loaded from the store and
the consumer seeks to the offset after its last stored segment; committed consumer offsets
are written for lag monitoring only. When the database or the broker fails, the loop keeps
retrying with backoff: it drops what is not persisted, reloads from the store and seeks.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from wakeline.errors import WakelineError
from wakeline.infra.settings import KafkaSettings
from wakeline.ledger.hashing import suite_named
from wakeline.ledger.records import LedgerRecord
from wakeline.ledger.store import LedgerStore

from .builder import FROM_BEGINNING, LedgerBuilder, LedgerDivergence, SealedSegment
from .publisher import HeaderPublisher, PublicationLog
from .settings import BuilderSettings

log = logging.getLogger(__name__)

_RETRY_MAX_S = 5.0


def to_record(msg: Any) -> LedgerRecord:
    return LedgerRecord(
        msg.partition(), msg.offset(), msg.timestamp()[1], msg.key(), msg.value(),
        tuple(msg.headers() or ()),
    )  # fmt: skip


class LedgerBuilderService:
    """Runs the builder loop until `stop()`; `run()` blocks, `start()` runs it on a thread."""

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: BuilderSettings,
        store_factory: Callable[[], LedgerStore],
        dsn: str,
        *,
        on_segments: Callable[[list[SealedSegment]], None] | None = None,
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.topic = kafka.topics.events
        self.suite = suite_named(settings.hash_suite)
        self._store_factory = store_factory
        self._store: LedgerStore | None = None
        self.publications = PublicationLog(dsn, kafka.topics.ledger)
        self.on_segments = on_segments
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._assigned: set[int] = set()
        self._to_load: set[int] = set()
        self.failure: BaseException | None = None
        self.segments_published = 0
        self.records_ledgered = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_guarded, name="ledger-builder")
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run_guarded(self) -> None:
        try:
            self.run()
        except BaseException as e:
            self.failure = e
            log.exception("ledger builder stopped")

    def store(self) -> LedgerStore:
        if self._store is None:
            self._store = self._store_factory()
            if hasattr(self, "builder"):
                self.builder.store = self._store
        return self._store

    def _reset_store(self) -> None:
        if self._store is not None:
            with contextlib.suppress(Exception):  # the connection may be broken already
                self._store.close()
        self._store = None
        self.publications.close()

    def run(self) -> None:
        s = self.settings
        self.builder = LedgerBuilder(
            self.store(), self.suite, max_leaves=s.segment_max_leaves, max_age_s=s.segment_max_age_s
        )
        self.publisher = HeaderPublisher(None, self.kafka.topics.ledger)
        self.producer = Producer(
            self.kafka.client_config(
                **{
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 1,
                    "delivery.report.only.error": True,
                    "on_delivery": self.publisher.on_delivery,
                }
            )
        )
        self.publisher.producer = self.producer
        self.consumer = Consumer(
            self.kafka.client_config(
                **{
                    "group.id": s.group_for(self.kafka.topics.prefix),
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                    "fetch.max.bytes": 52_428_800,
                    "max.partition.fetch.bytes": 4_194_304,
                }
            )
        )
        self.consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not self._stop.is_set():
                self._step()
            self._drain()
        finally:
            self.consumer.close()
            self.producer.flush(10)
            self._reset_store()

    # ------------------------------------------------------------------ rebalancing

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        ps = [tp.partition for tp in partitions]
        log.info("partitions assigned partitions=%s", ps)
        self._assigned.update(ps)
        offsets = self._load(ps)
        for tp in partitions:
            off = offsets.get(tp.partition)
            if off is not None:
                tp.offset = OFFSET_BEGINNING if off == FROM_BEGINNING else off
        consumer.assign(partitions)
        # partitions that could not be loaded are paused until they are
        if self._to_load:
            consumer.pause([TopicPartition(self.topic, p) for p in self._to_load])

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        ps = [tp.partition for tp in partitions]
        log.info("partitions revoked partitions=%s", ps)
        try:  # persist what is pending: the next owner then starts after it
            self._seal_and_publish(self.builder.seal(ps))
        except WakelineError as e:
            log.warning("could not seal on revoke partitions=%s reason=%s", ps, e)
            self._reset_store()
        self.builder.revoke(ps)
        self._assigned.difference_update(ps)
        self._to_load.difference_update(ps)
        consumer.unassign()

    def _load(self, partitions: list[int]) -> dict[int, int]:
        """Load partitions from the store and republish what was stored but not published.
        Partitions that fail stay in `_to_load` for a later retry."""
        out: dict[int, int] = {}
        for p in partitions:
            try:
                out.update(self.builder.assign([p]))
                self._republish(p)
                self._to_load.discard(p)
            except LedgerDivergence:
                raise
            except WakelineError as e:
                log.warning("partition load failed partition=%d reason=%s", p, e)
                self.builder.revoke([p])
                self._to_load.add(p)
                self._reset_store()
        return out

    def _republish(self, partition: int) -> None:
        store = self.store()
        last = store.last_segment(partition)
        if last is None:
            return
        done = self.publications.last_published(partition)
        if done >= last[0].segment_number:
            return
        batch = [h for h in store.headers(partition) if h.segment_number > done]
        log.info("republishing headers partition=%d count=%d", partition, len(batch))
        self.publisher.publish(batch)
        self.publications.mark(batch)

    def _retry_loads(self) -> None:
        if not self._to_load:
            return
        pending = sorted(self._to_load)
        offsets = self._load(pending)
        for p, off in offsets.items():
            self.consumer.seek(
                TopicPartition(self.topic, p, OFFSET_BEGINNING if off == FROM_BEGINNING else off)
            )
            self.consumer.resume([TopicPartition(self.topic, p)])
        if self._to_load:
            time.sleep(min(_RETRY_MAX_S, 0.5))

    # ------------------------------------------------------------------ the loop

    def _step(self) -> None:
        self._retry_loads()
        msgs = self.consumer.consume(self.settings.batch_size, self.settings.poll_timeout_s)
        records = []
        for m in msgs:
            err = m.error()
            if err is None:
                records.append(to_record(m))
            elif err.code() != KafkaError._PARTITION_EOF:
                if err.fatal():
                    raise WakelineError(f"consumer failed: {err}")
                log.warning("consumer error: %s", err)
        if records:
            self.builder.add(records)
        try:
            self._seal_and_publish(self.builder.seal())
        except LedgerDivergence:
            raise
        except WakelineError as e:
            lost = sorted(self._assigned - set(self.builder.assigned()))
            log.warning("persist/publish failed, will reload partitions=%s reason=%s", lost, e)
            # everything not acknowledged is reloaded from the store and re-read
            for p in self._assigned:
                self.builder.revoke([p])
            self._to_load.update(self._assigned)
            self.consumer.pause([TopicPartition(self.topic, p) for p in self._assigned])
            self._reset_store()
        for p in getattr(self.builder, "reloaded", []):
            self.consumer.seek(TopicPartition(self.topic, p, self.builder.next_offset(p)))

    def _seal_and_publish(self, segments: list[SealedSegment]) -> None:
        if not segments:
            return
        headers = [s.header for s in segments]
        self.publisher.publish(headers)
        self.publications.mark(headers)
        last: dict[int, int] = {}
        for s in segments:
            last[s.header.partition] = s.header.last_offset + 1
        self.segments_published += len(segments)
        self.records_ledgered += sum(s.header.leaf_count for s in segments)
        try:
            self.consumer.commit(
                offsets=[TopicPartition(self.topic, p, o) for p, o in last.items()],
                asynchronous=True,
            )
        except Exception as e:  # lag bookkeeping only; positions live in PostgreSQL
            log.debug("offset commit failed: %s", e)
        if self.on_segments is not None:
            self.on_segments(segments)

    def _drain(self) -> None:
        """On a clean stop, persist and publish what is pending."""
        try:
            self._seal_and_publish(self.builder.seal(self.builder.assigned()))
        except WakelineError as e:
            log.warning("could not seal pending records on stop: %s", e)
