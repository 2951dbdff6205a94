"""The ledger builder against the real broker and database."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import fastavro
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from wakeline.infra import topics
from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.ledger.hashing import BLAKE3
from wakeline.ledger.merkle import root_of
from wakeline.ledger.records import LedgerRecord, leaf_bytes
from wakeline.ledger.segments import SegmentHeader
from wakeline.ledger.store import LedgerStore
from wakeline.processors.runner import postgres_store_factory
from wakeline.processors.samples import frames, traffic
from wakeline.processors.service import LedgerBuilderService
from wakeline.processors.settings import BuilderSettings

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.fixture
def fresh_kafka(kafka: KafkaSettings):  # type: ignore[no-untyped-def]
    """Topics of their own for one test (the builder reads the events topic from offset 0)."""
    settings = replace(kafka, topics=Topics(f"t{uuid.uuid4().hex[:10]}.wakeline."))
    topics.ensure_topics(settings)
    yield settings
    with contextlib.suppress(Exception):
        topics.delete_topics(settings)


def produce(kafka: KafkaSettings, events: list[dict], extra: list[tuple] = ()) -> None:
    p = Producer(kafka.client_config(**{"enable.idempotence": True, "linger.ms": 5}))
    for e in events:
        key, value, headers = frames(e)
        p.produce(kafka.topics.events, key=key, value=value, headers=headers)
    for key, value, headers in extra:
        p.produce(kafka.topics.events, key=key, value=value, headers=headers)
    assert p.flush(30) == 0


def read_topic(kafka: KafkaSettings, topic: str, idle: float = 2.0) -> list:
    """Every record of `topic`, read until nothing arrives for `idle` seconds."""
    c = Consumer(kafka.client_config(**{"group.id": f"r-{uuid.uuid4().hex[:8]}",
                                        "enable.auto.commit": False}))  # fmt: skip
    meta = c.list_topics(topic, timeout=10).topics[topic]
    c.assign([TopicPartition(topic, p, -2) for p in meta.partitions])
    out, last = [], time.monotonic()
    try:
        while time.monotonic() - last < idle:
            for m in c.consume(1000, 0.3):
                if m.error() is None:
                    out.append(m)
                    last = time.monotonic()
    finally:
        c.close()
    return out


def wait_for(store: LedgerStore, partitions: int, total: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        size = 0
        for p in range(partitions):
            last = store.last_segment(p)
            size += last[0].tree_size if last else 0
        if size >= total:
            return
        time.sleep(0.2)
    raise AssertionError(f"ledger holds {size} leaves after {timeout}s, want {total}")


def check_against_topic(kafka: KafkaSettings, store: LedgerStore) -> int:
    """Replay the events topic: every record is ledgered once, in order, same roots."""
    msgs = read_topic(kafka, kafka.topics.events)
    by_part: dict[int, list[LedgerRecord]] = {}
    for m in sorted(msgs, key=lambda m: (m.partition(), m.offset())):
        by_part.setdefault(m.partition(), []).append(
            LedgerRecord(m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value(),
                         tuple(m.headers() or ()))  # fmt: skip
        )
    for p, recs in by_part.items():
        leaves = [leaf_bytes(r) for r in recs]
        entries = list(store.entries(p))
        assert [e.offset for e in entries] == [r.offset for r in recs], f"partition {p}"
        assert [e.leaf for e in entries] == leaves
        last, _ = store.last_segment(p)
        assert last.tree_size == len(leaves)
        assert last.tree_root == root_of(BLAKE3, [BLAKE3.leaf_hash(x) for x in leaves])
        prev = b"\0" * 32
        for h in store.headers(p):
            assert h.prev_hash == prev
            prev = h.hash()
    return len(msgs)


def run_service(kafka: KafkaSettings, dsn: str, **kw) -> LedgerBuilderService:
    settings = BuilderSettings(
        segment_max_leaves=kw.pop("max_leaves", 500), segment_max_age_s=0.2,
        checkpoint_interval_s=0, **kw,
    )  # fmt: skip
    svc = LedgerBuilderService(kafka, settings, postgres_store_factory(dsn), dsn)
    svc.start()
    return svc


def test_every_record_is_ledgered_published_and_audited(fresh_kafka, fresh_dsn) -> None:
    kafka = fresh_kafka
    events = list(traffic(1500, workflows=40))
    garbage = [(b"wf-bad", b"\xc3\x01 definitely not avro", [("ce_id", b"x")])]
    produce(kafka, events[:1000], garbage)
    svc = run_service(kafka, fresh_dsn)
    store = postgres_store_factory(fresh_dsn)()
    try:
        wait_for(store, kafka.partitions, 1001)
        produce(kafka, events[1000:])
        wait_for(store, kafka.partitions, 1501)
    finally:
        svc.stop()
    assert svc.failure is None
    assert check_against_topic(kafka, store) == 1501

    headers = read_topic(kafka, kafka.topics.ledger)
    stored = {(p, h.segment_number): h.to_bytes() for p in range(3) for h in store.headers(p)}
    got = {}
    for m in headers:
        h = SegmentHeader.from_bytes(m.value())
        assert m.partition() == h.partition and m.key() == str(h.partition).encode()
        got[(h.partition, h.segment_number)] = m.value()
    assert got == stored

    dlq = read_topic(kafka, kafka.topics.dlq)
    assert [m.value() for m in dlq] == [garbage[0][1]]
    assert b"MalformedFrame" in dict(dlq[0].headers())["wakeline_dlq_reason"]

    audit = read_topic(kafka, kafka.topics.audit)
    assert len(audit) == 1501
    positions = set()
    for m in audit:
        rec = decode_with_avsc_only(m.value())
        positions.add((rec["ledger"]["partition"], rec["ledger"]["leaf_index"]))
        entry = list(store.entries(rec["ledger"]["partition"], rec["ledger"]["leaf_index"],
                                   rec["ledger"]["leaf_index"] + 1))[0]  # fmt: skip
        assert entry.leaf_hash == rec["ledger"]["leaf_hash"]
    assert len(positions) == 1501


def decode_with_avsc_only(frame: bytes) -> dict:
    """What a compliance tool outside Wakeline does: the .avsc files and fastavro, nothing
    else. The nested event is decoded too, by its fingerprint."""
    by_fp = {}
    for path in SCHEMAS.glob("*.avsc"):
        schema = fastavro.parse_schema(json.loads(path.read_text()), named_schemas={})
        fp = fastavro.schema.fingerprint(
            fastavro.schema.to_parsing_canonical_form(schema), "CRC-64-AVRO"
        )
        by_fp[bytes.fromhex(fp)] = schema

    def decode(raw: bytes) -> dict:
        assert raw[:2] == b"\xc3\x01"
        return fastavro.schemaless_reader(BytesIO(raw[10:]), by_fp[raw[2:10]], None)

    rec = decode(frame)
    if rec["event"] is not None and rec["decode_error"] is None:
        rec["event"] = decode(rec["event"])
    return rec
