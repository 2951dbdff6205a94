"""Schemas land in PostgreSQL and on the compacted schemas topic, and decode frames from there."""

from __future__ import annotations

import psycopg
import pytest

from wakeline.infra.schema_registry import (
    PostgresSchemaResolver,
    learn_schemas,
    load_schemas_from_kafka,
    load_schemas_from_postgres,
    publish_schemas,
)
from wakeline.infra.settings import KafkaSettings
from wakeline.schemas import (
    EVENT_TYPES,
    Codec,
    SchemaInfo,
    UnknownFingerprint,
    encode_event,
    new_event_id,
    packaged_avsc,
)

pytestmark = pytest.mark.integration


def _event() -> dict:
    return {
        "event_id": new_event_id(),
        "type": "ToolResult",
        "time": 1_795_851_564_123_456,
        "source": "it/schema-registry",
        "workflow_id": "wf-schemas",
        "run_id": "run-1",
        "agent_id": "agent",
        "principal": "user:it",
        "intent_id": new_event_id(),
        "status": "ok",
        "external_ids": {"charge_id": "ch_1"},
    }


def _bare_codec() -> Codec:
    """A consumer that knows no schema at all until it loads them."""
    return Codec({})


def test_publish_lands_in_postgres_and_is_idempotent(dsn: str) -> None:
    first = publish_schemas(None, dsn)
    again = publish_schemas(None, dsn)
    assert {row["type"] for row in first} >= set(EVENT_TYPES)
    assert all(row["new_in_postgres"] is False for row in again)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT fingerprint, type_name, canonical_form FROM schemas").fetchall()
    by_fp = {bytes(fp): (name, canonical) for fp, name, canonical in rows}
    for info in packaged_avsc():
        assert by_fp[info.fingerprint] == (info.type_name, info.canonical_form)


def test_schemas_table_is_append_only(dsn: str) -> None:
    publish_schemas(None, dsn)
    for statement in (
        "UPDATE schemas SET type_name = 'x'",
        "DELETE FROM schemas",
        "TRUNCATE schemas",
    ):
        with psycopg.connect(dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)


def test_a_consumer_decodes_with_schemas_loaded_from_postgres(dsn: str) -> None:
    publish_schemas(None, dsn)
    event = _event()
    frame = encode_event(event)
    consumer = _bare_codec()
    with pytest.raises(UnknownFingerprint):
        consumer.decode(frame)
    learn_schemas(load_schemas_from_postgres(dsn), consumer)
    decoded = consumer.decode(frame)
    assert {k: decoded[k] for k in event} == event


def test_a_resolver_looks_unknown_fingerprints_up_in_postgres(dsn: str) -> None:
    publish_schemas(None, dsn)
    event = _event()
    consumer = Codec({}, resolver=PostgresSchemaResolver(dsn))
    decoded = consumer.decode(encode_event(event))
    assert {k: decoded[k] for k in event} == event
    with pytest.raises(UnknownFingerprint):
        consumer.decode(b"\xc3\x01" + bytes(8) + b"\x00")


def test_schemas_are_on_the_compacted_topic_keyed_by_fingerprint(
    kafka: KafkaSettings, dsn: str
) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    publish_schemas(kafka, dsn)
    loaded = load_schemas_from_kafka(kafka)
    assert {i.fingerprint for i in loaded} >= {i.fingerprint for i in packaged_avsc()}
    for info in loaded:
        assert SchemaInfo.from_json(info.schema_json).fingerprint == info.fingerprint

    admin = AdminClient(kafka.client_config())
    resource = ConfigResource("topic", kafka.topics.schemas)
    config = admin.describe_configs([resource])[resource].result(timeout=30)
    assert config["cleanup.policy"].value == "compact"

    event = _event()
    consumer = _bare_codec()
    learn_schemas(loaded, consumer)
    decoded = consumer.decode(encode_event(event))
    assert {k: decoded[k] for k in event} == event


def test_a_row_whose_schema_does_not_hash_to_its_key_is_refused(
    fresh_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    publish_schemas(None, fresh_dsn)
    release = next(i for i in packaged_avsc() if i.type_name == "Release")
    forged_key = bytes.fromhex("00112233445566ff")
    with psycopg.connect(fresh_dsn) as conn:
        conn.execute(
            "INSERT INTO schemas (fingerprint, type_name, full_name, canonical_form, schema_json)"
            " VALUES (%s, 'Release', %s, %s, %s)",
            (forged_key, release.full_name, release.canonical_form, release.schema_json),
        )
    loaded = load_schemas_from_postgres(fresh_dsn)
    assert forged_key not in {i.fingerprint for i in loaded}
    assert {i.fingerprint for i in loaded} == {i.fingerprint for i in packaged_avsc()}
    assert forged_key.hex() in caplog.text
    assert PostgresSchemaResolver(fresh_dsn)(forged_key) is None


def test_the_worker_copies_schemas_from_the_topic_into_postgres(
    kafka: KafkaSettings, fresh_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Agents publish to Kafka only; `processors.schema_sync` puts the schemas into
    PostgreSQL, skipping a record whose schema does not hash to its key."""
    from confluent_kafka import Producer

    from wakeline.infra.schema_registry import publish_to_kafka
    from wakeline.processors.schema_sync import store_schema_records, sync_schemas

    infos = list(packaged_avsc())
    publish_to_kafka(kafka, infos)
    release = next(i for i in infos if i.type_name == "Release")
    forged = bytes.fromhex("00112233445566ff")
    producer = Producer(kafka.client_config())
    producer.produce(kafka.topics.schemas, key=forged, value=release.schema_json.encode())
    producer.produce(kafka.topics.schemas, key=b"tombstone-key", value=None)
    assert producer.flush(30) == 0

    with caplog.at_level("ERROR"):
        assert sync_schemas(kafka, fresh_dsn) == len(infos)
    assert "schema refused" in caplog.text
    assert sync_schemas(kafka, fresh_dsn) == 0  # idempotent
    stored = {i.fingerprint for i in load_schemas_from_postgres(fresh_dsn)}
    assert stored == {i.fingerprint for i in infos}
    assert forged not in stored
    records = [(i.fingerprint, i.schema_json.encode()) for i in infos] + [(b"x", None), (None, b"")]
    assert store_schema_records(fresh_dsn, records) == 0


def test_the_worker_resolves_a_schema_an_agent_published_only_on_the_topic(
    kafka: KafkaSettings, fresh_dsn: str
) -> None:
    """A frame written with a writer schema the worker has never seen (a newer ToolResult,
    published by its agent to the schemas topic alone) decodes through the worker's resolver:
    PostgreSQL misses, the topic is copied in, the lookup succeeds."""
    import json

    from wakeline.infra.schema_registry import publish_to_kafka
    from wakeline.processors.schema_sync import worker_resolver
    from wakeline.schemas import SchemaInfo, packaged_schemas

    current = json.loads(packaged_schemas()["ToolResult"].schema_json)
    current["fields"].append({"name": "region", "type": "string", "default": "eu"})
    newer = SchemaInfo.from_json(current)
    publish_to_kafka(kafka, [newer])
    writer = Codec({"ToolResult": newer})
    frame = writer.encode(_event() | {"region": "us"})

    reader = Codec(packaged_schemas())
    with pytest.raises(UnknownFingerprint):
        reader.decode(frame)
    reader.resolver = worker_resolver(kafka, fresh_dsn, every=30.0)
    decoded = reader.decode(frame)
    assert decoded["status"] == "ok" and "region" not in decoded  # resolved to the reader
    assert newer.fingerprint in {i.fingerprint for i in load_schemas_from_postgres(fresh_dsn)}
