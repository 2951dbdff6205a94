"""Decode Wakeline frames with nothing but the .avsc files and fastavro.

This is what a consumer that has never heard of the Wakeline package does, and it is run in
a subprocess where importing `wakeline` fails, to prove the wire contract stands alone:

    python standalone_decode.py <dir with *.avsc> <file of frames>  ->  JSON lines on stdout

The frames file holds, per frame, a 4-byte big-endian length and the frame bytes.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
import sys
from io import BytesIO
from pathlib import Path

sys.modules["wakeline"] = None  # type: ignore[assignment]  # any `import wakeline` now fails

import fastavro  # noqa: E402
from fastavro.schema import fingerprint, to_parsing_canonical_form  # noqa: E402

EMPTY64 = 0xC15D213AA4D7A795  # the Avro spec's CRC-64-AVRO constant


def crc64_avro(data: bytes) -> int:
    """The Avro spec's reference Rabin fingerprint, transcribed from its Java sample."""
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY64 & -(fp & 1))
        table.append(fp)
    fp = EMPTY64
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def load_schemas(folder: Path) -> dict[bytes, dict]:
    """fingerprint (8 bytes, little-endian as framed) -> parsed schema."""
    by_fingerprint: dict[bytes, dict] = {}
    for path in sorted(folder.glob("*.avsc")):
        schema = json.loads(path.read_text())
        canonical = to_parsing_canonical_form(schema)
        ours = crc64_avro(canonical.encode()).to_bytes(8, "little")
        theirs = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        assert ours == theirs, f"{path.name}: spec CRC {ours.hex()} != fastavro {theirs.hex()}"
        by_fingerprint[ours] = fastavro.parse_schema(schema, named_schemas={})
    return by_fingerprint


def decode(frame: bytes, schemas: dict[bytes, dict]) -> dict:
    if frame[:2] != b"\xc3\x01":
        raise ValueError(f"bad magic {frame[:2].hex()}")
    writer = schemas[frame[2:10]]
    body = BytesIO(frame[10:])
    record = fastavro.schemaless_reader(body, writer)
    if body.read():
        raise ValueError("trailing bytes")
    return record


def _plain(value: object) -> object:
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, dt.datetime):  # timestamp-micros comes back as an aware datetime
        delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def main(schema_dir: str, frames_file: str) -> None:
    schemas = load_schemas(Path(schema_dir))
    data = Path(frames_file).read_bytes()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        frame = data[pos + 4 : pos + 4 + length]
        pos += 4 + length
        print(json.dumps(_plain(decode(frame, schemas)), sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
