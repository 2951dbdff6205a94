"""PostgresLedgerStore: the ledger tables of infra/migrations/0002_ledger.sql, via psycopg 3.

Appends run in one transaction under a per-partition advisory lock, so two builders racing
on a partition serialise and the loser sees a duplicate or a conflict. Driver errors become
`StoreError` in exactly one place, `_driver_errors`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import psycopg

from wakeline.errors import StoreError

from .checkpoints import parse_body, split_note
from .errors import ChainConflict
from .hashing import HASH_SIZE
from .segments import SegmentHeader
from .store import (
    MAX_LOOKUP_KEY,
    Entry,
    LedgerStore,
    WorkflowActivity,
    check_append,
    check_checkpoint,
)

log = logging.getLogger(__name__)

_LOCK = 0x57414B4C  # "WAKL": advisory lock class for ledger appends
_CHECKPOINT_LOCK = -1  # second key for the checkpoint chain
_PAGE = 5000

#: errors caused by what a value holds (PostgreSQL class 22 "data exception", 54 "program
#: limit exceeded" such as an index entry too large, a CHECK on a key's size), as opposed to
#: a lost connection or a conflict
_CONTENT_ERRORS = (
    psycopg.errors.DataError,
    psycopg.errors.ProgramLimitExceeded,
    psycopg.errors.CheckViolation,
)

_ENTRY_COLUMNS = "partition, leaf_index, kafka_offset, leaf_hash, leaf, event_id, workflow_id"


@contextmanager
def _driver_errors(what: str) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as e:
        raise StoreError(f"ledger store: {what} failed: {e}") from e


def _entry(row: tuple) -> Entry:
    p, i, off, h, leaf, ev, key = row
    return Entry(
        p, i, off, bytes(h), bytes(leaf),
        bytes(ev).decode("utf-8") if ev is not None else None,
        bytes(key) if key is not None else None,
    )  # fmt: skip


def _event_id_bytes(event_id: str | None) -> bytes | None:
    """Event ids are stored as their UTF-8 bytes (bytea): no text can fail a transaction."""
    if event_id is None:
        return None
    raw = event_id.encode("utf-8", "surrogatepass")
    return raw if len(raw) <= MAX_LOOKUP_KEY else None


class PostgresLedgerStore(LedgerStore):
    def __init__(self, dsn: str, *, connect_timeout: int = 10) -> None:
        with _driver_errors("connect"):
            self._conn = psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout)

    def close(self) -> None:
        self._conn.close()

    # ------------------------------------------------------------------ writes

    def append_segment(
        self,
        header: SegmentHeader,
        entries: Sequence[Entry],
        frontier: Sequence[bytes],
        *,
        hashed_by_caller: bool = False,
    ) -> bool:
        try:
            return self._append(header, entries, frontier, hashed_by_caller)
        except StoreError as e:
            if not isinstance(e.__cause__, _CONTENT_ERRORS):
                raise
            # What a record carries must never stop the ledger: store the segment again
            # without its lookup keys (the leaves keep every byte), and say so loudly.
            log.error(
                "segment stored without lookup keys partition=%d segment=%d reason=%s",
                header.partition, header.segment_number, e.__cause__,
            )  # fmt: skip
            bare = [replace(x, event_id=None, key=None) for x in entries]
            return self._append(header, bare, frontier, hashed_by_caller)

    def _append(
        self,
        header: SegmentHeader,
        entries: Sequence[Entry],
        frontier: Sequence[bytes],
        hashed_by_caller: bool,
    ) -> bool:
        p = header.partition
        raw = header.to_bytes()
        with (
            _driver_errors(f"append partition {p} segment {header.segment_number}"),
            self._conn.transaction(),
            self._conn.cursor() as cur,
        ):
            cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK, p))
            cur.execute(
                "SELECT header FROM ledger_segments WHERE partition = %s AND segment_number = %s",
                (p, header.segment_number),
            )
            row = cur.fetchone()
            if row is not None:
                if bytes(row[0]) == raw:
                    return False
                raise ChainConflict(
                    f"partition {p} segment {header.segment_number} is already stored with "
                    "a different header"
                )
            cur.execute(
                "SELECT header FROM ledger_segments WHERE partition = %s "
                "ORDER BY segment_number DESC LIMIT 1",
                (p,),
            )
            row = cur.fetchone()
            check_append(
                header, entries, SegmentHeader.from_bytes(bytes(row[0])) if row else None,
                hashed_by_caller=hashed_by_caller,
            )  # fmt: skip
            cur.execute(
                "INSERT INTO ledger_segments (partition, segment_number, first_leaf_index, "
                "leaf_count, first_offset, last_offset, tree_size, header, header_hash, "
                "frontier) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    p,
                    header.segment_number,
                    header.first_leaf_index,
                    header.leaf_count,
                    header.first_offset,
                    header.last_offset,
                    header.tree_size,
                    raw,
                    header.hash(),
                    b"".join(frontier),
                ),
            )
            with cur.copy(
                f"COPY ledger_entries ({_ENTRY_COLUMNS}, segment_number) FROM STDIN"
            ) as copy:
                n = header.segment_number
                for e in entries:
                    copy.write_row(
                        (
                            e.partition,
                            e.leaf_index,
                            e.offset,
                            e.leaf_hash,
                            e.leaf,
                            _event_id_bytes(e.event_id),
                            e.key if e.key is None or len(e.key) <= MAX_LOOKUP_KEY else None,
                            n,
                        )  # fmt: skip
                    )
        return True

    def add_checkpoint(self, note: bytes) -> bool:
        cp = parse_body(split_note(note)[0])
        with (
            _driver_errors(f"add checkpoint seq {cp.seq}"),
            self._conn.transaction(),
            self._conn.cursor() as cur,
        ):
            cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK, _CHECKPOINT_LOCK))
            cur.execute("SELECT note FROM ledger_checkpoints WHERE seq = %s", (cp.seq,))
            row = cur.fetchone()
            if row is not None:
                if bytes(row[0]) == note:
                    return False
                raise ChainConflict(f"checkpoint seq {cp.seq} is already stored")
            check_checkpoint(note, self.latest_checkpoint())
            cur.execute(
                "INSERT INTO ledger_checkpoints (seq, checkpoint_hash, note) VALUES (%s, %s, %s)",
                (cp.seq, cp.hash(), note),
            )
        return True

    # ------------------------------------------------------------------ reads

    def _rows(self, sql: str, params: tuple) -> list[tuple]:
        with _driver_errors("read"):
            return self._conn.execute(sql, params).fetchall()  # type: ignore[arg-type]

    def partitions(self) -> list[int]:
        return [
            r[0]
            for r in self._rows("SELECT DISTINCT partition FROM ledger_segments ORDER BY 1", ())
        ]

    def last_segment(self, partition: int) -> tuple[SegmentHeader, list[bytes]] | None:
        rows = self._rows(
            "SELECT header, frontier FROM ledger_segments WHERE partition = %s "
            "ORDER BY segment_number DESC LIMIT 1",
            (partition,),
        )
        if not rows:
            return None
        header, frontier = bytes(rows[0][0]), bytes(rows[0][1])
        nodes = [frontier[i : i + HASH_SIZE] for i in range(0, len(frontier), HASH_SIZE)]
        return SegmentHeader.from_bytes(header), nodes

    def headers(self, partition: int) -> Iterator[SegmentHeader]:
        after = -1
        while True:
            rows = self._rows(
                "SELECT segment_number, header FROM ledger_segments WHERE partition = %s "
                "AND segment_number > %s ORDER BY segment_number LIMIT %s",
                (partition, after, _PAGE),
            )
            for n, raw in rows:
                yield SegmentHeader.from_bytes(bytes(raw))
                after = n
            if len(rows) < _PAGE:
                return

    def entries(self, partition: int, start: int = 0, stop: int | None = None) -> Iterator[Entry]:
        stop_at = stop if stop is not None else 2**63 - 1
        while start < stop_at:
            rows = self._rows(
                f"SELECT {_ENTRY_COLUMNS} FROM ledger_entries WHERE partition = %s "
                "AND leaf_index >= %s AND leaf_index < %s ORDER BY leaf_index LIMIT %s",
                (partition, start, stop_at, _PAGE),
            )
            for row in rows:
                yield _entry(row)
            if len(rows) < _PAGE:
                return
            start = rows[-1][1] + 1

    def entry_by_event_id(self, event_id: str) -> Entry | None:
        rows = self._rows(
            f"SELECT {_ENTRY_COLUMNS} FROM ledger_entries WHERE event_id = %s "
            "ORDER BY partition, leaf_index LIMIT 1",
            (event_id.encode("utf-8", "surrogatepass"),),
        )
        return _entry(rows[0]) if rows else None

    def entries_for_workflow(self, workflow_id: str) -> list[Entry]:
        rows = self._rows(
            f"SELECT {_ENTRY_COLUMNS} FROM ledger_entries WHERE workflow_id = %s "
            "ORDER BY partition, leaf_index",
            (workflow_id.encode("utf-8", "surrogatepass"),),
        )
        return [_entry(r) for r in rows]

    def workflows(self, limit: int | None = None) -> list[WorkflowActivity]:
        # the leaf's timestamp: i64 big-endian at bytes 13..20 (ledger/records.py), read as
        # a signed bigint through bit(64)
        ts = "('x' || encode(substring(leaf from 14 for 8), 'hex'))::bit(64)::bigint"
        rows = self._rows(
            f"SELECT workflow_id, count(*), array_agg(DISTINCT partition), min({ts}), "
            f"max({ts}) AS last_ms FROM ledger_entries WHERE workflow_id IS NOT NULL "
            "GROUP BY workflow_id ORDER BY last_ms DESC, workflow_id LIMIT %s",
            (limit,),
        )
        return [
            WorkflowActivity(bytes(k), n, tuple(sorted(p)), first, last)
            for k, n, p, first, last in rows
        ]

    def checkpoints(self) -> Iterator[bytes]:
        after = -1
        while True:
            rows = self._rows(
                "SELECT seq, note FROM ledger_checkpoints WHERE seq > %s ORDER BY seq LIMIT %s",
                (after, _PAGE),
            )
            for seq, note in rows:
                yield bytes(note)
                after = seq
            if len(rows) < _PAGE:
                return

    def latest_checkpoint(self) -> bytes | None:
        rows = self._rows("SELECT note FROM ledger_checkpoints ORDER BY seq DESC LIMIT 1", ())
        return bytes(rows[0][0]) if rows else None

    def leaf_hashes(self, partition: int, stop: int | None = None) -> list[bytes]:
        stop_at = stop if stop is not None else 2**63 - 1
        rows = self._rows(
            "SELECT leaf_hash FROM ledger_entries WHERE partition = %s AND leaf_index < %s "
            "ORDER BY leaf_index",
            (partition, stop_at),
        )
        return [bytes(r[0]) for r in rows]
