"""Durable local spool: where events wait while the broker is unreachable.

Layout: `<WAKELINE_HOME>/spool/<name>/` holds a `LOCK` file (flock: one emitter per spool) and
append-only segments `000000000001.seg`, ... Each segment starts with `MAGIC`; each record is

    <u32 length> <u32 crc32(body)> body
    body = <u64 seq> <u32 n>topic <u32 n>key <u32 n>value <u16 count> (<u32 n>name <u32 n>value)*

little-endian; a header value of length 0xFFFFFFFF is None. `seq` is the emitter's emit order:
records can be appended out of emit order (a failed delivery reported after a later event was
spooled), so readers sort by it.

Crash safety: `append(..., sync=True)` returns only after `fsync`, and only then is the event
acknowledged to the caller. On open, the last segment's tail is checked: an incomplete record,
or a final record whose checksum fails, can only be a write that never finished, hence never
acknowledged; it is truncated away (logged). A bad record followed by good ones is corruption,
not a torn tail: `SpoolError`, nothing is dropped.

`WaitJournal` keeps, in the spool's `waiting/` subdirectory, the calls waiting on a gate (an
approval), so a process that dies while one waits leaves them behind for the next to abort.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from wakeline.producers.errors import SpoolError

log = logging.getLogger(__name__)

MAGIC = b"WLSPOOL1"
SEGMENT_SUFFIX = ".seg"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
_FRAME = struct.Struct("<II")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U16 = struct.Struct("<H")
_NONE = 0xFFFFFFFF

Header = tuple[str, bytes | None]


class SpoolRecord(NamedTuple):
    """One Kafka record waiting to be produced, with the emitter's sequence number."""

    seq: int
    topic: str
    key: bytes | None
    value: bytes
    headers: Sequence[Header] = ()


def encode_record(rec: SpoolRecord) -> bytes:
    parts = [_U64.pack(rec.seq)]
    for blob in (rec.topic.encode(), rec.key, rec.value):
        if blob is None:
            parts.append(_U32.pack(_NONE))
        else:
            parts += [_U32.pack(len(blob)), blob]
    parts.append(_U16.pack(len(rec.headers)))
    for name, value in rec.headers:
        raw = name.encode()
        parts += [_U32.pack(len(raw)), raw]
        if value is None:
            parts.append(_U32.pack(_NONE))
        else:
            parts += [_U32.pack(len(value)), value]
    body = b"".join(parts)
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def _decode_body(body: bytes) -> SpoolRecord:
    pos = 8
    (seq,) = _U64.unpack_from(body, 0)

    def blob() -> bytes | None:
        nonlocal pos
        (n,) = _U32.unpack_from(body, pos)
        pos += 4
        if n == _NONE:
            return None
        out = body[pos : pos + n]
        if len(out) != n:
            raise ValueError("field runs past the record")
        pos += n
        return out

    topic = blob()
    key = blob()
    value = blob()
    (count,) = _U16.unpack_from(body, pos)
    pos += 2
    headers = []
    for _ in range(count):
        name = blob()
        headers.append(((name or b"").decode(), blob()))
    if pos != len(body) or topic is None or value is None:
        raise ValueError("record body has trailing or missing bytes")
    return SpoolRecord(seq, topic.decode(), key, value, tuple(headers))


def read_segment(path: Path) -> tuple[list[SpoolRecord], int, str | None]:
    """Records of a segment, the length of its valid prefix, and why the rest is invalid."""
    data = path.read_bytes()
    if len(data) < len(MAGIC):
        return [], 0, "segment shorter than its magic"
    if data[: len(MAGIC)] != MAGIC:
        raise SpoolError(f"{path}: not a spool segment (bad magic)")
    pos = len(MAGIC)
    records: list[SpoolRecord] = []
    while pos < len(data):
        if pos + _FRAME.size > len(data):
            return records, pos, "incomplete record header"
        length, crc = _FRAME.unpack_from(data, pos)
        end = pos + _FRAME.size + length
        if end > len(data):
            return records, pos, f"record of {length} bytes cut at {len(data) - pos - 8}"
        body = data[pos + _FRAME.size : end]
        if zlib.crc32(body) != crc:
            if end == len(data):
                return records, pos, "checksum mismatch in the final record"
            raise SpoolError(f"{path}: checksum mismatch at byte {pos}, before the tail")
        try:
            records.append(_decode_body(body))
        except (struct.error, ValueError, UnicodeDecodeError) as e:
            raise SpoolError(f"{path}: undecodable record at byte {pos}: {e}") from e
        pos = end
    return records, pos, None


class Spool:
    """Append-only, fsync'd, segmented, single-writer spool in one directory."""

    def __init__(self, directory: Path, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._current: Path | None = None
        self._current_size = 0
        self._unsynced = False
        self._open()

    # -- lifecycle ------------------------------------------------------------------------
    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolError(
                f"spool {self.directory} is in use by another emitter; "
                "give this one its own spool name"
            ) from None
        self._lock_fd = fd
        segments = self.segments()
        for seg in segments[:-1]:
            _, valid, why = read_segment(seg)
            if why is not None:
                raise SpoolError(f"{seg}: {why}, but it is not the last segment")
        if segments:
            last = segments[-1]
            _, valid, why = read_segment(last)
            if why is not None:
                log.warning("spool %s: dropping torn tail (%s) at byte %d", last, why, valid)
                with open(last, "r+b") as f:
                    if valid == 0:
                        f.write(MAGIC)
                        valid = len(MAGIC)
                    f.truncate(valid)
                    f.flush()
                    os.fsync(f.fileno())
        self._start_segment()

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None
                if self._current is not None and self._current_size <= len(MAGIC):
                    self._current.unlink(missing_ok=True)
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    # -- segments -------------------------------------------------------------------------
    def segments(self) -> list[Path]:
        return sorted(self.directory.glob("*" + SEGMENT_SUFFIX))

    def _start_segment(self) -> None:
        existing = self.segments()
        number = int(existing[-1].stem) + 1 if existing else 1
        path = self.directory / f"{number:012d}{SEGMENT_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        os.write(fd, MAGIC)
        os.fsync(fd)
        _fsync_dir(self.directory)
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
        self._fd, self._current, self._current_size = fd, path, len(MAGIC)

    def rotate(self) -> list[Path]:
        """Close the current segment; return every segment before the new one (to drain)."""
        with self._lock:
            if self._fd is None:
                raise SpoolError("spool is closed")
            before = [p for p in self.segments() if p != self._current]
            if self._current_size > len(MAGIC):
                before.append(self._current)  # type: ignore[arg-type]
                self._start_segment()
            return sorted(before)

    def discard(self, segments: Iterable[Path]) -> None:
        """Delete fully delivered segments (never the one being written)."""
        with self._lock:
            for seg in segments:
                if seg != self._current:
                    seg.unlink(missing_ok=True)
            _fsync_dir(self.directory)

    # -- records --------------------------------------------------------------------------
    def append(self, records: Sequence[SpoolRecord], *, sync: bool = True) -> None:
        """Append records; with `sync` they are on disk (fsync) when this returns."""
        if not records:
            return
        blob = b"".join(encode_record(r) for r in records)
        with self._lock:
            if self._fd is None:
                raise SpoolError("spool is closed")
            if self._current_size + len(blob) > self.segment_bytes and (
                self._current_size > len(MAGIC)
            ):
                self._start_segment()
            written = os.write(self._fd, blob)
            if written != len(blob):  # O_APPEND regular file: short writes mean disk full
                raise SpoolError(f"spool write short: {written} of {len(blob)} bytes")
            self._current_size += len(blob)
            if sync:
                os.fsync(self._fd)
                self._unsynced = False
            else:
                self._unsynced = True

    def sync(self) -> None:
        with self._lock:
            if self._fd is not None and self._unsynced:
                os.fsync(self._fd)
                self._unsynced = False

    def is_empty(self) -> bool:
        with self._lock:
            return self._current_size <= len(MAGIC) and all(
                p == self._current for p in self.segments()
            )

    def read(self, segments: Iterable[Path] | None = None) -> list[SpoolRecord]:
        """Records of `segments` (default: all), in emit order (`seq`), duplicates kept."""
        self.sync()
        out: list[SpoolRecord] = []
        for seg in self.segments() if segments is None else segments:
            records, _, _ = read_segment(seg)
            out.extend(records)
        out.sort(key=lambda r: r.seq)
        return out

    def max_seq(self) -> int:
        records = self.read()
        return records[-1].seq if records else 0


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the journal of waiting calls --------------------------------------------------------
class WaitJournal:
    """Calls waiting on a gate, one JSON file each (`<intent id>.json`: intent id, workflow,
    run, tool) in `directory`. Entries found on opening are a dead process's: `leftovers`
    hands them out per run (once); entries written by this process are never among them."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._left: dict[tuple[str, str], list[dict[str, str]]] = {}
        for path in sorted(self.directory.glob("*.json")):
            try:
                entry = json.loads(path.read_text())
                run = (str(entry["workflow_id"]), str(entry["run_id"]))
                str(entry["intent_id"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.error("wait journal: unreadable entry %s left as is: %s", path, e)
                continue
            self._left.setdefault(run, []).append(entry)
        for path in self.directory.glob("*.json.tmp"):
            path.unlink(missing_ok=True)  # written by a process that died before renaming

    def add(self, intent_id: str, workflow_id: str, run_id: str, tool: str) -> None:
        entry = {"intent_id": intent_id, "workflow_id": workflow_id, "run_id": run_id, "tool": tool}
        path = self.directory / f"{intent_id}.json"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(entry, sort_keys=True))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def clear(self, intent_id: str) -> None:
        (self.directory / f"{intent_id}.json").unlink(missing_ok=True)

    def leftovers(self, workflow_id: str, run_id: str) -> list[dict[str, str]]:
        """The entries a dead process left for this run (each handed out once)."""
        if not self._left:
            return []
        return self._left.pop((workflow_id, run_id), [])

    @property
    def orphans(self) -> int:
        """Entries of dead processes whose run has not been reopened yet."""
        return sum(len(v) for v in self._left.values())
