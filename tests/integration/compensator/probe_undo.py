"""The example world's compensating actions (`wakeline_world.undo`), each attempt also
recorded in `probe.attempts` of the world's database: which process ran the handler, with
which idempotency key, from when to when (the database's clock, so every process agrees).

    PYTHONPATH=<this folder> wakeline compensator --handlers probe_undo

The rebalance test reads the rows back: two attempts of one key by different processes
must never overlap in time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import psycopg

from wakeline.compensator.registry import (
    CompensationRegistry,
    CompensationRequest,
    Outcome,
    load_handlers,
)
from wakeline_world import undo

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS probe;
CREATE TABLE IF NOT EXISTS probe.attempts (
    id              bigserial PRIMARY KEY,
    pid             integer NOT NULL,
    idempotency_key text NOT NULL,
    attempt         integer NOT NULL,
    started         timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended           timestamptz
);
"""

#: the world's tools, so the start-up check still holds the handlers to them
TOOLS = undo.TOOLS
HANDLERS = CompensationRegistry()

_local = threading.local()


def install(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)


def _conn() -> psycopg.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(undo.WORLD_DSN.read(os.environ), autocommit=True)
    return conn


def _probed(fn: Callable[[CompensationRequest], Outcome]) -> Callable[..., Outcome]:
    def run(req: CompensationRequest) -> Outcome:
        row = (
            _conn()
            .execute(
                "INSERT INTO probe.attempts (pid, idempotency_key, attempt) VALUES (%s, %s, %s) "
                "RETURNING id",
                (os.getpid(), req.idempotency_key, req.attempt),
            )
            .fetchone()
        )
        try:
            return fn(req)
        finally:
            _conn().execute(
                "UPDATE probe.attempts SET ended = clock_timestamp() WHERE id = %s", (row[0],)
            )

    return run


for _h in load_handlers(["wakeline_world.undo"]).handlers:
    HANDLERS.register(_h.name, _probed(_h.fn), safe_if_unknown=_h.safe_if_unknown)
