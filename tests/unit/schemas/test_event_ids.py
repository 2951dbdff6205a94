"""UUIDv7 event ids (RFC 9562 §5.7): layout, time, and order within a process."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from wakeline.schemas import event_ids as codec_module
from wakeline.schemas import new_event_id, uuid7_unix_ms


@pytest.fixture
def restore_id_state() -> Iterator[None]:
    """Tests that fake the clock must not leave future timestamps to later tests."""
    saved = list(codec_module._uuid_state)
    yield
    codec_module._uuid_state[:] = saved


def test_layout_is_a_version_7_rfc_variant_uuid() -> None:
    parsed = uuid.UUID(new_event_id())
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == str(parsed).lower()


def test_timestamp_is_the_unix_millisecond_now() -> None:
    before = time.time_ns() // 1_000_000
    event_id = new_event_id()
    after = time.time_ns() // 1_000_000
    assert before <= uuid7_unix_ms(event_id) <= after + 1


def test_ids_strictly_increase_within_a_process() -> None:
    ids = [new_event_id() for _ in range(20_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert [uuid.UUID(i).int for i in ids] == sorted(uuid.UUID(i).int for i in ids)


def test_ids_are_time_ordered_across_milliseconds() -> None:
    first = new_event_id()
    time.sleep(0.005)
    second = new_event_id()
    assert uuid7_unix_ms(second) > uuid7_unix_ms(first)
    assert second > first


def test_a_clock_stepping_back_does_not_break_the_order(
    monkeypatch: pytest.MonkeyPatch, restore_id_state: None
) -> None:
    first = new_event_id()
    real = time.time_ns()
    monkeypatch.setattr(codec_module._time, "time_ns", lambda: real - 60_000_000_000)
    second = new_event_id()
    assert second > first
    assert uuid7_unix_ms(second) == uuid7_unix_ms(first)


def test_counter_overflow_advances_the_timestamp(
    monkeypatch: pytest.MonkeyPatch, restore_id_state: None
) -> None:
    frozen = time.time_ns() + 10_000_000_000  # ahead of anything issued so far
    monkeypatch.setattr(codec_module._time, "time_ns", lambda: frozen)
    first = new_event_id()
    codec_module._uuid_state[1] = codec_module._COUNTER_MAX  # as if 2**42 ids in this ms
    second = new_event_id()
    assert second > first
    assert uuid7_unix_ms(second) == uuid7_unix_ms(first) + 1


def test_ids_are_unique_across_threads() -> None:
    out: list[list[str]] = [[] for _ in range(4)]

    def work(slot: list[str]) -> None:
        slot.extend(new_event_id() for _ in range(5_000))

    threads = [threading.Thread(target=work, args=(slot,)) for slot in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for slot in out for i in slot]
    assert len(set(everything)) == len(everything)
    for slot in out:
        assert slot == sorted(slot)
