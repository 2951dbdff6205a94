"""The current state of a compacted topic (key -> latest value), kept by a consumer thread.

Quarantines use it now; approvals and grants are the next state topics. One `StateReader`:

- does nothing until `start()`; `close()` stops it;
- has a `health`: `idle` (not started), `catching_up` (reading the topic up to its end),
  `live` (caught up on every partition: the state is current within a poll interval),
  `broken` (its consumer failed; it is being restarted);
- restarts its consumer after any error, with exponential backoff and jitter (`tenacity`),
  and says so in the log at warning level, each time, with the error;
- after a restart, reads the topic again from the beginning into a *new* state and swaps it
  in when caught up, so keys deleted (tombstoned) while it was broken disappear, and the
  state it serves never shrinks to a half-read topic meanwhile.

What a user of the state does while the reader is not `live` is its own choice, made
explicit: see `fail_closed` on `QuarantineGate` in `wakeline/producers/gates.py`.

`parse(key, value)` turns a record into the state value (None deletes the key); it must not
raise for any bytes (a parse error is logged and the record dropped, never crashing the
reader). `consumer_factory` builds the consumer: a confluent-kafka `Consumer` by default, any
object with `list_topics`, `assign`, `consume`, `close` in tests (no broker needed).

`on_apply(key, value)`, when given, is told of every record applied (the parsed value, None
for a deletion) once the state holds it, and `on_live()` each time the reader becomes live: a
user that reacts to a change (an approval arriving) needs no polling. Both run on the
reader's thread; an exception they raise is logged, never kills the reader.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Generic, Literal, TypeVar

import tenacity

from wakeline.infra.settings import KafkaSettings

log = logging.getLogger(__name__)

V = TypeVar("V")
Health = Literal["idle", "catching_up", "live", "broken"]


class StateReader(Generic[V]):
    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        parse: Callable[[bytes, bytes | None], V | None],
        *,
        name: str = "state",
        poll_interval_s: float = 0.05,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        consumer_factory: Callable[[Mapping[str, Any]], Any] | None = None,
        on_apply: Callable[[bytes, V | None], None] | None = None,
        on_live: Callable[[], None] | None = None,
    ) -> None:
        self.kafka = kafka
        self.on_apply = on_apply
        self.on_live = on_live
        self.topic = topic
        self.parse = parse
        self.name = name
        self.poll_interval_s = poll_interval_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.consumer_factory = consumer_factory or _kafka_consumer
        self.health: Health = "idle"
        #: consumer restarts since `start()`
        self.restarts = 0
        self.last_error: str | None = None
        self._state: dict[bytes, V] = {}
        self._building: dict[bytes, V] | None = None
        self._lock = threading.Lock()
        self._live = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the state ------------------------------------------------------------------------
    def get(self, key: bytes) -> V | None:
        return self._state.get(key)

    def snapshot(self) -> dict[bytes, V]:
        return dict(self._state)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one record (the consumer does; tests may too). Never raises for bad bytes."""
        if key is None:
            return  # a compacted topic's records all have keys; this one is not ours
        key = bytes(key)
        try:
            parsed = self.parse(key, value)
        except Exception as e:  # noqa: BLE001 - a parser bug must not kill the reader
            log.error("%s reader: record for key %r dropped: %s", self.name, key[:64], e)
            return
        with self._lock:
            for target in (self._state, self._building):
                if target is None:
                    continue
                if parsed is None:
                    target.pop(key, None)
                else:
                    target[key] = parsed
        if self.on_apply is not None:
            self._tell(self.on_apply, key, parsed)

    def _tell(self, hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception as e:  # noqa: BLE001 - a listener's bug must not kill the reader
            log.error("%s reader: listener %r failed: %s", self.name, hook, e)

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> StateReader[V]:
        if self._thread is None:
            self.health = "catching_up"
            self._thread = threading.Thread(
                target=self._run, name=f"wakeline-{self.name}", daemon=True
            )
            self._thread.start()
        return self

    def start_offline(self) -> StateReader[V]:
        """No consumer: the state is only what `apply` is given, and counts as live."""
        self.health = "live"
        self._live.set()
        if self.on_live is not None:
            self._tell(self.on_live)
        return self

    @property
    def live(self) -> bool:
        return self.health == "live"

    def wait_live(self, timeout: float | None = None) -> bool:
        """Wait until caught up once (True), or `timeout` passed (False)."""
        return self._live.wait(timeout) and self.health == "live"

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the consumer thread --------------------------------------------------------------
    def _run(self) -> None:
        retrying = tenacity.Retrying(
            # tenacity 9.2 deprecates `initial` for `multiplier`, and its jitter is absolute
            # (default 1 s whatever the multiplier): both are given
            wait=tenacity.wait_exponential_jitter(
                multiplier=self.backoff_initial_s,
                jitter=self.backoff_initial_s,
                max=self.backoff_max_s,
            ),
            retry=tenacity.retry_if_exception_type(Exception),
            before_sleep=self._restarting,
            sleep=self._stop.wait,
            reraise=True,
        )
        try:
            retrying(self._consume)
        except Exception:  # noqa: BLE001 - only reached on close during a failure
            log.debug("%s reader stopped after an error", self.name)

    def _restarting(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        self.health = "broken"
        self.restarts += 1
        self.last_error = repr(error)
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "%s reader on %s failed (%r); restarting its consumer in %.2f s (restart %d)",
            self.name,
            self.topic,
            error,
            wait,
            self.restarts,
        )

    def _consume(self) -> None:
        if self._stop.is_set():
            return
        consumer = self.consumer_factory(
            self.kafka.client_config(
                **{
                    "group.id": f"wakeline-{self.name}-{uuid.uuid4()}",
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                    "fetch.wait.max.ms": max(10, int(self.poll_interval_s * 1000)),
                    "auto.offset.reset": "earliest",
                }
            )
        )
        try:
            self._follow(consumer)
        finally:
            try:
                consumer.close()
            except Exception as e:  # noqa: BLE001 - closing a broken consumer may fail too
                log.debug("%s reader: closing the consumer failed: %s", self.name, e)

    def _follow(self, consumer: Any) -> None:
        from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

        partitions = self._partitions(consumer)
        if partitions is None:
            return  # stopped
        with self._lock:
            self.health = "catching_up"
            self._building = {}
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        at_eof: set[int] = set()
        while not self._stop.is_set():
            # consume(n, timeout) returns once it has n messages or the timeout passed: asking
            # for 1000 held every record back for the whole poll interval on a quiet topic
            # (a quarantine reached the gate 25 ms later on average). Wait for the first,
            # then take what else is there without waiting.
            msgs = consumer.consume(1, self.poll_interval_s)
            if msgs:
                msgs += consumer.consume(999, 0)
            for msg in msgs:
                err = msg.error()
                if err is None:
                    self.apply(msg.key(), msg.value())
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_eof.add(msg.partition())
                    if self._building is not None and at_eof >= set(partitions):
                        self._caught_up()
                elif err.fatal() or not err.retriable():
                    raise RuntimeError(f"consumer error: {err}")
                else:
                    log.debug("%s reader: %s", self.name, err)

    def _partitions(self, consumer: Any) -> list[int] | None:
        """The topic's partitions; waits (quietly: the topic may not exist yet) until known."""
        while not self._stop.is_set():
            meta = consumer.list_topics(self.topic, timeout=1.0)
            tmeta = meta.topics.get(self.topic)
            if tmeta is not None and tmeta.error is None and tmeta.partitions:
                return sorted(tmeta.partitions)
            log.debug("%s reader: no partitions for %s yet", self.name, self.topic)
            self._stop.wait(0.5)
        return None

    def _caught_up(self) -> None:
        with self._lock:
            assert self._building is not None
            self._state = self._building
            self._building = None
            was = self.health
            self.health = "live"
        self._live.set()
        if self.on_live is not None:
            self._tell(self.on_live)
        if self.restarts:
            log.warning("%s reader on %s is live again (was %s)", self.name, self.topic, was)
        else:
            log.info("%s reader on %s is live", self.name, self.topic)


def _kafka_consumer(config: Mapping[str, Any]) -> Any:
    from confluent_kafka import Consumer

    return Consumer(dict(config))
