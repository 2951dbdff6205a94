"""One runner for every stream processor: Kafka in, side effects, Kafka out, commit.

A processor says what to do with records; the runner does everything around it, the same
way for each (the ledger builder, the audit publisher, and the detectors and compensator
after them):

    consumer thread                       sink thread (in order)
    ---------------                       ----------------------
    consume(batch) -> handle(records)     apply(works)      side effects (PostgreSQL)
    timers         -> due(now)              -> produce the outputs, wait for the broker
    rebalance      -> assign / drain,       -> delivered()   bookkeeping, replacements for
                      revoke                                 outputs the broker refused
                                            -> note the offsets; the consumer thread commits

- **Assignment.** `assign(partitions)` restores each partition's state (from PostgreSQL) and
  says where to start: an offset, `FROM_BEGINNING`, or `COMMITTED` (the group's committed
  offset). It may also return work to do first (e.g. republish what was stored but not yet
  published). On revocation the pending work of those partitions is drained through the sink
  and their offsets committed before the next owner takes them.
- **Failures.** Anything the sink raises drops what is queued, and the consumer thread
  restores every partition from the store and seeks there, retrying with exponential backoff
  and jitter (tenacity) while it keeps serving the consumer group. Exceptions a processor
  names in `fatal` stop the runner instead (the ledger builder's `LedgerDivergence`).
- **Commit after the sink.** Offsets are committed only once the work's outputs were
  delivered, so a crash at any point redoes work (at-least-once); processors make redone work
  harmless (the builder checks re-delivered records against the stored leaves).
- **Stalls.** A partition with records waiting whose work has not completed for
  `stall_after_s` is reported at error level and kept in `stalled`.
- **Shutdown.** `stop()` drains what is pending through the sink, commits, and closes.

`MemoryRunner` drives the same processor without a broker, for unit tests.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from typing import Any, NamedTuple, Protocol

from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter

from wakeline.errors import WakelineError
from wakeline.infra.metrics import (
    LAG,
    RECORDS_READ,
    RUNNER_RESTARTS,
    STALLED_PARTITIONS,
    STALLED_SECONDS,
    Sample,
)
from wakeline.infra.settings import pin_partitioner
from wakeline.ledger.records import LedgerRecord, record_of_message

log = logging.getLogger(__name__)

#: where a partition starts: Kafka's OFFSET_BEGINNING, or the group's committed offset
FROM_BEGINNING = -2
COMMITTED = None


class PublishError(WakelineError):
    """The broker did not acknowledge what a processor produced."""


class Output(NamedTuple):
    """A record a processor wants produced. `tag` is the processor's own handle on it,
    handed back if the broker refuses the record. (A NamedTuple: the audit publisher makes
    one per ledgered record, and a tuple is the cheapest object to make.)"""

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = ()
    partition: int | None = None
    tag: Any = None


@dataclass
class Applied:
    """What the sink did for one unit of work: outputs to produce, then offsets to commit
    (input partition -> next offset)."""

    work: Any
    #: a list, or a generator that makes them while they are produced
    outputs: Iterable[Output] = field(default_factory=list)
    commit: dict[int, int] = field(default_factory=dict)


@dataclass
class Assigned:
    """Where each newly assigned partition starts, and work to sink before anything else."""

    offsets: dict[int, int | None]
    works: list[Any] = field(default_factory=list)


class Processor(Protocol):
    """What a stream processor provides. The runner calls `assign`, `revoke`, `handle`,
    `due` and `drain` from its consumer thread, `apply`, `delivered` and `reset` from its
    sink thread; `wait_for_sink` is set by the runner before anything else."""

    name: str
    #: exceptions that stop the runner instead of a restore-and-retry
    fatal: tuple[type[BaseException], ...]
    wait_for_sink: Callable[[], None]

    def assign(self, partitions: list[int]) -> Assigned: ...
    def revoke(self, partitions: list[int]) -> None: ...
    def handle(self, records: list[LedgerRecord], now: float) -> list[Any]: ...
    def due(self, now: float) -> list[Any]: ...
    def drain(self, partitions: list[int]) -> list[Any]: ...
    def apply(self, works: list[Any]) -> list[Applied]: ...
    def delivered(self, applied: list[Applied], refused: list[tuple[Output, str]]) -> list[Output]:
        """Bookkeeping once outputs are delivered; returns replacements for `refused`
        outputs (e.g. a DLQ record), or raises to have the work redone."""
        ...

    def reset(self) -> None:
        """After a sink failure, on the sink thread: drop connections the sink holds."""
        ...

    def close(self) -> None:
        """The runner stopped: release everything."""
        ...


# -- producing outputs ---------------------------------------------------------------------

#: delivery errors no retry can fix: the record itself is refused
PERMANENT_ERRORS = frozenset(
    {
        "MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE", "INVALID_RECORD",
        "CORRUPT_MESSAGE", "INVALID_MSG", "INVALID_MSG_SIZE", "_INVALID_ARG",
    }
)  # fmt: skip


def deliver(
    producer: Any, outputs: Iterable[Output], timeout: float = 60
) -> list[tuple[Output, str]]:
    """Produce `outputs`, wait for the broker; return those it refused for good, with why.

    A transient failure (a timeout, a broker that is away) raises PublishError: the caller
    redoes the work. A refusal no retry can fix (a record too large, a record the broker
    finds invalid) is returned for the processor to replace.
    """
    refused: list[tuple[Output, str]] = []
    transient: list[str] = []

    def failed(out: Output, err: Any, _msg: Any) -> None:
        if err is None:
            return
        if err.name() in PERMANENT_ERRORS:
            refused.append((out, str(err)))
        else:
            transient.append(f"{out.topic}: {err}")

    produce = producer.produce
    for out in outputs:
        topic, value, key, headers, partition, _ = out
        if type(headers) is not list:
            headers = list(headers)
        while True:
            try:
                if partition is None:
                    produce(topic, value, key, on_delivery=partial(failed, out), headers=headers)
                else:
                    produce(
                        topic, value, key, partition, on_delivery=partial(failed, out),
                        headers=headers,
                    )  # fmt: skip
                break
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.1)
            except Exception as e:  # refused before it left, e.g. over message.max.bytes
                err = e.args[0] if e.args and hasattr(e.args[0], "name") else None
                if err is not None and err.name() not in PERMANENT_ERRORS:
                    raise PublishError(f"{out.topic}: {err}") from e
                refused.append((out, f"{type(e).__name__}: {e}"))
                break
    remaining = producer.flush(timeout)
    if remaining or transient:
        raise PublishError(
            f"{remaining} records unacknowledged, {len(transient)} failed"
            + (f"; first: {transient[0]}" if transient else "")
        )
    return refused


# -- the Kafka runner ------------------------------------------------------------------------

_STOP = object()


@dataclass(frozen=True)
class RunnerSettings:
    group_id: str
    batch_size: int = 5000
    poll_timeout_s: float = 0.05
    stall_after_s: float = 60.0
    #: most units of work the sink takes in one round (one produce-and-flush)
    sink_batch: int = 256
    max_queued: int = 64
    #: first and largest pause between restore attempts after a failure
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    consumer_config: dict[str, Any] = field(default_factory=dict)


class KafkaRunner:
    """Runs one processor over `topic` until `stop()`: `run()` blocks, `start()` threads it."""

    def __init__(
        self,
        processor: Processor,
        topic: str,
        client_config: Callable[..., dict[str, Any]],
        settings: RunnerSettings,
        *,
        producer_config: dict[str, Any] | None = None,
    ) -> None:
        self.processor = processor
        self.topic = topic
        self.settings = settings
        self._client_config = client_config
        self._producer_config = producer_config or {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None
        self._sink_failure: BaseException | None = None
        self._queue: queue.Queue[object] = queue.Queue(settings.max_queued)
        self._assigned: set[int] = set()
        self._to_load: set[int] = set()
        self._commit_lock = threading.Lock()
        self._to_commit: dict[int, int] = {}
        self._progress_at: dict[int, float] = {}
        #: partition -> the next offset of the newest finished work since it was assigned
        self._done: dict[int, int] = {}
        self._stall_checked_at = 0.0
        #: partition -> (seconds without progress, next offset known, high watermark, last error)
        self.stalled: dict[int, tuple[float, int, int, str | None]] = {}
        self.last_error: str | None = None
        #: how often the runner restored its partitions after a failure
        self.restarts = 0
        self.records_in = 0
        #: partition -> records not yet read (high watermark - position), for the metrics;
        #: replaced whole about once a second by the consumer thread, so any thread may read it
        self.lag: dict[int, int] = {}
        processor.wait_for_sink = self.wait_for_sink

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_guarded, name=self.processor.name)
        self._thread.start()
        # If the host exits without stopping us (faust, given SIGTERM while it is still
        # starting, skips its services' on_stop), the interpreter would wait forever for
        # this non-daemon thread: ask it to stop before threads are joined at exit.
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            with contextlib.suppress(RuntimeError):  # already shutting down
                register(self._stop.set)

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
            log.exception("%s stopped", self.processor.name)

    def run(self) -> None:
        from confluent_kafka import Consumer, Producer

        s = self.settings
        self.producer = Producer(
            pin_partitioner(
                self._client_config(
                    **{
                        "enable.idempotence": True,
                        "acks": "all",
                        "linger.ms": 5,
                        "queue.buffering.max.messages": 1_000_000,
                        "delivery.report.only.error": True,
                        **self._producer_config,
                    }
                )
            )
        )
        self.consumer = Consumer(
            self._client_config(
                **{
                    "group.id": s.group_id,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                    # a member that died (kill -9) holds its partitions until its session
                    # times out: 10 s instead of librdkafka's 45 s, so a restarted or other
                    # worker takes over sooner (heartbeats come from librdkafka's own thread)
                    "session.timeout.ms": 10_000,
                    "heartbeat.interval.ms": 3_000,
                    **s.consumer_config,
                }
            )
        )
        sink = threading.Thread(target=self._sink_loop, name=f"{self.processor.name}-sink")
        sink.daemon = True
        sink.start()
        self.consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not self._stop.is_set():
                self._step()
            self._submit(self.processor.drain(sorted(self._assigned)))
            self.wait_for_sink()
            self._commit_noted(asynchronous=False)
        finally:
            self._queue.put(_STOP)
            sink.join(30)
            with contextlib.suppress(Exception):
                self.consumer.close()
            self.producer.flush(10)
            with contextlib.suppress(Exception):
                self.processor.close()

    # ------------------------------------------------------------------ rebalancing

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        ps = sorted(tp.partition for tp in partitions)
        log.info("%s: partitions assigned partitions=%s", self.processor.name, ps)
        self._assigned.update(ps)
        now = time.monotonic()
        for p in ps:
            self._progress_at[p] = now
        offsets = self._load(ps)
        for tp in partitions:
            if tp.partition in offsets:
                off = offsets[tp.partition]
                if off is not None:
                    tp.offset = off
        consumer.assign(partitions)
        if self._to_load:  # partitions that could not be restored wait until they are
            consumer.pause([self._tp(p) for p in self._to_load])

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        ps = sorted(tp.partition for tp in partitions)
        log.info("%s: partitions revoked partitions=%s", self.processor.name, ps)
        live = [p for p in ps if p not in self._to_load]
        if self._sink_failure is None:
            self._submit(self.processor.drain(live))
            self.wait_for_sink()
        if self._sink_failure is not None:
            log.warning(
                "%s: could not finish work on revoke partitions=%s", self.processor.name, ps
            )
        self._commit_noted(asynchronous=False)
        self.processor.revoke(ps)
        self._assigned.difference_update(ps)
        self._to_load.difference_update(ps)
        for p in ps:
            self._done.pop(p, None)
        consumer.unassign()

    def _tp(self, partition: int, offset: int | None = None) -> Any:
        from confluent_kafka import TopicPartition

        if offset is None:
            return TopicPartition(self.topic, partition)
        return TopicPartition(self.topic, partition, offset)

    def _load(self, partitions: list[int]) -> dict[int, int | None]:
        """Restore partitions through the processor; those that fail stay in `_to_load`."""
        try:
            assigned = self.processor.assign(partitions)
        except self.processor.fatal:
            raise
        except Exception as e:
            self.last_error = f"restore failed: {type(e).__name__}: {e}"
            log.warning("%s: %s partitions=%s", self.processor.name, self.last_error, partitions)
            with contextlib.suppress(Exception):
                self.processor.revoke(partitions)
            self._to_load.update(partitions)
            return {}
        self._to_load.difference_update(partitions)
        self._submit(assigned.works)
        return assigned.offsets

    def _restore(self) -> None:
        """Restore what is waiting, with exponential backoff and jitter between attempts,
        serving the consumer group meanwhile; returns when done or stopping."""

        def attempt() -> None:
            pending = sorted(self._to_load)
            if not pending:
                return
            offsets = self._load(pending)
            try:
                for p, off in offsets.items():
                    # the consumer's position has moved past what failed: always seek, to the
                    # group's committed offset when the processor keeps no position of its own
                    at = self._committed(p) if off is COMMITTED else off
                    self.consumer.seek(self._tp(p, at))
                    self.consumer.resume([self._tp(p)])
            except Exception as e:  # e.g. the committed offset is not readable: all again
                self.last_error = f"seek failed: {type(e).__name__}: {e}"
                with contextlib.suppress(Exception):
                    self.consumer.pause([self._tp(p) for p in offsets])
                    self.processor.revoke(list(offsets))
                self._to_load.update(offsets)
                raise WakelineError(self.last_error) from e
            if self._to_load:
                raise WakelineError(self.last_error or "restore failed")

        def before_sleep(state: RetryCallState) -> None:
            log.warning(
                "%s: restore attempt %d failed, retrying in %.1f s: %s",
                self.processor.name, state.attempt_number, state.upcoming_sleep, self.last_error,
            )  # fmt: skip

        retrying = Retrying(
            wait=wait_exponential_jitter(  # jitter is absolute in tenacity: scale it too
                multiplier=self.settings.backoff_initial_s,
                jitter=self.settings.backoff_initial_s,
                max=self.settings.backoff_max_s,
            ),
            retry=retry_if_exception(lambda e: not self._stop.is_set()),
            stop=lambda state: self._stop.is_set(),
            sleep=self._serve_group,
            before_sleep=before_sleep,
            reraise=True,
        )
        with contextlib.suppress(WakelineError):
            retrying(attempt)

    def _committed(self, partition: int) -> int:
        """The group's committed offset of `partition` (from the start when there is none)."""
        (tp,) = self.consumer.committed([self._tp(partition)], timeout=10)
        return tp.offset if tp.offset >= 0 else FROM_BEGINNING

    def _serve_group(self, seconds: float) -> None:
        """Wait while polling the consumer (its partitions paused), so the group keeps us."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.consumer.consume(1, min(0.2, max(0.0, deadline - time.monotonic())))
            self._check_stalls()

    # ------------------------------------------------------------------ the loop

    def _step(self) -> None:
        from confluent_kafka import KafkaError

        if self._sink_failure is not None:
            self._recover(self._sink_failure)
        if self._to_load:
            self._restore()
        msgs = self.consumer.consume(self.settings.batch_size, self.settings.poll_timeout_s)
        records = []
        for m in msgs:
            err = m.error()
            if err is None:
                records.append(record_of_message(m))
            elif err.code() != KafkaError._PARTITION_EOF:
                if err.fatal():
                    raise WakelineError(f"consumer failed: {err}")
                log.warning("%s: consumer error: %s", self.processor.name, err)
        now = time.monotonic()
        try:
            works = self.processor.handle(records, now) if records else []
        except self.processor.fatal:
            raise
        except Exception as e:  # e.g. the store is away: restore, and read these again
            self._sink_failure = e
            return
        self.records_in += len(records)
        self._submit(works + self.processor.due(now))
        self._commit_noted()
        self._check_stalls()

    def _recover(self, failure: BaseException) -> None:
        """Drop everything not done, restore every partition from the store, seek there."""
        if isinstance(failure, self.processor.fatal):
            raise failure
        self.restarts += 1
        self.last_error = f"{type(failure).__name__}: {failure}"
        log.warning(
            "%s: sink failed, restoring partitions=%s: %s",
            self.processor.name, sorted(self._assigned), self.last_error,
        )  # fmt: skip
        self.wait_for_sink()  # the sink drops what is queued while a failure stands
        self.processor.revoke(sorted(self._assigned))
        self._to_load.update(self._assigned)
        self.consumer.pause([self._tp(p) for p in self._assigned])
        with self._commit_lock:
            self._to_commit.clear()
        self._sink_failure = None

    def _submit(self, works: list[Any]) -> None:
        for w in works:
            self._queue.put(w)

    def wait_for_sink(self) -> None:
        """Wait until everything submitted is done (or dropped after a failure)."""
        self._queue.join()

    # ------------------------------------------------------------------ the sink thread

    def _sink_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._queue.task_done()
                return
            batch = [item]
            stop_after = False
            with contextlib.suppress(queue.Empty):
                while len(batch) < self.settings.sink_batch:
                    nxt = self._queue.get_nowait()
                    if nxt is _STOP:
                        stop_after = True
                        self._queue.task_done()
                        break
                    batch.append(nxt)
            try:
                if self._sink_failure is None:
                    self._sink(batch)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer thread
                log.warning("%s: sink failed, will restore: %s", self.processor.name, e)
                self._sink_failure = e
                with contextlib.suppress(Exception):
                    self.processor.reset()
            finally:
                for _ in batch:
                    self._queue.task_done()
            if stop_after:
                return

    def _sink(self, works: list[Any]) -> None:
        applied = self.processor.apply(works)
        # outputs may be generators: made while they are produced, never all held at once
        refused = deliver(self.producer, chain.from_iterable(a.outputs for a in applied))
        extra = self.processor.delivered(applied, refused)
        if extra:
            still = deliver(self.producer, extra)
            if still:
                raise PublishError(f"replacement record refused too: {still[0][1]}")
        offsets: dict[int, int] = {}
        for a in applied:
            offsets.update(a.commit)
        if offsets:
            now = time.monotonic()
            with self._commit_lock:
                self._to_commit.update(offsets)
                self._done.update(offsets)
                for p in offsets:
                    self._progress_at[p] = now

    def _commit_noted(self, *, asynchronous: bool = True) -> None:
        """Commit the offsets the sink finished (the consumer thread alone drives the
        consumer: confluent-kafka's consumer must not be used from two threads at once)."""
        with self._commit_lock:
            offsets, self._to_commit = self._to_commit, {}
        offsets = {p: o for p, o in offsets.items() if p in self._assigned}
        if not offsets:
            return
        try:
            self.consumer.commit(
                offsets=[self._tp(p, o) for p, o in offsets.items()], asynchronous=asynchronous
            )
        except Exception as e:
            log.debug("%s: offset commit failed: %s", self.processor.name, e)

    # ------------------------------------------------------------------ stalls

    def _check_stalls(self) -> None:
        now = time.monotonic()
        if now - self._stall_checked_at < 1.0:
            return
        self._stall_checked_at = now
        limit = self.settings.stall_after_s
        lag: dict[int, int] = {}
        for p in sorted(self._assigned):
            since = self._progress_at.setdefault(p, now)
            try:
                position = self.consumer.position([self._tp(p)])[0].offset
                _, high = self.consumer.get_watermark_offsets(self._tp(p), cached=True)
            except Exception:  # no fetch response yet: nothing known to be waiting
                position, high = -1, -1
            if position >= 0 and high >= 0:
                lag[p] = max(high - position, 0)
            done = self._done.get(p)
            unfinished = done is not None and done < position  # read, not yet through the sink
            waiting = p in self._to_load or high > max(position, 0) or unfinished
            if not waiting:
                self._progress_at[p] = now
                if self.stalled.pop(p, None) is not None:
                    log.warning(
                        "%s: partition no longer stalled partition=%d", self.processor.name, p
                    )
                continue
            idle = now - since
            if idle < limit:
                continue
            before = self.stalled.get(p)
            self.stalled[p] = (idle, position, high, self.last_error)
            if before is None or int(idle // limit) != int(before[0] // limit):
                log.error(
                    "%s: partition stalled partition=%d no_progress_s=%.0f position=%d "
                    "high_watermark=%d last_error=%s",
                    self.processor.name, p, idle, position, high, self.last_error,
                )  # fmt: skip
        for p in [p for p in self.stalled if p not in self._assigned]:
            del self.stalled[p]  # revoked: no longer ours to report
        self.lag = lag

    def samples(self) -> list[Sample]:
        """What this runner counts, as metric samples (read on a scrape, from any thread)."""
        name = self.processor.name
        stalled = dict(self.stalled)
        out = [
            Sample(RECORDS_READ, (name,), self.records_in),
            Sample(RUNNER_RESTARTS, (name,), self.restarts),
            Sample(STALLED_PARTITIONS, (name,), len(stalled)),
        ]
        out += [Sample(LAG, (name, self.topic, str(p)), n) for p, n in sorted(self.lag.items())]
        out += [Sample(STALLED_SECONDS, (name, str(p)), s[0]) for p, s in sorted(stalled.items())]
        return out


# -- restoring windowed state ------------------------------------------------------------------


class FrameTypes:
    """The event type of a record's value by its writer schema's fingerprint, learnt once per
    fingerprint, for processors that read a few types of a busy topic: `types(value)` is the
    type when it is one of `wanted`, else "" (another type, not a frame, or a schema nobody
    knows: the audit publisher dead-letters those). Decodes nothing but the first frame of a
    schema missing from the codec (`decode`, for its type)."""

    def __init__(self, wanted: Iterable[str], decode: Callable[[bytes], Any] | None = None):
        from wakeline.schemas import default_codec

        self.wanted = frozenset(wanted)
        self._decode = decode or default_codec().decode
        self._kinds: dict[bytes, str] = {}

    def __call__(self, value: bytes | None) -> str:
        from wakeline.schemas import HEADER_SIZE, MAGIC

        if value is None or len(value) <= HEADER_SIZE or value[:2] != MAGIC:
            return ""
        kind = self._kinds.get(value[2:HEADER_SIZE])
        return self._learn(value) if kind is None else kind

    def _learn(self, value: bytes) -> str:
        from wakeline.schemas import HEADER_SIZE, default_codec

        fp = bytes(value[2:HEADER_SIZE])
        info = default_codec().writer_schemas().get(fp)
        if info is None:
            try:
                name = self._decode(value)["type"]
            except Exception:  # noqa: BLE001 - unknown schema or garbage: not ours to judge
                return ""
        else:
            name = info.type_name
        kind = name if name in self.wanted else ""
        self._kinds[fp] = kind
        return kind


class Rewind:
    """Per partition, (where to start reading, the first offset to act on): one window
    before the last committed record (before now for a new group), and the group's
    committed offset. A consumer of its own (never subscribed) asks the broker, so it works
    from inside the runner's rebalance callback."""

    def __init__(
        self,
        client_config: Callable[..., dict[str, Any]],
        group_id: str,
        topic: str,
        window_s: float,
    ) -> None:
        self._config = client_config
        self.group_id = group_id
        self.topic = topic
        self.window_s = window_s
        self._consumer: Any = None

    def __call__(self, partitions: list[int]) -> dict[int, tuple[int, int]]:
        from confluent_kafka import Consumer, TopicPartition

        if self._consumer is None:
            self._consumer = Consumer(
                self._config(**{"group.id": self.group_id, "enable.auto.commit": False})
            )
        c = self._consumer
        committed = c.committed([TopicPartition(self.topic, p) for p in partitions], timeout=10)
        # the ends first: a record produced while offsets_for_times runs is at or after them,
        # so "nothing that recent" starts where it will still be read, never past it
        ends = {
            p: c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
            for p in partitions
        }
        now_ms = int(time.time() * 1000)
        wanted = []
        for tp in committed:
            # one window before the committed position, not before now: a group that lags
            # (a backlog) needs the window its next records belong to
            at = self._time_at(tp.partition, tp.offset - 1) if tp.offset > 0 else None
            since = min(now_ms, at if at is not None else now_ms) - int(self.window_s * 1000)
            wanted.append(TopicPartition(self.topic, tp.partition, max(since, 0)))
        found = c.offsets_for_times(wanted, timeout=10)
        out = {}
        for tp_c, tp_t in zip(committed, found, strict=True):
            p = tp_c.partition
            start = tp_t.offset
            if start < 0:  # nothing that recent: start at the end (as it was before the search)
                start = ends[p]
            live = tp_c.offset if tp_c.offset >= 0 else start
            out[p] = (min(start, live), live)
        return out

    def _time_at(self, partition: int, offset: int) -> int | None:
        """The broker timestamp (ms) of the record at `offset`, None if it cannot be read."""
        from confluent_kafka import TopicPartition

        c = self._consumer
        c.assign([TopicPartition(self.topic, partition, offset)])
        try:
            for m in c.consume(1, 5):
                if m.error() is None:
                    return int(m.timestamp()[1])
            return None
        finally:
            c.unassign()

    def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                self._consumer.close()
            self._consumer = None


# -- the in-memory runner ----------------------------------------------------------------------


class MemoryRunner:
    """Drives a processor the way KafkaRunner does, with records handed in and outputs
    collected, for unit tests. `refuse(output) -> reason | None` plays a broker refusing."""

    def __init__(
        self,
        processor: Processor,
        partitions: Sequence[int] = (0,),
        *,
        refuse: Callable[[Output], str | None] | None = None,
    ) -> None:
        self.processor = processor
        self.refuse = refuse
        self.outputs: list[Output] = []
        self.committed: dict[int, int] = {}
        processor.wait_for_sink = lambda: None
        self.partitions = list(partitions)
        self.starts = self._run(lambda: [], assign=self.partitions)

    def _run(self, works: Callable[[], list[Any]], assign: list[int] | None = None) -> Any:
        offsets = None
        todo = []
        if assign is not None:
            a = self.processor.assign(assign)
            offsets, todo = a.offsets, list(a.works)
        todo += works()
        if todo:
            self._sink(todo)
        return offsets

    def feed(self, records: Sequence[LedgerRecord], now: float | None = None) -> list[Output]:
        now = time.monotonic() if now is None else now
        before = len(self.outputs)
        self._run(lambda: self.processor.handle(list(records), now) + self.processor.due(now))
        return self.outputs[before:]

    def tick(self, now: float) -> list[Output]:
        before = len(self.outputs)
        self._run(lambda: self.processor.due(now))
        return self.outputs[before:]

    def drain(self) -> list[Output]:
        before = len(self.outputs)
        self._run(lambda: self.processor.drain(self.partitions))
        return self.outputs[before:]

    def _sink(self, works: list[Any]) -> None:
        applied = self.processor.apply(works)
        refused = []
        for o in chain.from_iterable(a.outputs for a in applied):
            why = self.refuse(o) if self.refuse else None
            if why is None:
                self.outputs.append(o)
            else:
                refused.append((o, why))
        for o in self.processor.delivered(applied, refused):
            if self.refuse and self.refuse(o):
                raise PublishError(f"replacement record refused too: {o.topic}")
            self.outputs.append(o)
        for a in applied:
            self.committed.update(a.commit)
