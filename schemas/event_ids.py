"""Event ids: UUIDv7 (RFC 9562 §5.7), strictly increasing within a process.

Python 3.11 has no uuid7. Layout: 48-bit unix milliseconds, version 7, a 42-bit counter
(RFC 9562 §6.2 method 1: the 12 bits of rand_a and the top 30 bits of rand_b), variant 10,
32 random bits. Sorting the strings sorts by time.

Hot path (two ids per tool call): the random bits come from a buffer of `os.urandom` bytes
refilled every `_RANDOM_BYTES` bytes (one syscall per ~1,000 ids instead of one per id; the
bytes are the same CSPRNG output), and the text of the millisecond part is reused while the
millisecond lasts. A forked child drops both, so it never repeats its parent's bits.
"""

from __future__ import annotations

import os
import threading
import time as _time

_COUNTER_BITS = 42  # RFC 9562 §6.2 method 1: 12 bits rand_a + top 30 bits of rand_b
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1
_RANDOM_BYTES = 4096
_uuid_lock = threading.Lock()
_uuid_state = [0, 0]  # last unix ms, last counter
_random: list = [b"", 0]  # buffered os.urandom bytes, next unread position
_ms_text: list = [-1, ""]  # unix ms, its "tttttttt-tttt-7" prefix


def _reset_uuid_state() -> None:
    _uuid_state[0] = 0
    _uuid_state[1] = 0
    _random[0] = b""
    _random[1] = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_uuid_state)


def _take(n: int) -> bytes:
    """`n` fresh random bytes from the buffer (refilled when short). Caller holds the lock."""
    buf, pos = _random
    if pos + n > len(buf):
        buf = _random[0] = os.urandom(_RANDOM_BYTES)
        pos = 0
    _random[1] = pos + n
    return buf[pos : pos + n]


def new_event_id() -> str:
    """A UUIDv7: 48-bit unix ms, version 7, a 42-bit counter, variant 10, 32 random bits.

    Ids from one process strictly increase (as strings too): within one millisecond the
    counter increments; when the clock stands still or steps back the last timestamp is
    reused; if the counter would overflow the timestamp advances by one ms (RFC 9562 §6.2).
    A new millisecond seeds the counter with 41 random bits (>= 2**41 increments of headroom).
    """
    now_ms = _time.time_ns() // 1_000_000
    with _uuid_lock:
        last_ms, counter = _uuid_state
        if now_ms > last_ms:
            counter = int.from_bytes(_take(6)) >> 7  # 41 bits
        else:
            now_ms = last_ms
            counter += 1
            if counter > _COUNTER_MAX:
                now_ms += 1
                counter = int.from_bytes(_take(6)) >> 7
        _uuid_state[0] = now_ms
        _uuid_state[1] = counter
        tail = int.from_bytes(_take(4))
    return _format(now_ms, counter, tail)


def _format(unix_ms: int, counter: int, tail: int) -> str:
    """The canonical 8-4-4-4-12 text of (ms, 42-bit counter, 32 random bits)."""
    cached_ms, prefix = _ms_text
    if cached_ms != unix_ms:
        ms = unix_ms & 0xFFFF_FFFF_FFFF
        prefix = f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7"
        _ms_text[:] = [unix_ms, prefix]  # one store: readers never see a torn pair
    return (
        f"{prefix}{counter >> 30:03x}-{0x8000 | (counter >> 16) & 0x3FFF:04x}-"
        f"{counter & 0xFFFF:04x}{tail:08x}"
    )


def uuid7_unix_ms(event_id: str) -> int:
    """The millisecond timestamp of a UUIDv7 string."""
    return int(event_id.replace("-", "")[:12], 16)
