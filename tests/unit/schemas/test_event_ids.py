"""UUIDv7 event ids (RFC 9562 §5.7): layout, time, and order within a process."""

from __future__ import annotations

import os
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


def _reference_text(unix_ms: int, counter: int, tail: int) -> str:
    """The layout spelled out bit by bit (RFC 9562 §5.7), as the first version built it."""
    value = (
        (unix_ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (counter >> 30) << 64
        | 0b10 << 62
        | (counter & 0x3FFF_FFFF) << 32
        | tail
    )
    return str(uuid.UUID(int=value))


@pytest.mark.parametrize(
    ("unix_ms", "counter", "tail"),
    [
        (0, 0, 0),
        (1_700_000_000_123, 1, 0xFFFF_FFFF),
        (1_700_000_000_123, (1 << 41) + 12345, 0x0000_0001),
        ((1 << 48) - 1, codec_module._COUNTER_MAX, 0xDEAD_BEEF),
        (0x0123_4567_89AB, 0x2AA_AAAA_AAAA, 0x5555_5555),
    ],
)
def test_fast_text_matches_the_bit_layout(unix_ms: int, counter: int, tail: int) -> None:
    assert codec_module._format(unix_ms, counter, tail) == _reference_text(unix_ms, counter, tail)


def test_buffered_randomness_is_consumed_not_repeated(restore_id_state: None) -> None:
    """Across buffer refills every id's random tail is fresh (no slice handed out twice)."""
    n = 3 * codec_module._RANDOM_BYTES // 4  # several refills of the buffer
    ids = [new_event_id() for _ in range(n)]
    tails = [i[-8:] for i in ids]
    assert len(set(tails)) > n * 0.99  # 32 random bits: a handful of collisions at most
    assert ids == sorted(ids)
    assert all(uuid.UUID(i).version == 7 for i in ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_reuse_the_parents_random_bytes() -> None:
    new_event_id()  # the parent's buffer now holds unread random bytes
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next ids, then leave without running pytest's atexit
        try:
            os.write(write, ",".join(new_event_id() for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = f.read().split(",")
    os.waitpid(pid, 0)
    parent = [new_event_id() for _ in range(50)]
    assert len(child) == 50
    # same buffer position, same bytes would give equal tails; fresh bytes do not
    assert not {i[-8:] for i in child} & {i[-8:] for i in parent}
