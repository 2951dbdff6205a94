"""The compensation daemon: quarantine -> reverse saga -> human escalation.

Two halves share the state in PostgreSQL (compensator/store.py):

    events topic --> CompensatorProcessor (on the runner, processors/stream.py)
                       records intents, results, quarantines, releases, its own events;
                       on a Quarantine: publishes it to the compacted quarantines topic (SDK
                       gates refuse the workflow's calls from then on), computes the plan
                       (compensator/plan.py) and stores it: actions to run, tasks to file;
                       on a Release: tombstones the quarantine, cancels what has not started;
                       late intents and results of a quarantined workflow join its plan
                 --> Executor (its own threads)
                       runs each plan's actions newest first, one at a time, each under a
                       lease (store.lease); records CompensationStarted and
                       CompensationResult on the workflow's partition; retries transient
                       failures with exponential backoff and jitter; escalates the rest;
                       publishes each task's Escalation event and notifies the webhook

The compensator's own events come back to the processor on the same partition; a
CompensationResult seen there settles its action, so an attempt whose process died after
recording its result is not run again. Delivery is at least once everywhere; what makes a
repeated action harmless is the idempotency key every handler passes to the outside world.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wakeline.compensator.executor import Executor, process_owner
from wakeline.compensator.processor import CompensatorProcessor
from wakeline.compensator.registry import CompensationRegistry
from wakeline.compensator.settings import CompensatorSettings
from wakeline.compensator.store import CompensatorStore

# -- the daemon --------------------------------------------------------------------------------


class Compensator:
    """The processor on a Kafka runner, and its executor: `start()` / `stop()`, or `run()`."""

    def __init__(
        self,
        kafka: Any,
        dsn: str,
        handlers: CompensationRegistry,
        settings: CompensatorSettings | None = None,
        *,
        notifier: Any = None,
        tools: Any = None,
        decode: Callable[[bytes], dict[str, Any]] | None = None,
        runner_settings: Any = None,
    ) -> None:
        from confluent_kafka import Producer

        from wakeline.processors.stream import KafkaRunner, RunnerSettings
        from wakeline.schemas import decode_event

        self.settings = settings or CompensatorSettings()
        s = self.settings
        self.owner = process_owner()
        decode = decode or decode_event
        self.producer = Producer(
            kafka.producer_config(**{"enable.idempotence": True, "acks": "all", "linger.ms": 1})
        )
        topics = kafka.topics
        self.store = CompensatorStore(dsn, topics.events)
        self.executor = Executor(
            CompensatorStore(dsn, topics.events),
            handlers,
            topics=topics,
            producer=self.producer,
            decode=decode,
            settings=s,
            owner=self.owner,
            notifier=notifier,
            tools=tools,
        )
        self.processor = CompensatorProcessor(
            self.store,
            handlers,
            topics=topics,
            executor=self.executor,
            decode=decode,
            owner=self.owner,
            max_record_bytes=s.max_record_bytes,
            unknown_grace_s=s.unknown_grace_s,
        )
        consumer_config: dict[str, Any] = {}
        if s.instance_id:
            consumer_config["group.instance.id"] = s.instance_id
        self.runner = KafkaRunner(
            self.processor,
            topics.events,
            kafka.client_config,
            runner_settings
            or RunnerSettings(
                group_id=s.group_for(topics.prefix),
                batch_size=1000,
                poll_timeout_s=0.01,
                consumer_config=consumer_config,
            ),
        )

    def samples(self) -> list[Any]:
        """What the daemon counts, as metric samples (read on a scrape, from any thread)."""
        from wakeline.infra import metrics as m

        return [
            *self.runner.samples(),
            m.Sample(m.COMPENSATION_PLANS, (), self.processor.plans_started),
            m.Sample(m.COMPENSATION_ATTEMPTS, (), self.executor.attempts),
            m.Sample(m.ESCALATIONS, (), self.executor.escalations),
            m.Sample(m.DLQ_RECORDS, (), self.processor.dead_lettered),
        ]

    def start(self) -> Compensator:
        self.executor.start()
        self.runner.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.runner.stop(timeout)
        self.executor.stop(timeout)
        self.producer.flush(10)
        self.executor.store.close()

    def run(self) -> None:
        """Block until `stop()` (from a signal handler) or a failure of the runner."""
        self.executor.start()
        try:
            self.runner.run()
        finally:
            self.executor.stop()
            self.producer.flush(10)
            self.executor.store.close()
