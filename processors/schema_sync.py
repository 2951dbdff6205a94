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
from collections.abc import Iterable
from typing import Any

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


def worker_resolver(kafka: KafkaSettings, dsn: str, *, every: float = 30.0) -> Any:
    """The worker's codec resolver: an unknown fingerprint is looked up in PostgreSQL; on a
    miss the schemas topic is copied into PostgreSQL (at most once every `every` seconds)
    and the lookup tried again. Set it with ``default_codec().resolver = ...``."""
    from wakeline.infra.schema_registry import PostgresSchemaResolver

    return PostgresSchemaResolver(
        dsn, retry_after=every, refresh=lambda: sync_schemas(kafka, dsn, timeout=10.0)
    )
