"""Export bundles: one self-contained, streamed file an auditor verifies with no services.

Layout (docs/ledger-format.md §Bundle): an 8-byte magic, a version byte, then frames
`u8 type | u32 length (big-endian) | payload`, in this order:

    META (1)        canonical JSON {"format":1,"origin":...,"suite":...}
    KEY (2)*        a verifier key string (signed-note format)
    SCHEMA (3)*     8-byte CRC-64-AVRO fingerprint || Avro Parsing Canonical Form
    per partition ascending, per segment ascending:
      SEGMENT (4)   the 166-byte segment header
      ENTRY (5)*    32-byte stored leaf hash || leaf bytes, leaf_count of them
    CHECKPOINT (6)* signed checkpoint notes, oldest first
    END (7)         five u64 counts: keys, schemas, segments, entries, checkpoints

A file that stops before END is incomplete; anything else out of place is unusable.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from .errors import FormatError

MAGIC = b"\x89WKLBDL\n"
VERSION = 1
FORMAT = 1

META, KEY, SCHEMA, SEGMENT, ENTRY, CHECKPOINT, END = 1, 2, 3, 4, 5, 6, 7
FRAME_NAMES = {
    META: "meta",
    KEY: "key",
    SCHEMA: "schema",
    SEGMENT: "segment",
    ENTRY: "entry",
    CHECKPOINT: "checkpoint",
    END: "end",
}
_FRAME = struct.Struct(">BI")
_END = struct.Struct(">QQQQQ")
#: an ENTRY frame's head: type, length, stored leaf hash, then the leaf's fixed fields
_ENTRY_HEAD = struct.Struct(">BI32sBIQq")
_ENTRY_MIN = _ENTRY_HEAD.size - 5
MAX_FRAME = 64 << 20  # a Kafka record is far smaller; anything bigger is corruption


class Truncated(FormatError):
    """The file ends before its END frame."""


def meta_bytes(origin: str, suite: str) -> bytes:
    doc = {"format": FORMAT, "origin": origin, "suite": suite}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_meta(raw: bytes) -> tuple[str, str]:
    """(origin, suite); the JSON must be exactly in canonical form."""
    try:
        doc = json.loads(raw.decode("utf-8"))
        origin, suite, fmt = doc["origin"], doc["suite"], doc["format"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise FormatError(f"bundle meta is not the expected JSON: {e}") from e
    if not isinstance(origin, str) or not isinstance(suite, str) or fmt != FORMAT:
        raise FormatError(f"bundle meta format {fmt!r} or its fields are not supported")
    if set(doc) != {"format", "origin", "suite"} or meta_bytes(origin, suite) != raw:
        raise FormatError("bundle meta is not in canonical form")
    return origin, suite


class BundleWriter:
    """Writes a bundle frame by frame; `close()` writes END. Use as a context manager."""

    def __init__(self, out: BinaryIO, origin: str, suite: str) -> None:
        self._out = out
        self._counts = dict.fromkeys((KEY, SCHEMA, SEGMENT, ENTRY, CHECKPOINT), 0)
        self._stage = META
        out.write(MAGIC + bytes([VERSION]))
        self._frame(META, meta_bytes(origin, suite))

    def _frame(self, kind: int, payload: bytes) -> None:
        if kind < self._stage:
            raise FormatError(f"{FRAME_NAMES[kind]} frame after {FRAME_NAMES[self._stage]}")
        self._stage = kind if kind not in (SEGMENT, ENTRY) else SEGMENT
        self._out.write(_FRAME.pack(kind, len(payload)))
        self._out.write(payload)
        if kind in self._counts:
            self._counts[kind] += 1

    def key(self, vkey: str) -> None:
        self._frame(KEY, vkey.encode("utf-8"))

    def schema(self, fingerprint: bytes, canonical_form: str) -> None:
        if len(fingerprint) != 8:
            raise FormatError(f"fingerprint has {len(fingerprint)} bytes, want 8")
        self._frame(SCHEMA, fingerprint + canonical_form.encode("utf-8"))

    def segment(self, header: bytes, entries: Sequence[tuple[bytes, bytes]]) -> None:
        """A segment header and its (leaf hash, leaf bytes) entries."""
        self._frame(SEGMENT, header)
        pack = _FRAME.pack
        write = self._out.write
        for leaf_hash, leaf in entries:
            write(pack(ENTRY, len(leaf_hash) + len(leaf)))
            write(leaf_hash)
            write(leaf)
        self._counts[ENTRY] += len(entries)

    def checkpoint(self, note: bytes) -> None:
        self._frame(CHECKPOINT, note)

    def close(self) -> None:
        c = self._counts
        self._frame(END, _END.pack(c[KEY], c[SCHEMA], c[SEGMENT], c[ENTRY], c[CHECKPOINT]))
        self._stage = END + 1

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()


@dataclass(frozen=True)
class EndCounts:
    keys: int
    schemas: int
    segments: int
    entries: int
    checkpoints: int


class BundleReader:
    """Reads frames from a bundle stream in big chunks.

    `frame()` returns the next frame; `entries()` bulk-reads a run of ENTRY frames straight
    into two lists, which is the verifier's hot path. FormatError for an impossible frame,
    Truncated when the stream ends before END.
    """

    def __init__(self, src: BinaryIO, chunk: int = 8 << 20) -> None:
        want = MAGIC + bytes([VERSION])
        head = src.read(len(want))
        if len(head) < len(want) and want.startswith(head[: len(MAGIC)]):
            raise Truncated(f"bundle ends after {len(head)} bytes, inside its magic")
        if head[: len(MAGIC)] != MAGIC:
            raise FormatError("not a Wakeline bundle (bad magic)")
        if head[-1] != VERSION:
            raise FormatError(f"bundle version {head[-1]}, this verifier reads {VERSION}")
        self._src = src
        self._chunk = chunk
        self.buf = b""
        self.pos = 0
        self.base = len(head)  # file position of buf[0]
        self.done = False

    @property
    def position(self) -> int:
        return self.base + self.pos

    def _fill(self, need: int) -> bool:
        """Make `need` bytes available at pos; False if the stream ends first."""
        while len(self.buf) - self.pos < need:
            more = self._src.read(max(self._chunk, need))
            if not more:
                return False
            self.buf = self.buf[self.pos :] + more
            self.base += self.pos
            self.pos = 0
        return True

    def _header(self) -> tuple[int, int]:
        if not self._fill(5):
            if len(self.buf) == self.pos:
                raise Truncated(f"bundle ends at byte {self.position} without an END frame")
            raise Truncated(f"bundle ends inside a frame header at byte {self.position}")
        kind, n = _FRAME.unpack_from(self.buf, self.pos)
        if kind not in FRAME_NAMES or n > MAX_FRAME:
            raise FormatError(f"bad frame (type {kind}, length {n}) at byte {self.position}")
        if not self._fill(5 + n):
            raise Truncated(
                f"bundle ends inside a {FRAME_NAMES[kind]} frame at byte {self.position}"
            )
        return kind, n

    def peek(self) -> int:
        """The type of the next frame (after checking it is whole)."""
        return self._header()[0]

    def frame(self) -> tuple[int, bytes, int]:
        """(type, payload, file position) of the next frame."""
        kind, n = self._header()
        at = self.position
        payload = self.buf[self.pos + 5 : self.pos + 5 + n]
        self.pos += 5 + n
        if kind == END:
            if len(self.buf) > self.pos or self._src.read(1):
                raise FormatError(f"bytes after the END frame at byte {self.position}")
            self.done = True
        return kind, payload, at

    def entries(self, rows: list[tuple], leaves: list[bytes]) -> None:
        """Bulk-read consecutive ENTRY frames: per entry one row (frame type, length, stored
        leaf hash, leaf version, partition, offset, timestamp) and the leaf bytes. An entry
        too short for those fields gets a row of Nones after its stored hash (or b"")."""
        unpack = _ENTRY_HEAD.unpack_from
        r_append, l_append = rows.append, leaves.append
        while True:
            buf, pos = self.buf, self.pos
            size = len(buf)
            while pos + _ENTRY_HEAD.size <= size:
                row = unpack(buf, pos)
                end = pos + 5 + row[1]
                if row[0] != ENTRY or row[1] < _ENTRY_MIN or end > size:
                    break
                r_append(row)
                l_append(buf[pos + 37 : end])
                pos = end
            self.pos = pos
            if self.peek() != ENTRY:  # refills, or raises Truncated at the end of the stream
                return
            kind, payload, _ = self.frame()
            if len(payload) >= _ENTRY_MIN:  # whole, just across a buffer boundary
                r_append(_ENTRY_HEAD.unpack(_FRAME.pack(kind, len(payload)) + payload[:_ENTRY_MIN]))
                l_append(payload[32:])
            else:  # too short: the leaf hash check will name it
                stored = payload[:32] if len(payload) >= 32 else b""
                r_append((kind, len(payload), stored, None, None, None, None))
                l_append(payload[len(stored) :])


def read_frames(src: BinaryIO, chunk: int = 8 << 20) -> Iterator[tuple[int, bytes, int]]:
    """Yield (type, payload, file position) of every frame up to and including END."""
    reader = BundleReader(src, chunk)
    while not reader.done:
        yield reader.frame()


def parse_end(payload: bytes) -> EndCounts:
    if len(payload) != _END.size:
        raise FormatError(f"END frame has {len(payload)} bytes, want {_END.size}")
    return EndCounts(*_END.unpack(payload))
