"""The ledger builder as a batch consumer: confluent-kafka in, PostgreSQL + Kafka out.

One loop, on its own thread inside the faust worker (see app.py):

    consume(batch) -> builder.add -> builder.prepare (leaf hashes, tree, header)
    and on a second thread (persister.py), in segment order:
        store the segment (one PostgreSQL transaction) -> publish its header, wait for the
        broker -> record the publication -> commit the consumer offsets

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
from .persister import Persister
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
        self._commit_lock = threading.Lock()
        self._to_commit: dict[int, int] = {}
        #: partition -> monotonic time its ledger last grew (or it was assigned / caught up)
        self._progress_at: dict[int, float] = {}
        self._stall_checked_at = 0.0
        #: partition -> (seconds without progress, next offset, high watermark, last error)
        self.stalled: dict[int, tuple[float, int, int, str | None]] = {}
        self._last_error: str | None = None

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
        self.persister = Persister(
            self.builder,
            self._store_factory,
            self.publisher,
            PublicationLog(self.publications.dsn, self.publications.ledger_topic),
            self._commit,
            on_segments=self.on_segments,
        )
        self.builder.before_store_check = self.persister.drain
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
            self.persister.close()
            self.consumer.close()
            self.producer.flush(10)
            self._reset_store()

    # ------------------------------------------------------------------ rebalancing

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        ps = [tp.partition for tp in partitions]
        log.info("partitions assigned partitions=%s", ps)
        self._assigned.update(ps)
        now = time.monotonic()
        for p in ps:
            self._progress_at[p] = now
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
        # persist what is pending: the next owner then starts after it
        self.persister.submit(self.builder.prepare(ps))
        self.persister.drain()
        if self.persister.failure is not None:
            log.warning("could not persist on revoke partitions=%s", ps)
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
                self.store()  # (re)connects, and hands the builder the live store
                out.update(self.builder.assign([p]))
                self._republish(p)
                self._to_load.discard(p)
            except LedgerDivergence:
                raise
            except WakelineError as e:
                log.warning("partition load failed partition=%d reason=%s", p, e)
                self._last_error = f"load failed: {e}"
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
        if self.persister.failure is not None:
            self._recover(self.persister.failure)
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
        self.persister.submit(self.builder.prepare())
        self._commit_noted()
        self._check_stalls()

    def _check_stalls(self) -> None:
        """A partition with records waiting whose ledger has not grown for `stall_after_s`
        is stalled: said at error level (again every `stall_after_s` while it lasts) and kept
        in `stalled` for metrics. `wakeline doctor` and `ledger-verify` see it from outside
        (records older than the threshold still unledgered)."""
        now = time.monotonic()
        if now - self._stall_checked_at < 1.0:
            return
        self._stall_checked_at = now
        limit = self.settings.stall_after_s
        for p in sorted(self._assigned):
            since = self._progress_at.setdefault(p, now)
            try:
                nxt = self.builder.next_offset(p)
            except KeyError:  # not loaded yet (waiting in _to_load)
                nxt = -1
            try:
                _, high = self.consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), cached=True
                )
            except Exception:  # no fetch response yet: nothing known to be waiting
                high = -1
            waiting = high > max(nxt, 0) or p in self._to_load
            if not waiting:
                self._progress_at[p] = now
                if self.stalled.pop(p, None) is not None:
                    log.warning("partition no longer stalled partition=%d", p)
                continue
            idle = now - since
            if idle < limit:
                continue
            before = self.stalled.get(p)
            self.stalled[p] = (idle, nxt, high, self._last_error)
            if before is None or int(idle // limit) != int(before[0] // limit):
                log.error(
                    "partition stalled partition=%d no_progress_s=%.0f next_offset=%d "
                    "high_watermark=%d last_error=%s",
                    p, idle, nxt, high, self._last_error,
                )  # fmt: skip

    def _recover(self, failure: BaseException) -> None:
        """Drop everything not stored, reload every partition from the store, seek there."""
        if isinstance(failure, LedgerDivergence):
            raise failure
        self._last_error = f"{type(failure).__name__}: {failure}"
        log.warning("persist/publish failed, reloading partitions=%s", sorted(self._assigned))
        self.persister.reset()
        for p in self._assigned:
            self.builder.revoke([p])
        self._to_load.update(self._assigned)
        self.consumer.pause([TopicPartition(self.topic, p) for p in self._assigned])
        self._reset_store()

    def _commit(self, offsets: dict[int, int]) -> None:
        """Called by the persister: note offsets to commit. The consumer thread commits them
        (confluent-kafka's consumer must not be driven from two threads at once)."""
        now = time.monotonic()
        with self._commit_lock:
            self._to_commit.update(offsets)
            for p in offsets:
                self._progress_at[p] = now

    def _commit_noted(self) -> None:
        """Commit consumer offsets (lag bookkeeping only: positions live in PostgreSQL)."""
        with self._commit_lock:
            offsets, self._to_commit = self._to_commit, {}
        offsets = {p: o for p, o in offsets.items() if p in self._assigned}
        if not offsets:
            return
        try:
            self.consumer.commit(
                offsets=[TopicPartition(self.topic, p, o) for p, o in offsets.items()],
                asynchronous=True,
            )
        except Exception as e:
            log.debug("offset commit failed: %s", e)

    @property
    def records_ledgered(self) -> int:
        return self.persister.records_stored

    def _drain(self) -> None:
        """On a clean stop, persist and publish what is pending."""
        self.persister.submit(self.builder.prepare(self.builder.assigned()))
        self.persister.drain()
        if self.persister.failure is not None:
            log.warning("could not persist pending records on stop: %s", self.persister.failure)
