"""Publish the Avro schemas where any consumer can find them, and learn them back.

Every schema goes to two places: the append-only PostgreSQL table `schemas`
(migration 0003) and the compacted `<prefix>schemas` topic, keyed by the 8-byte fingerprint
that frames carry, value = the schema JSON. Both are idempotent: a fingerprint names one
schema forever, so republishing changes nothing.

Consumers learn fingerprints they do not know with `load_schemas_from_postgres`,
`load_schemas_from_kafka`, or lazily with `PostgresSchemaResolver` set as a codec's
resolver. Whatever is loaded is re-fingerprinted; a row or record whose schema does not hash
to its key is refused (logged), never registered.

Importing this module loads neither psycopg nor the database layer: an agent publishes its
schemas to Kafka only (`publish_to_kafka`); `wakeline init` and the worker
(`wakeline/processors/schema_sync.py`) put them into PostgreSQL.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable

from wakeline.errors import SchemaError, StackError, StoreError
from wakeline.infra.settings import KafkaSettings
from wakeline.schemas import Codec, SchemaInfo, default_codec, packaged_avsc

log = logging.getLogger(__name__)

SCHEMA_CONTENT_TYPE = b"application/json"

_INSERT = """
    INSERT INTO schemas (fingerprint, type_name, full_name, canonical_form, schema_json)
    VALUES (%s, %s, %s, %s, %s)
    ON CONFLICT (fingerprint) DO NOTHING
"""
_SELECT = "SELECT fingerprint, schema_json FROM schemas"


def publish_schemas(
    kafka_settings: KafkaSettings | None,
    dsn: str | None,
    *,
    schemas: Iterable[SchemaInfo] | None = None,
    timeout: float = 30.0,
) -> list[dict[str, object]]:
    """Insert every schema into PostgreSQL and produce it to the schemas topic.

    `schemas` defaults to every packaged .avsc. Either target may be None to skip it.
    Returns one JSON-ready row per schema: type, fingerprint (hex), whether PostgreSQL
    saw it for the first time.
    """
    infos = list(packaged_avsc() if schemas is None else schemas)
    inserted = publish_to_postgres(dsn, infos) if dsn else {}
    if kafka_settings is not None:
        publish_to_kafka(kafka_settings, infos, timeout=timeout)
    return [
        {
            "type": info.type_name,
            "fingerprint": info.fingerprint.hex(),
            "new_in_postgres": inserted.get(info.fingerprint),
        }
        for info in infos
    ]


def publish_to_postgres(dsn: str, schemas: Iterable[SchemaInfo]) -> dict[bytes, bool]:
    """Insert the schemas in one transaction; fingerprint -> True if the row is new."""
    import psycopg

    from wakeline.infra import db

    result: dict[bytes, bool] = {}
    try:
        with db.connect(dsn) as conn, conn.transaction():
            for info in schemas:
                cur = conn.execute(
                    _INSERT,
                    (
                        info.fingerprint,
                        info.type_name,
                        info.full_name,
                        info.canonical_form,
                        info.schema_json,
                    ),
                )
                result[info.fingerprint] = cur.rowcount == 1
    except psycopg.Error as e:
        raise StoreError(f"cannot publish schemas to PostgreSQL: {e}") from e
    log.info("schemas published to postgres count=%d new=%d", len(result), sum(result.values()))
    return result


def publish_to_kafka(
    settings: KafkaSettings, schemas: Iterable[SchemaInfo], *, timeout: float = 30.0
) -> int:
    """Produce each schema to the compacted schemas topic and wait for every ack."""
    from confluent_kafka import KafkaException, Producer

    producer = Producer(
        settings.client_config(
            **{"acks": "all", "enable.idempotence": True, "linger.ms": 0, "log_level": 0}
        )
    )
    failures: list[str] = []

    def on_delivery(err: object, msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    count = 0
    topic = settings.topics.schemas
    try:
        for info in schemas:
            producer.produce(
                topic,
                key=info.fingerprint,
                value=info.schema_json.encode(),
                headers=[
                    ("content-type", SCHEMA_CONTENT_TYPE),
                    ("wakeline_schema_type", info.type_name.encode()),
                ],
                on_delivery=on_delivery,
            )
            count += 1
        remaining = producer.flush(timeout)
    except (KafkaException, BufferError) as e:
        raise StackError(f"cannot publish schemas to {topic}: {e}") from e
    if remaining:
        raise StackError(
            f"{remaining} schema records to {topic} unacknowledged after {timeout:g} s "
            f"(broker {settings.bootstrap} unreachable?)"
        )
    if failures:
        raise StackError(f"publishing schemas to {topic} failed: {failures[0]}")
    log.info("schemas published to kafka topic=%s count=%d", topic, count)
    return count


def _verified(fingerprint: bytes, schema_json: str, where: str) -> SchemaInfo | None:
    """The schema if it really hashes to `fingerprint`; otherwise log and drop it."""
    try:
        info = SchemaInfo.from_json(schema_json)
    except SchemaError as e:
        log.error("schema unusable where=%s fingerprint=%s error=%s", where, fingerprint.hex(), e)
        return None
    if info.fingerprint != fingerprint:
        log.error(
            "schema refused where=%s fingerprint=%s computed=%s",
            where,
            fingerprint.hex(),
            info.fingerprint.hex(),
        )
        return None
    return info


def load_schemas_from_postgres(dsn: str) -> list[SchemaInfo]:
    """Every schema in the registry table whose JSON hashes to its fingerprint."""
    import psycopg

    from wakeline.infra import db

    try:
        with db.connect(dsn) as conn:
            rows = conn.execute(_SELECT + " ORDER BY first_seen, fingerprint").fetchall()
    except psycopg.Error as e:
        raise StoreError(f"cannot read schemas from PostgreSQL: {e}") from e
    found = [_verified(bytes(fp), text, "postgres") for fp, text in rows]
    return [info for info in found if info is not None]


def load_schemas_from_kafka(settings: KafkaSettings, *, timeout: float = 30.0) -> list[SchemaInfo]:
    """Read the compacted schemas topic from the start to its current end."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

    topic = settings.topics.schemas
    consumer = Consumer(
        settings.client_config(
            **{
                "group.id": f"wakeline-schema-reader-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "log_level": 0,
            }
        )
    )
    found: dict[bytes, SchemaInfo] = {}
    deadline = time.monotonic() + timeout
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            raise StackError(f"schemas topic {topic} is missing: {meta.error if meta else ''}")
        ends: dict[int, int] = {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        while ends:
            if time.monotonic() > deadline:
                raise StackError(f"reading {topic} took over {timeout:g} s")
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error():
                    raise StackError(f"reading {topic}: {msg.error()}")
                key, value = msg.key(), msg.value()
                if key is None or value is None:  # a tombstone, or not ours
                    continue
                info = _verified(bytes(key), value.decode("utf-8", "replace"), "kafka")
                if info is not None:
                    found[info.fingerprint] = info
            # done with a partition once its position reaches the end seen at the start
            # (positions, not offsets: compaction and control records leave offset gaps)
            for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
                if tp.offset >= ends[tp.partition]:
                    del ends[tp.partition]
    except KafkaException as e:
        raise StackError(f"cannot read schemas from {topic}: {e}") from e
    finally:
        consumer.close()
    return list(found.values())


def learn_schemas(schemas: Iterable[SchemaInfo], codec: Codec | None = None) -> int:
    """Register loaded schemas with a codec (the default one behind decode_event)."""
    target = codec or default_codec()
    count = 0
    for info in schemas:
        target.register(info)
        count += 1
    return count


class PostgresSchemaResolver:
    """A codec resolver that looks an unknown fingerprint up in PostgreSQL on demand.

    Set it with ``default_codec().resolver = PostgresSchemaResolver(dsn)``. A miss is
    remembered for `retry_after` seconds so a stream of frames with a bad fingerprint
    does not become a stream of queries. `refresh`, if given, is called on a miss (at most
    once every `retry_after` seconds, whatever the number of misses) to bring more schemas
    into PostgreSQL, e.g. from the schemas topic; it returns how many are new, and the
    lookup is tried again when it found any.
    """

    def __init__(
        self,
        dsn: str,
        *,
        retry_after: float = 30.0,
        refresh: Callable[[], int] | None = None,
    ) -> None:
        self._dsn = dsn
        self._retry_after = retry_after
        self._refresh = refresh
        self._refreshed_at = float("-inf")
        self._misses: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def __call__(self, fingerprint: bytes) -> SchemaInfo | None:
        now = time.monotonic()
        with self._lock:
            missed = self._misses.get(fingerprint)
            if missed is not None and now - missed < self._retry_after:
                return None
        info = self._lookup(fingerprint)
        if info is None and self._refresh is not None and self._refresh_due(now):
            try:
                if self._refresh() > 0:
                    info = self._lookup(fingerprint)
            except Exception as e:  # the frame stays unknown; a later miss tries again
                log.warning("schema refresh failed: %s", e)
        if info is None and self._retry_after > 0:
            with self._lock:
                if len(self._misses) >= 10_000:  # hostile input: random fingerprints
                    self._misses.clear()
                self._misses[fingerprint] = now
        return info

    def _refresh_due(self, now: float) -> bool:
        with self._lock:
            if now - self._refreshed_at < self._retry_after:
                return False
            self._refreshed_at = now
            return True

    def _lookup(self, fingerprint: bytes) -> SchemaInfo | None:
        import psycopg

        from wakeline.infra import db

        try:
            with db.connect(self._dsn) as conn:
                row = conn.execute(_SELECT + " WHERE fingerprint = %s", (fingerprint,)).fetchone()
        except (psycopg.Error, StoreError) as e:
            log.warning("schema lookup failed fingerprint=%s error=%s", fingerprint.hex(), e)
            row = None
        return _verified(fingerprint, row[1], "postgres") if row else None
