"""The compacted-state reader without a broker: a scripted consumer stands in for Kafka."""

from __future__ import annotations

import logging
import threading
from collections import deque
from types import SimpleNamespace

from confluent_kafka import KafkaError

from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.producers.state import StateReader

KAFKA = KafkaSettings(bootstrap="unused:1", topics=Topics("unit."))
TOPIC = "unit.wakeline.state"


class Msg:
    def __init__(self, key=None, value=None, partition=0, eof=False):  # noqa: ANN001
        self._key, self._value, self._partition = key, value, partition
        self._error = KafkaError(KafkaError._PARTITION_EOF) if eof else None

    def error(self):  # noqa: ANN201
        return self._error

    def key(self):  # noqa: ANN201
        return self._key

    def value(self):  # noqa: ANN201
        return self._value

    def partition(self) -> int:
        return self._partition


class Script:
    """Consumers handed out in turn; each plays its list of batches (an Exception raises),
    then idles. Records which consumers were closed."""

    def __init__(self, *runs: list) -> None:
        self.runs = deque(runs)
        self.made = 0
        self.closed = 0
        self.idle = threading.Event()

    def __call__(self, config):  # noqa: ANN001, ANN204
        self.made += 1
        batches = deque(self.runs.popleft() if self.runs else [])
        script = self

        class Consumer:
            def list_topics(self, topic, timeout):  # noqa: ANN001, ANN202
                part = SimpleNamespace(error=None, partitions={0: None, 1: None})
                return SimpleNamespace(topics={topic: part})

            def assign(self, parts):  # noqa: ANN001, ANN202
                assert [p.partition for p in parts] == [0, 1]

            def consume(self, n, timeout):  # noqa: ANN001, ANN202
                if not batches:
                    script.idle.set()
                    threading.Event().wait(timeout)
                    return []
                batch = batches.popleft()
                if isinstance(batch, Exception):
                    raise batch
                return batch

            def close(self):  # noqa: ANN202
                script.closed += 1

        return Consumer()


def parse(key: bytes, value: bytes | None) -> str | None:
    if value == b"boom":
        raise ValueError("parser bug")
    return None if value is None else value.decode()


def reader(script: Script) -> StateReader[str]:
    return StateReader(
        KAFKA,
        TOPIC,
        parse,
        name="test",
        poll_interval_s=0.01,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        consumer_factory=script,
    )


EOF_BOTH = [Msg(partition=0, eof=True), Msg(partition=1, eof=True)]


def test_nothing_happens_before_start_then_it_catches_up_and_goes_live():
    script = Script([[Msg(b"a", b"1"), Msg(b"b", b"2", 1)], [Msg(b"a", None)], EOF_BOTH])
    r = reader(script)
    assert r.health == "idle" and script.made == 0
    r.start()
    try:
        assert r.wait_live(5)
        assert r.snapshot() == {b"b": "2"}  # the tombstone deleted a
        assert r.get(b"b") == "2"
    finally:
        r.close()
    assert script.closed == 1


def test_bad_records_are_dropped_and_logged_never_fatal(caplog):
    script = Script([[Msg(None, b"x"), Msg(b"k", b"boom"), Msg(b"ok", b"1")], EOF_BOTH])
    r = reader(script).start()
    try:
        with caplog.at_level(logging.ERROR):
            assert r.wait_live(5)
        assert r.snapshot() == {b"ok": "1"}
        assert "parser bug" in caplog.text
    finally:
        r.close()


def test_a_consumer_error_restarts_with_backoff_says_so_and_rebuilds_the_state(caplog):
    first = [[Msg(b"gone", b"1"), Msg(b"kept", b"1")], EOF_BOTH, RuntimeError("broker lost")]
    # after the restart the topic no longer has "gone" (deleted and compacted meanwhile)
    second = [[Msg(b"kept", b"2")], EOF_BOTH]
    script = Script(first, second)
    r = reader(script)
    with caplog.at_level(logging.WARNING, logger="wakeline.producers.state"):
        r.start()
        try:
            assert script.idle.wait(5)  # only the second consumer ever idles
            assert r.wait_live(5)
            assert r.snapshot() == {b"kept": "2"}
            assert r.restarts == 1
            assert "RuntimeError('broker lost')" in (r.last_error or "")
        finally:
            r.close()
    messages = [rec.getMessage() for rec in caplog.records]
    assert any("restarting its consumer" in m and "broker lost" in m for m in messages)
    assert any("live again" in m for m in messages)
    assert script.closed == 2


def test_offline_reader_is_live_and_only_applies_what_it_is_given():
    r = StateReader(KAFKA, TOPIC, parse).start_offline()
    assert r.live and r.wait_live(0)
    r.apply(b"k", b"v")
    r.apply(None, b"ignored")
    assert r.snapshot() == {b"k": "v"}
    r.close()
