"""`wakeline init`: topics, database migrations and the published event schemas."""

from __future__ import annotations

from wakeline.infra import db, topics
from wakeline.infra.settings import DatabaseSettings, KafkaSettings


def initialise(kafka: KafkaSettings, database: DatabaseSettings) -> dict:
    created = topics.ensure_topics(kafka)
    applied = db.migrate(database.dsn)
    with db.connect(database.dsn, autocommit=True) as conn:
        version = db.current_version(conn)
    report: dict = {
        "topics_created": created,
        "migrations_applied": [f"{m.version:04d}_{m.name}" for m in applied],
        "schema_version": version,
        "schemas_published": None,
    }
    try:
        from wakeline.infra.schema_registry import publish_schemas
    except ImportError:
        return report
    report["schemas_published"] = publish_schemas(kafka, database.dsn)
    return report
