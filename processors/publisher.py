"""After a segment is persisted: its header goes to the ledger topic (the runner produces
it, `header_record` says how; processors/service.py).

What has been published is recorded in PostgreSQL (`processor_publications`, migration
0005) only after the producer confirmed delivery, so a builder killed between the
database commit and the broker's acknowledgement republishes on resume (at-least-once:
a consumer may see a header twice, byte-identical; dedupe by partition and segment number).
Audit and DLQ records follow from the published headers (auditor.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import psycopg

from wakeline.errors import StoreError
from wakeline.ledger.segments import SegmentHeader

log = logging.getLogger(__name__)


def header_record(header: SegmentHeader) -> tuple[int, bytes, bytes]:
    """(ledger-topic partition, key, value) of a segment header: the events partition's
    number as key (ASCII decimal) and the header's exact bytes as value, on the same
    partition number of the ledger topic so each partition's chain stays in order."""
    return header.partition, str(header.partition).encode(), header.to_bytes()


class PublicationLog:
    """Which segments have been published, per ledger topic and partition (migration 0005)."""

    def __init__(self, dsn: str, ledger_topic: str) -> None:
        self.dsn = dsn
        self.ledger_topic = ledger_topic
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            except psycopg.Error as e:
                raise StoreError(f"cannot connect for publication log: {e}") from e
        return self._conn

    def mark(self, headers: Sequence[SegmentHeader]) -> None:
        if not headers:
            return
        rows = [(self.ledger_topic, h.partition, h.segment_number) for h in headers]
        try:
            with self._connection().cursor() as cur:
                cur.executemany(
                    "INSERT INTO processor_publications (ledger_topic, partition, segment_number)"
                    " VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    rows,
                )
        except psycopg.Error as e:
            self.close()
            raise StoreError(f"cannot record publication: {e}") from e

    def last_published(self, partition: int) -> int:
        """Highest segment number published for `partition`; -1 if none."""
        try:
            row = (
                self._connection()
                .execute(
                    "SELECT coalesce(max(segment_number), -1) FROM processor_publications"
                    " WHERE ledger_topic = %s AND partition = %s",
                    (self.ledger_topic, partition),
                )
                .fetchone()
            )
        except psycopg.Error as e:
            self.close()
            raise StoreError(f"cannot read publication log: {e}") from e
        return int(row[0]) if row else -1

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
