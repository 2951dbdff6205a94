"""Following the audit topic: what `wakeline tail` prints."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

from wakeline.errors import SchemaError, StackError
from wakeline.infra.settings import KafkaSettings

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
    topic = kafka.topics.audit
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": f"wakeline-tail-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        info = meta.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise StackError(f"audit topic {topic} not found at {kafka.bootstrap}")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in sorted(info.partitions)])
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
                try:
                    rec = decode_audit(m.value())
                except SchemaError as e:
                    rec = {"summary": f"(unreadable audit record: {e})"}
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
