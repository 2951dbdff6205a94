"""Feeding a LedgerVerifier from a bundle file or a LedgerStore.

(The Kafka source lives in wakeline.infra.kafka_source: ledger/ never imports Kafka.)
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .bundle import (
    CHECKPOINT,
    END,
    ENTRY,
    FRAME_NAMES,
    KEY,
    META,
    SCHEMA,
    SEGMENT,
    BundleReader,
    Truncated,
    parse_end,
    parse_meta,
)
from .checkpoints import parse_body, split_note
from .errors import FormatError
from .hashing import DEFAULT_SUITE
from .store import LedgerStore
from .verify import INCOMPLETE, TAMPERED, UNUSABLE, LedgerVerifier, Progress, VerifyReport

_ORDER = {META: 0, KEY: 1, SCHEMA: 2, SEGMENT: 3, ENTRY: 3, CHECKPOINT: 4, END: 5}


def verify_bundle(
    src: BinaryIO | str | Path,
    *,
    trusted_keys: Sequence[str] | None = None,
    decode: object = True,
    progress: Progress | None = None,
    chunk: int = 8 << 20,
) -> VerifyReport:
    """Verify an export bundle with no services: every check of docs/ledger-format.md §9.

    The file is read `chunk` bytes at a time, never whole."""
    if isinstance(src, str | Path):
        try:
            with open(src, "rb") as f:
                return verify_bundle(
                    f, trusted_keys=trusted_keys, decode=decode, progress=progress, chunk=chunk
                )
        except OSError as e:
            v = LedgerVerifier(trusted_keys=trusted_keys, decode=False)
            v.stop(UNUSABLE, "bundle.open", f"cannot read {src}: {e.strerror}")
            return v.finish(complete=False)
    with _gc_paused():
        return _verify_stream(src, trusted_keys, decode, progress, chunk)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: reading allocates millions of short-lived tuples and builds no
    cycles, and the collector's passes over them cost ~15% of verification time."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _verify_stream(
    src: BinaryIO,
    trusted_keys: Sequence[str] | None,
    decode: object,
    progress: Progress | None,
    chunk: int,
) -> VerifyReport:
    v = LedgerVerifier(trusted_keys=trusted_keys, decode=decode, progress=progress)  # type: ignore[arg-type]
    v.keys_are_evidence = True
    counts = dict.fromkeys((KEY, SCHEMA, SEGMENT, ENTRY, CHECKPOINT), 0)
    stage = -1
    complete = False
    pending = 0  # leaves read of a segment that the stream cut short
    try:
        reader = BundleReader(src, chunk)
        while not reader.done and not v.stopped:
            kind, payload, pos = reader.frame()
            order = _ORDER[kind]
            if kind == ENTRY or order < stage or (stage == -1) != (kind == META):
                v.stop(
                    UNUSABLE,
                    "bundle.format",
                    f"{FRAME_NAMES[kind]} frame out of place at byte {pos}",
                )
                break
            stage = order
            if kind in counts:
                counts[kind] += 1
            if kind == META:
                v.begin(*parse_meta(payload))
            elif kind == KEY:
                v.add_key(payload.decode("utf-8", "replace"))
            elif kind == SCHEMA:
                v.add_schema(payload[:8], payload[8:])
            elif kind == SEGMENT:
                rows: list[tuple] = []
                leaves: list[bytes] = []
                try:
                    reader.entries(rows, leaves)
                except Truncated:
                    pending = len(leaves)
                    raise
                counts[ENTRY] += len(leaves)
                columns = list(zip(*rows, strict=True)) if rows else [()] * 7
                v.add_segment(payload, leaves, list(columns[2]), columns[3:])
            elif kind == CHECKPOINT:
                v.add_checkpoint(payload)
            elif kind == END:
                _check_end(v, parse_end(payload), counts)
                complete = True
    except Truncated as e:
        if pending:
            v.report.stats["leaves_unchecked"] = pending
        v.fail(INCOMPLETE, "bundle.truncated", str(e))
        return v.finish(complete=False)
    except FormatError as e:
        v.stop(UNUSABLE, "bundle.format", str(e))
    return v.finish(complete=complete)


def _check_end(v: LedgerVerifier, end: object, counts: dict[int, int]) -> None:
    got = (counts[KEY], counts[SCHEMA], counts[SEGMENT], counts[ENTRY], counts[CHECKPOINT])
    want = tuple(end.__dict__.values())
    if got != want:
        v.fail(
            TAMPERED,
            "bundle.trailer",
            "frame counts differ from the END frame (keys, schemas, segments, entries, "
            "checkpoints)",
            expected=want,
            found=got,
        )


def verify_store(
    store: LedgerStore,
    *,
    trusted_keys: Sequence[str] | None = None,
    public_keys: Sequence[str] = (),
    decode: object = True,
    progress: Progress | None = None,
    tail: TailCheck | None = None,
) -> VerifyReport:
    """Verify what a store holds (PostgreSQL or memory), segment by segment. `tail`, when
    given, is called with the verifier and each partition's last ledgered offset to report
    the records not yet ledgered (wakeline.infra.kafka_source.check_tail reads the broker)."""
    v = LedgerVerifier(trusted_keys=trusted_keys, decode=decode, progress=progress)  # type: ignore[arg-type]
    origin, suite = store_identity(store)
    v.begin(origin, suite)
    for k in public_keys:
        v.add_key(k)
    last_offsets: dict[int, int] = {}
    with _gc_paused():
        for p in store.partitions():
            for h in store.headers(p):
                first = h.first_leaf_index
                entries = list(store.entries(p, first, first + h.leaf_count))
                leaves = [e.leaf for e in entries]
                v.add_segment(h.to_bytes(), leaves, [e.leaf_hash for e in entries])
                last_offsets[p] = h.last_offset
    for note in store.checkpoints():
        v.add_checkpoint(note)
    if tail is not None:
        tail(v, last_offsets)
    return v.finish()


#: (verifier, partition -> last ledgered offset) -> None; reports the unledgered tail
TailCheck = Callable[[LedgerVerifier, dict[int, int]], None]


def store_identity(store: LedgerStore, default_origin: str = "wakeline/ledger") -> tuple[str, str]:
    """(origin, suite name) of a store: from its newest checkpoint and its headers."""
    origin, suite = default_origin, DEFAULT_SUITE.name
    note = store.latest_checkpoint()
    if note is not None:
        try:
            cp = parse_body(split_note(note)[0])
            origin, suite = cp.origin, cp.suite
        except FormatError:
            pass
    for p in store.partitions():
        last = store.last_segment(p)
        if last is not None:
            suite = last[0].suite.name
            break
    return origin, suite
