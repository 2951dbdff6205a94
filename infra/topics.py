"""The topics of docs/architecture.md (Topics): create them (idempotently) and check what exists."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from wakeline.errors import StackError
from wakeline.infra.settings import KafkaSettings

log = logging.getLogger(__name__)

_FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}
_COMPACTED = {"cleanup.policy": "compact"}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def topic_specs(settings: KafkaSettings) -> list[TopicSpec]:
    t, n = settings.topics, settings.partitions
    return [
        # the event log and the ledger are the record: never expire
        TopicSpec(t.events, n, dict(_FOREVER)),
        TopicSpec(t.ledger, n, dict(_FOREVER)),
        TopicSpec(t.audit, n, {}),
        TopicSpec(t.alerts, n, {}),
        TopicSpec(t.quarantines, n, dict(_COMPACTED)),
        # the race detector's repartition: re-read on assignment for one window only
        TopicSpec(t.resources, n, {}),
        TopicSpec(t.approvals, n, dict(_COMPACTED)),
        TopicSpec(t.grants, 1, dict(_COMPACTED)),
        TopicSpec(t.schemas, 1, dict(_COMPACTED)),
        TopicSpec(t.dlq, n, dict(_FOREVER)),
    ]


def _admin(settings: KafkaSettings):  # type: ignore[no-untyped-def]
    from confluent_kafka.admin import AdminClient

    return AdminClient(settings.client_config(log_level=0))


def ensure_topics(settings: KafkaSettings, *, timeout: float = 30.0) -> list[str]:
    """Create every missing topic; return the names created now. Existing topics are kept."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    admin = _admin(settings)
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as e:
        raise StackError(f"cannot reach Kafka at {settings.bootstrap}: {e}") from e
    wanted = [s for s in topic_specs(settings) if s.name not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [NewTopic(s.name, num_partitions=s.partitions, config=s.config) for s in wanted],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    created: list[str] = []
    for name, fut in futures.items():
        try:
            fut.result()
            created.append(name)
            log.info("topic created topic=%s", name)
        except KafkaException as e:
            if e.args and getattr(e.args[0], "name", lambda: "")() == "TOPIC_ALREADY_EXISTS":
                continue
            raise StackError(f"cannot create topic {name}: {e}") from e
    return created


def missing_topics(settings: KafkaSettings, *, timeout: float = 10.0) -> list[str]:
    from confluent_kafka import KafkaException

    try:
        existing = set(_admin(settings).list_topics(timeout=timeout).topics)
    except KafkaException as e:
        raise StackError(f"cannot reach Kafka at {settings.bootstrap}: {e}") from e
    return [s.name for s in topic_specs(settings) if s.name not in existing]


def delete_topics(
    settings: KafkaSettings, *, timeout: float = 30.0, under_prefix: bool = False
) -> None:
    """Delete the topics `wakeline init` makes under the settings' prefix (tests clean up
    with this); with `under_prefix`, every topic whose name starts with the prefix (the
    worker's faust app makes `<prefix>worker-*-__assignor-__leader` topics of its own): only
    for a prefix nothing else uses, such as a demo run's."""
    admin = _admin(settings)
    existing = set(admin.list_topics(timeout=timeout).topics)
    if under_prefix:
        if not settings.topics.prefix:
            raise StackError("refusing to delete every topic under an empty prefix")
        names = sorted(n for n in existing if n.startswith(settings.topics.prefix))
    else:
        names = [s.name for s in topic_specs(settings) if s.name in existing]
    if names:
        for fut in admin.delete_topics(names, operation_timeout=timeout).values():
            fut.result()
