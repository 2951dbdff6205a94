"""Where a detector starts reading a partition it is given (processors/stream.py `Rewind`),
against the real broker: never past a record it has not read."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from confluent_kafka import Producer

from wakeline.infra.settings import KafkaSettings
from wakeline.processors.stream import Rewind
from wakeline.testkit.harness import wait_until

pytestmark = pytest.mark.integration


class _ProducesDuringSearch:
    """The rewind's consumer, with a record produced onto the partition just before the
    time search runs: a worker given a partition while an agent writes to it."""

    def __init__(self, consumer: Any, produce: Any) -> None:
        self._c, self._produce = consumer, produce

    def offsets_for_times(self, *args: Any, **kwargs: Any) -> Any:
        found = self._c.offsets_for_times(*args, **kwargs)  # empty: nothing that recent
        self._produce()
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self._c, name)


def _answers(rewind: Rewind) -> bool:
    from confluent_kafka import KafkaException

    try:
        rewind([0])
    except KafkaException:
        return False
    return True


def test_a_record_produced_while_a_new_group_rewinds_is_still_read(
    fresh_kafka: KafkaSettings,
) -> None:
    topic = fresh_kafka.topics.events
    producer = Producer(fresh_kafka.client_config())

    def produce() -> None:
        producer.produce(topic, b"intent", b"wf", partition=0)
        assert producer.flush(10) == 0

    rewind = Rewind(fresh_kafka.client_config, f"g-{uuid.uuid4().hex}", topic, window_s=60)
    try:
        # creates its consumer; a new topic's partition may have no leader yet for a moment
        # (the runner retries a failed restore the same way)
        wait_until(lambda: _answers(rewind), 30, "the new topic's partition to have a leader")
        assert rewind._consumer is not None
        rewind._consumer = _ProducesDuringSearch(rewind._consumer, produce)
        (start, live) = rewind([0])[0]
        assert start == 0 and live == 0, "the record produced meanwhile would be skipped"
    finally:
        rewind._consumer = getattr(rewind._consumer, "_c", rewind._consumer)
        rewind.close()
