"""Event ids: UUIDv7 (RFC 9562 §5.7), strictly increasing within a process.

Python 3.11 has no uuid7. Layout: 48-bit unix milliseconds, version 7, a 42-bit counter
(RFC 9562 §6.2 method 1: the 12 bits of rand_a and the top 30 bits of rand_b), variant 10,
32 random bits. Sorting the strings sorts by time.
"""

from __future__ import annotations

import os
import threading
import time as _time

_COUNTER_BITS = 42  # RFC 9562 §6.2 method 1: 12 bits rand_a + top 30 bits of rand_b
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1
_uuid_lock = threading.Lock()
_uuid_state = [0, 0]  # last unix ms, last counter


def _reset_uuid_state() -> None:
    _uuid_state[0] = 0
    _uuid_state[1] = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_uuid_state)


def new_event_id() -> str:
    """A UUIDv7: 48-bit unix ms, version 7, a 42-bit counter, variant 10, 32 random bits.

    Ids from one process strictly increase (as strings too): within one millisecond the
    counter increments; when the clock stands still or steps back the last timestamp is
    reused; if the counter would overflow the timestamp advances by one ms (RFC 9562 §6.2).
    """
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits: 41 for a seed, 32 for the tail
    now_ms = _time.time_ns() // 1_000_000
    with _uuid_lock:
        last_ms, counter = _uuid_state
        if now_ms > last_ms:
            counter = rand >> 39  # fresh 41-bit seed: leaves >= 2**41 increments of headroom
        else:
            now_ms = last_ms
            counter += 1
            if counter > _COUNTER_MAX:
                now_ms += 1
                counter = rand >> 39
        _uuid_state[0] = now_ms
        _uuid_state[1] = counter
    value = (
        (now_ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (counter >> 30) << 64
        | 0b10 << 62
        | (counter & 0x3FFF_FFFF) << 32
        | (rand & 0xFFFF_FFFF)
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7_unix_ms(event_id: str) -> int:
    """The millisecond timestamp of a UUIDv7 string."""
    return int(event_id.replace("-", "")[:12], 16)
