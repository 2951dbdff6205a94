"""Following the audit and alerts topics: what `wakeline tail` and `wakeline alerts` print.

Alerts are read from the `<prefix>alerts` topic: every Alert (the SDK's loop guard's and the
worker's detectors') is produced there and, keyed by its workflow, on `<prefix>events`,
where the ledger records it. The topic needs only Kafka and holds alerts alone (a few per
incident), so listing them is a bounded read; the ledgered copy is the tamper-evident one
(`wakeline ledger verify`). Retention of the topic bounds how far back `alerts list` sees.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from wakeline.errors import SchemaError, StackError
from wakeline.infra.schema_registry import learn_schemas, load_schemas_from_kafka
from wakeline.infra.settings import KafkaSettings
from wakeline.schemas import UnknownFingerprint, decode_event

from .audit import decode_audit


def follow_audit(
    kafka: KafkaSettings,
    *,
    from_beginning: bool = False,
    workflow: str | None = None,
    agent: str | None = None,
    limit: int | None = None,
    idle_timeout: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Audit records as they arrive, filtered; stops after `limit` matches or when nothing
    arrived for `idle_timeout` seconds (None: follow forever)."""

    def audit(value: bytes) -> dict[str, Any]:
        try:
            return decode_audit(value)
        except SchemaError as e:
            return {"summary": f"(unreadable audit record: {e})"}

    return _follow(
        kafka, kafka.topics.audit, audit, from_beginning, workflow, agent, limit, idle_timeout
    )


def follow_alerts(
    kafka: KafkaSettings,
    *,
    from_beginning: bool = False,
    workflow: str | None = None,
    agent: str | None = None,
    limit: int | None = None,
    idle_timeout: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Alert events of the alerts topic as they arrive, filtered like `follow_audit`."""
    return _follow(
        kafka,
        kafka.topics.alerts,
        alert_decoder(kafka),
        from_beginning,
        workflow,
        agent,
        limit,
        idle_timeout,
    )


def _consumer(kafka: KafkaSettings, topic: str) -> tuple[Consumer, list[int]]:
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": f"wakeline-tail-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
    )
    deadline = time.monotonic() + 10
    while True:  # a topic just created may take a moment to have leaders
        try:
            info = consumer.list_topics(topic, timeout=10).topics.get(topic)
        except Exception:
            consumer.close()
            raise
        if info is not None and info.error is None and info.partitions:
            return consumer, sorted(info.partitions)
        if time.monotonic() > deadline:
            consumer.close()
            why = info.error if info is not None and info.error is not None else "not found"
            raise StackError(f"topic {topic} at {kafka.bootstrap}: {why} (run `wakeline init`)")
        time.sleep(0.2)


def _follow(
    kafka: KafkaSettings,
    topic: str,
    decode: Callable[[bytes], dict[str, Any]],
    from_beginning: bool,
    workflow: str | None,
    agent: str | None,
    limit: int | None,
    idle_timeout: float | None,
) -> Iterator[dict[str, Any]]:
    consumer, partitions = _consumer(kafka, topic)
    try:
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in partitions])
        seen = 0
        last = time.monotonic()
        while limit is None or seen < limit:
            msgs = consumer.consume(500, 0.5)
            if msgs:
                last = time.monotonic()
            elif idle_timeout is not None and time.monotonic() - last >= idle_timeout:
                return
            for m in msgs:
                if m.error() is not None:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        raise StackError(f"reading {topic}: {m.error()}")
                    continue
                rec = decode(m.value())
                if workflow is not None and rec.get("workflow_id") != workflow:
                    continue
                if agent is not None and rec.get("agent_id") != agent:
                    continue
                seen += 1
                yield rec
                if limit is not None and seen >= limit:
                    return
    finally:
        consumer.close()


# -- alerts ------------------------------------------------------------------------------
def alert_decoder(kafka: KafkaSettings) -> Callable[[bytes], dict[str, Any]]:
    """Value bytes -> the Alert event; a writer schema this process lacks is looked up once
    on the schemas topic; a record that still does not decode becomes an entry saying why."""
    learned = False

    def decode(value: bytes | None) -> dict[str, Any]:
        nonlocal learned
        try:
            try:
                return decode_event(value or b"")
            except UnknownFingerprint:
                if learned:
                    raise
                learned = True
                learn_schemas(load_schemas_from_kafka(kafka, timeout=10))
                return decode_event(value or b"")
        except SchemaError as e:
            return {"type": "Alert", "event_id": None, "detail": f"(unreadable alert: {e})"}

    return decode


def read_alerts(
    kafka: KafkaSettings,
    *,
    workflow: str | None = None,
    limit: int | None = None,
    alert_id: str | None = None,
    timeout: float = 30.0,
) -> list[dict[str, Any]]:
    """The alerts on the topic now (read up to the end offsets it had when asked), oldest
    first: of `workflow` only, the last `limit` of them, or only the one `alert_id`."""
    topic = kafka.topics.alerts
    consumer, partitions = _consumer(kafka, topic)
    decode = alert_decoder(kafka)
    found: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        ends: dict[int, int] = {}
        assign = []
        for p in partitions:
            low, high = _watermarks(consumer, TopicPartition(topic, p), deadline)
            if high > low:
                ends[p] = high
                assign.append(TopicPartition(topic, p, low))
        consumer.assign(assign)
        key = None if workflow is None else workflow.encode()
        while ends:
            if time.monotonic() > deadline:
                raise StackError(f"reading {topic}: not at its end after {timeout:g}s")
            for m in consumer.consume(500, 0.5):
                if m.error() is not None:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        raise StackError(f"reading {topic}: {m.error()}")
                    continue
                p, offset = m.partition(), m.offset()
                if p not in ends or offset >= ends[p]:
                    continue
                if key is not None and m.key() != key:  # keyed by workflow: no decoding
                    continue
                event = decode(m.value())
                if alert_id is not None and event.get("event_id") != alert_id:
                    continue
                if workflow is not None and event.get("workflow_id") != workflow:
                    continue
                event["partition"], event["offset"] = p, offset
                found.append(event)
            # by position, not the last record seen: a transaction's marker may end a partition
            for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
                if tp.offset >= ends[tp.partition]:
                    del ends[tp.partition]
    finally:
        consumer.close()
    found.sort(key=lambda e: (e.get("time") or 0, e.get("event_id") or ""))
    return found[-limit:] if limit else found


#: what a partition of a topic just created answers until its leader is elected; librdkafka
#: does not flag these retriable on `get_watermark_offsets` (docs/decisions.md)
_LEADERLESS = frozenset(
    (
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    )
)


def _watermarks(consumer: Consumer, tp: TopicPartition, deadline: float) -> tuple[int, int]:
    """(low, high) offsets of a partition; retried while the broker is electing its leader
    (a topic just created), until `deadline`."""
    while True:
        try:
            return consumer.get_watermark_offsets(tp, timeout=10)
        except KafkaException as e:
            error = e.args[0]
            transient = error.retriable() or error.code() in _LEADERLESS
            if not transient or time.monotonic() > deadline:
                raise StackError(f"reading {tp.topic}[{tp.partition}]: {e.args[0]}") from e
            time.sleep(0.2)


def format_alert(event: dict[str, Any]) -> str:
    """`2026-11-28 07:39:24.123  wf-42  warning  repeat  billing-bot called ...`"""
    when = _when({"event_time": event.get("time")})
    rule = event.get("detector") or event.get("kind") or "?"
    return (
        f"{when}  {event.get('workflow_id') or '-'}  {event.get('severity') or '?'}  {rule}  "
        f"{event.get('detail', '')}  ({event.get('event_id') or 'no id'})"
    )


def describe_alert(event: dict[str, Any]) -> str:
    """Every field of one alert, for `wakeline alerts show`."""
    lines = [
        f"alert {event.get('event_id')} ({event.get('kind')}, {event.get('severity')})",
        f"rule:      {event.get('detector') or '-'}",
        f"when:      {_when({'event_time': event.get('time')})} UTC",
        f"workflow:  {event.get('workflow_id')}  run {event.get('run_id')}",
        f"agent:     {event.get('agent_id')}  (principal {event.get('principal')})",
        f"source:    {event.get('source')}",
    ]
    if event.get("resource"):
        lines.append(f"resource:  {event['resource']}")
    lines.append(f"detail:    {event.get('detail')}")
    related = event.get("related_event_ids") or []
    lines.append(f"evidence:  {len(related)} event(s)")
    lines.extend(f"  {e}" for e in related)
    attributes = event.get("attributes") or {}
    if attributes:
        lines.append("attributes:")
        lines.extend(f"  {k} = {v}" for k, v in sorted(attributes.items()))
    if "partition" in event:
        lines.append(f"on the alerts topic at partition {event['partition']}, "
                     f"offset {event['offset']}")  # fmt: skip
    return "\n".join(lines)


def _when(rec: dict[str, Any]) -> str:
    us = rec.get("event_time") or rec.get("ledgered_at")
    if not us:
        return "-" * 23
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def format_line(rec: dict[str, Any]) -> str:
    """`2026-11-28 07:39:24.123  wf-42  p3#1187  agent billing-bot called ...: ok`"""
    where = f"p{rec.get('partition', '?')}#{rec.get('leaf_index', '?')}"
    by = f"  [{rec['principal']}]" if rec.get("principal") else ""
    return f"{_when(rec)}  {rec.get('workflow_id') or '-'}  {where}  {rec['summary']}{by}"


def to_json(rec: dict[str, Any]) -> dict[str, Any]:
    """The record with bytes as base64 (the event frame) or hex (hashes)."""

    def conv(key: str, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: conv(k, v) for k, v in value.items()}
        if isinstance(value, bytes):
            return value.hex() if key.endswith("hash") else base64.b64encode(value).decode()
        return value

    return {k: conv(k, v) for k, v in rec.items()}
