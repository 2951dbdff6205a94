"""The worker's half of the schema registry: copy schemas from Kafka into PostgreSQL.

Agents publish their writer schemas to the compacted `<prefix>schemas` topic only (Kafka is
all an agent needs); the worker, which has the database, copies every schema it finds there
into the append-only `schemas` table, so readers of PostgreSQL (the verifier, exports) can
decode every frame. Each schema is re-fingerprinted on the way (a record whose schema does not
hash to its key is logged and skipped, never stored); inserting is idempotent.

- `sync_schemas(kafka, dsn)` reads the topic from its start to its current end and inserts
  what is new: call it when the worker starts, and again when the builder meets a fingerprint
  PostgreSQL does not know (or on a timer).
- `store_schema_records(dsn, records)` does the same for records already consumed, e.g. by a
  low-volume agent following the schemas topic: `(key, value)` pairs as Kafka delivers them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from wakeline.infra.schema_registry import (
    _verified,
    load_schemas_from_kafka,
    publish_to_postgres,
)
from wakeline.infra.settings import KafkaSettings
from wakeline.schemas import SchemaInfo

log = logging.getLogger(__name__)


def sync_schemas(kafka: KafkaSettings, dsn: str, *, timeout: float = 30.0) -> int:
    """Copy every valid schema of the schemas topic into PostgreSQL; how many were new."""
    return _store(dsn, load_schemas_from_kafka(kafka, timeout=timeout), kafka.topics.schemas)


def store_schema_records(dsn: str, records: Iterable[tuple[bytes | None, bytes | None]]) -> int:
    """Store the schemas of consumed `(key, value)` records; how many were new. Tombstones,
    keyless records and schemas that do not hash to their key are skipped (logged)."""
    infos: list[SchemaInfo] = []
    for key, value in records:
        if key is None or value is None:
            continue
        info = _verified(bytes(key), value.decode("utf-8", "replace"), "kafka")
        if info is not None:
            infos.append(info)
    return _store(dsn, infos, "records")


def _store(dsn: str, infos: list[SchemaInfo], where: str) -> int:
    if not infos:
        return 0
    new = sum(publish_to_postgres(dsn, infos).values())
    log.info("schemas synced from %s: %d seen, %d new in PostgreSQL", where, len(infos), new)
    return new


class WorkerSchemaResolver:
    """The worker's codec resolver: an unknown fingerprint is looked up in PostgreSQL; on a
    miss, the schemas topic is copied into PostgreSQL (at most once every `sync_every`
    seconds, whatever the number of misses) and the lookup tried again. Set it with
    ``default_codec().resolver = WorkerSchemaResolver(kafka, dsn)``."""

    def __init__(self, kafka: KafkaSettings, dsn: str, *, sync_every: float = 30.0) -> None:
        from wakeline.infra.schema_registry import PostgresSchemaResolver

        self._kafka = kafka
        self._dsn = dsn
        self._lookup = PostgresSchemaResolver(dsn, retry_after=0.0)
        self._sync_every = sync_every
        self._synced_at = float("-inf")
        self._misses: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def __call__(self, fingerprint: bytes) -> SchemaInfo | None:
        now = time.monotonic()
        with self._lock:
            missed = self._misses.get(fingerprint)
        if missed is not None and now - missed < self._sync_every:
            return None  # asked lately: a stream of bad frames is not a stream of queries
        found = self._lookup(fingerprint)
        if found is None:
            found = self._synced_lookup(fingerprint, now)
        if found is None:
            with self._lock:
                if len(self._misses) >= 10_000:
                    self._misses.clear()
                self._misses[fingerprint] = now
        return found

    def _synced_lookup(self, fingerprint: bytes, now: float) -> SchemaInfo | None:
        with self._lock:
            if now - self._synced_at < self._sync_every:
                return None
            self._synced_at = now
        try:
            if sync_schemas(self._kafka, self._dsn, timeout=10.0) == 0:
                return None
        except Exception as e:  # the frame goes to the DLQ as unknown; the next miss retries
            log.warning("schema sync failed: %s", e)
            return None
        return self._lookup(fingerprint)
