"""`ledger-verify --from-kafka`: the ledger as Kafka holds it (docs/ledger-format.md §6).

Segment headers come from `<prefix>ledger` (value = the 166 header bytes); the leaves are
rebuilt by replaying `<prefix>events` partition by partition, each record turned into a
LedgerRecord exactly as the broker returns it. Checkpoints are not on Kafka: they are read
from PostgreSQL when it can be reached. Kafka access lives here because wakeline.ledger
never imports a Kafka client.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from wakeline.errors import StackError, WakelineError
from wakeline.infra.settings import KafkaSettings
from wakeline.ledger.records import record_of_message
from wakeline.ledger.segments import HEADER_SIZE
from wakeline.ledger.verify import INCOMPLETE, TAMPERED, LedgerVerifier, Progress, VerifyReport

log = logging.getLogger(__name__)

_BATCH = 5000


def _consumer(settings: KafkaSettings) -> Any:
    from confluent_kafka import Consumer

    return Consumer(
        settings.client_config(
            **{
                "group.id": f"wakeline-verify-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
            }
        )
    )


def _partitions(consumer: Any, topic: str, timeout: float) -> list[int]:
    md = consumer.list_topics(topic, timeout=timeout)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        raise StackError(f"topic {topic} is not readable: {t.error if t else 'missing'}")
    return sorted(t.partitions)


def _read(
    consumer: Any, topic: str, partition: int, start: int, stop: int, timeout: float
) -> Iterator[Any]:
    """Messages of one partition with start <= offset < stop (stop = high watermark)."""
    from confluent_kafka import TopicPartition

    if start >= stop:
        return
    consumer.assign([TopicPartition(topic, partition, start)])
    next_offset = start
    try:
        while True:
            # consume(n) waits until it has n messages or the timeout passes: never ask for
            # more than are left, or every partition's tail costs a whole timeout
            msgs = consumer.consume(min(_BATCH, stop - next_offset), timeout=timeout)
            if not msgs:
                raise StackError(f"{topic}[{partition}] stopped before offset {stop}")
            for m in msgs:
                if m.error() is not None:
                    raise StackError(f"{topic}[{partition}]: {m.error()}")
                if m.offset() >= stop:
                    return
                yield m
                next_offset = m.offset() + 1
                if next_offset >= stop:
                    return
    finally:
        consumer.unassign()


def _first(consumer: Any, topic: str, partition: int, start: int, stop: int, timeout: float) -> Any:
    """The first message with start <= offset < stop, or None."""
    messages = _read(consumer, topic, partition, start, stop, timeout)
    try:
        return next(messages, None)
    finally:
        messages.close()


def read_headers(settings: KafkaSettings, *, timeout: float = 10) -> dict[int, list[bytes]]:
    """Every header on the ledger topic, by the events partition it names, deduplicated
    (identical republished copies), in segment-number order."""
    topic = settings.topics.ledger
    consumer = _consumer(settings)
    by_part: dict[int, dict[bytes, None]] = {}
    try:
        for lp in _partitions(consumer, topic, timeout):
            low, high = consumer.get_watermark_offsets(_tp(topic, lp), timeout=timeout)
            for m in _read(consumer, topic, lp, low, high, timeout):
                raw = m.value() or b""
                p = int.from_bytes(raw[2:6], "big") if len(raw) == HEADER_SIZE else -1
                by_part.setdefault(p, {})[raw] = None
    finally:
        consumer.close()
    return {
        p: sorted(raws, key=lambda r: int.from_bytes(r[6:14], "big")) for p, raws in by_part.items()
    }


def _tp(topic: str, partition: int) -> Any:
    from confluent_kafka import TopicPartition

    return TopicPartition(topic, partition)


DEFAULT_STALE_AFTER_S = 60.0


def _timestamp(m: Any) -> int | None:
    kind, ts = m.timestamp()
    return None if kind == 0 else ts  # 0: TIMESTAMP_NOT_AVAILABLE


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Tail:
    """Records of an events partition after its last ledgered offset."""

    partition: int
    first_offset: int
    #: high watermark - first offset (transaction markers count too: an upper bound)
    count: int
    #: broker timestamp of the first of them (None when the broker gave none)
    timestamp_ms: int | None

    def age_s(self, now_ms: int | None = None) -> float | None:
        if self.timestamp_ms is None:
            return None
        return ((now_ms if now_ms is not None else _now_ms()) - self.timestamp_ms) / 1000


def unledgered_tails(
    settings: KafkaSettings, last_offsets: dict[int, int], *, timeout: float = 5
) -> list[Tail]:
    """Per events partition, the records after its last ledgered offset (`last_offsets`;
    a partition absent from it has none). Raises when the broker cannot be read."""
    topic = settings.topics.events
    consumer = _consumer(settings)
    try:
        out = []
        for p in _partitions(consumer, topic, timeout):
            low, high = consumer.get_watermark_offsets(_tp(topic, p), timeout=timeout)
            start = max(low, last_offsets.get(p, -1) + 1)
            if start >= high:
                continue
            first = _first(consumer, topic, p, start, high, timeout)
            if first is not None:
                out.append(Tail(p, first.offset(), high - first.offset(), _timestamp(first)))
        return out
    finally:
        consumer.close()


def check_tail(
    v: LedgerVerifier,
    settings: KafkaSettings,
    last_offsets: dict[int, int],
    *,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    timeout: float = 5,
) -> None:
    """Report, per events partition, the records after its last ledgered offset:
    `tail.stale` (incomplete) when the first is older than `stale_after_s`, else
    `tail.behind` (a warning). When the broker cannot be read, a `tail.unchecked` warning
    says so."""
    try:
        tails = unledgered_tails(settings, last_offsets, timeout=timeout)
    except Exception as e:  # KafkaException, StackError, a bad client configuration
        v.tail_unchecked(f"{settings.topics.events} is not readable: {e}")
        return
    for t in tails:
        v.add_tail(
            t.partition, t.first_offset, t.count, t.timestamp_ms,
            now_ms=_now_ms(), stale_after_ms=int(stale_after_s * 1000),
        )  # fmt: skip


def verify_from_kafka(
    settings: KafkaSettings,
    *,
    trusted_keys: Sequence[str] | None = None,
    public_keys: Sequence[str] = (),
    decode: object = True,
    dsn: str | None = None,
    progress: Progress | None = None,
    timeout: float = 10,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
) -> VerifyReport:
    """Replay the events topic against the headers on the ledger topic, then check the
    checkpoints PostgreSQL holds (when reachable) against what was rebuilt. Records after
    a partition's last segment are its unledgered tail (see `check_tail`)."""
    from wakeline.ledger.segments import SegmentHeader

    headers = read_headers(settings, timeout=timeout)
    notes, db_note = _checkpoints(dsn)
    v = LedgerVerifier(trusted_keys=trusted_keys, decode=decode, progress=progress)  # type: ignore[arg-type]
    origin, suite = "wakeline/ledger", "blake3"
    if notes:
        from wakeline.ledger.checkpoints import parse_body, split_note

        try:
            cp = parse_body(split_note(notes[-1])[0])
            origin, suite = cp.origin, cp.suite
        except WakelineError:
            pass
    for raws in headers.values():
        try:
            suite = SegmentHeader.from_bytes(raws[0]).suite.name
            break
        except WakelineError:
            continue
    v.begin(origin, suite)
    for k in public_keys:
        v.add_key(k)
    if db_note:
        v.report.warnings.append(db_note)
    for bad in headers.pop(-1, []):
        v.fail(TAMPERED, "segment.format", f"ledger topic holds a {len(bad)}-byte header")
    topic = settings.topics.events
    consumer = _consumer(settings)
    tails: list[tuple[int, int, int, int | None]] = []
    try:
        for p in _partitions(consumer, topic, timeout):
            low, high = consumer.get_watermark_offsets(_tp(topic, p), timeout=timeout)
            raws = headers.get(p, [])
            if not raws:
                first = _first(consumer, topic, p, low, high, timeout)
                if first is not None:
                    tails.append((p, first.offset(), high - first.offset(), _timestamp(first)))
                continue
            tail = _replay(v, consumer, topic, p, raws, low, high, timeout)
            if tail is not None:
                tails.append((p, tail.offset(), high - tail.offset(), _timestamp(tail)))
    finally:
        consumer.close()
    for note in notes:
        v.add_checkpoint(note)
    now, stale_ms = _now_ms(), int(stale_after_s * 1000)
    for p, first_offset, count, ts in tails:
        v.add_tail(p, first_offset, count, ts, now_ms=now, stale_after_ms=stale_ms)
    return v.finish()  # no checkpoint at all is reported as checkpoint.missing


def _replay(
    v: LedgerVerifier,
    consumer: Any,
    topic: str,
    p: int,
    raws: list[bytes],
    low: int,
    high: int,
    timeout: float,
) -> Any:
    """Feed one partition's segments; return the first record after the last segment (the
    start of the unledgered tail), or None."""
    from wakeline.ledger.segments import SegmentHeader

    spans = []
    for raw in raws:
        try:
            h = SegmentHeader.from_bytes(raw)
            spans.append((raw, h.first_offset, h.last_offset))
        except WakelineError:
            spans.append((raw, None, None))
    first = next((s[1] for s in spans if s[1] is not None), low)
    if low > first:
        v.fail(INCOMPLETE, "kafka.retention", "events the ledger commits to are no longer on "
               "the topic", partition=p, expected=first, found=low)  # fmt: skip
    messages = _read(consumer, topic, p, max(low, first), high, timeout)
    pending = next(messages, None)
    for raw, lo, hi in spans:
        leaves: list[bytes] = []
        if lo is not None and hi is not None:
            while pending is not None and pending.offset() <= hi:
                if pending.offset() < lo:
                    v.fail(TAMPERED, "kafka.unledgered", "an event on the topic is in no segment",
                           partition=p, offset=pending.offset())  # fmt: skip
                else:
                    leaves.append(record_of_message(pending).leaf_bytes())
                pending = next(messages, None)
        v.add_segment(raw, leaves, None)
    messages.close()
    return pending


def _checkpoints(dsn: str | None) -> tuple[list[bytes], str | None]:
    """(checkpoint notes from PostgreSQL, a warning when they cannot be read)."""
    try:
        from wakeline.infra.settings import DatabaseSettings
        from wakeline.ledger.store_postgres import PostgresLedgerStore

        with PostgresLedgerStore(dsn or DatabaseSettings.from_env().dsn, connect_timeout=5) as s:
            return list(s.checkpoints()), None
    except WakelineError as e:
        return [], f"checkpoints unavailable (PostgreSQL: {e}); nothing could be authenticated"
