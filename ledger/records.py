"""LedgerRecord, the Kafka record as the ledger sees it, and its exact leaf bytes.

Leaf bytes (all integers big-endian; docs/ledger-format.md §Leaf):

    u8   version (= 1)
    u32  partition
    u64  offset
    i64  timestamp, milliseconds since the epoch (as the broker returned it)
    blob key            blob = i32 length (-1 for null) then that many bytes
    blob value
    u32  header count
    per header, in record order: u32 name length, name (UTF-8), blob header value
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from .errors import FormatError

LEAF_VERSION = 1

_FIXED = struct.Struct(">BIQq")  # version, partition, offset, timestamp
_I32 = struct.Struct(">i")
_FIXED_I32 = struct.Struct(">BIQqi")  # the fixed fields and the key's length
_FIXED_AND_KEY = _FIXED_I32.size
_U32 = struct.Struct(">I")

Headers = tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()

    def leaf_bytes(self) -> bytes:
        return leaf_bytes(self)

    def header(self, name: str) -> bytes | None:
        """The first header called `name`, or None."""
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def event_id(self) -> str | None:
        """The event id the body carries (`body_event_id`); headers are not trusted for it."""
        return body_event_id(self.value)

    @property
    def workflow_id(self) -> str | None:
        """The record key as text: every event is keyed by its workflow id."""
        return self.key.decode("utf-8", "replace") if self.key is not None else None


def record_of_message(m: Any) -> LedgerRecord:
    """A consumed Kafka message (anything with confluent-kafka's `Message` methods) as the
    ledger sees it: its broker timestamp, key, value and headers exactly as returned."""
    return LedgerRecord(
        m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value(), tuple(m.headers() or ())
    )


#: single-object encoding: C3 01 + 8-byte schema fingerprint, then the Avro body
_FRAME_MAGIC = b"\xc3\x01"
_BODY_START = 10


def body_event_id(value: bytes | None) -> str | None:
    """The event id of a Wakeline event frame, read from its body without decoding the rest.

    Every event schema starts with `event_id` (an Avro string: zig-zag varint length, then
    UTF-8), so the id is the first thing after the 10-byte frame header. None when the value
    is not such a frame or the first field is not a valid string. Whether the rest of the
    body decodes is the auditor's verdict; this is only the lookup key.
    """
    if value is None or len(value) <= _BODY_START or value[:2] != _FRAME_MAGIC:
        return None
    pos, shift, raw = _BODY_START, 0, 0
    while True:
        if pos >= len(value) or shift > 63:
            return None
        b = value[pos]
        pos += 1
        raw |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
    n = (raw >> 1) ^ -(raw & 1)
    if n < 0 or pos + n > len(value):
        return None
    try:
        return value[pos : pos + n].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _blob(b: bytes | None) -> bytes:
    if b is None:
        return b"\xff\xff\xff\xff"
    return _I32.pack(len(b)) + b


def leaf_bytes(r: LedgerRecord) -> bytes:
    parts = [_FIXED.pack(LEAF_VERSION, r.partition, r.offset, r.timestamp)]
    parts.append(_blob(r.key))
    parts.append(_blob(r.value))
    parts.append(_U32.pack(len(r.headers)))
    for name, value in r.headers:
        raw = name.encode("utf-8")
        parts.append(_U32.pack(len(raw)) + raw)
        parts.append(_blob(value))
    return b"".join(parts)


def leaf_position(leaf: bytes) -> tuple[int, int, int]:
    """(partition, offset, timestamp) of leaf bytes, without parsing the rest."""
    if len(leaf) < _FIXED.size:
        raise FormatError(f"leaf has {len(leaf)} bytes, want at least {_FIXED.size}")
    version, partition, offset, timestamp = _FIXED.unpack_from(leaf)
    if version != LEAF_VERSION:
        raise FormatError(f"leaf version is {version}, want {LEAF_VERSION}")
    return partition, offset, timestamp


def parse_leaf(leaf: bytes) -> LedgerRecord:
    """The record that `leaf_bytes` encoded; FormatError unless every byte is accounted for.

    Straight-line on purpose: the audit publisher and the verifier parse every leaf."""
    size = len(leaf)
    if size < _FIXED_AND_KEY:
        partition, offset, timestamp = leaf_position(leaf)  # raises with the reason
        raise FormatError(f"leaf ends inside a length at byte {_FIXED.size}")
    version, partition, offset, timestamp, n = _FIXED_I32.unpack_from(leaf)
    if version != LEAF_VERSION:
        raise FormatError(f"leaf version is {version}, want {LEAF_VERSION}")
    pos = _FIXED_AND_KEY
    if n == -1:
        key = None
    elif n < 0 or pos + n > size:
        raise FormatError(f"leaf field of length {n} at byte {pos} overruns the leaf")
    else:
        key = leaf[pos : pos + n]
        pos += n
    if pos + 4 > size:
        raise FormatError(f"leaf ends inside a length at byte {pos}")
    (n,) = _I32.unpack_from(leaf, pos)
    pos += 4
    if n == -1:
        value = None
    elif n < 0 or pos + n > size:
        raise FormatError(f"leaf field of length {n} at byte {pos} overruns the leaf")
    else:
        value = leaf[pos : pos + n]
        pos += n
    if pos + 4 > size:
        raise FormatError("leaf ends before its header count")
    (count,) = _U32.unpack_from(leaf, pos)
    pos += 4
    headers: list[tuple[str, bytes | None]] = []
    for _ in range(count):
        if pos + 4 > size:
            raise FormatError("leaf ends inside a header")
        (n,) = _U32.unpack_from(leaf, pos)
        pos += 4
        if pos + n > size:
            raise FormatError(f"header name of length {n} at byte {pos} overruns the leaf")
        try:
            name = leaf[pos : pos + n].decode("utf-8")
        except UnicodeDecodeError as e:
            raise FormatError(f"header name at byte {pos} is not UTF-8") from e
        pos += n
        if pos + 4 > size:
            raise FormatError(f"leaf ends inside a length at byte {pos}")
        (n,) = _I32.unpack_from(leaf, pos)
        pos += 4
        if n == -1:
            headers.append((name, None))
            continue
        if n < 0 or pos + n > size:
            raise FormatError(f"leaf field of length {n} at byte {pos} overruns the leaf")
        headers.append((name, leaf[pos : pos + n]))
        pos += n
    if pos != size:
        raise FormatError(f"leaf has {size - pos} trailing bytes")
    return LedgerRecord(partition, offset, timestamp, key, value, tuple(headers))
