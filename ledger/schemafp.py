"""CRC-64-AVRO, the Avro schema fingerprint, so bundles can be checked without fastavro."""

from __future__ import annotations

_EMPTY = 0xC15D213AA4D7A795


def _table() -> list[int]:
    out = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        out.append(fp)
    return out


_TABLE = _table()


def crc64_avro(data: bytes) -> bytes:
    """The fingerprint as the 8 little-endian bytes a single-object frame carries."""
    fp = _EMPTY
    for b in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ b) & 0xFF]
    return fp.to_bytes(8, "little")
