"""What every service of the example world shares: errors, the schema, idempotency, the
count of calls, and failures on demand.

Every operation runs through `run`:

1. a row in `world.calls` records the request (its own autocommitted statement, so a request
   is counted even when it fails or its caller dies mid-call);
2. in one transaction, the idempotency key is claimed (`INSERT ... ON CONFLICT DO NOTHING`
   on the key's primary key). A second caller with the same key blocks on that row until the
   first commits (then it reads the stored answer: deduplicated) or rolls back (then it acts);
3. an injected fault, if one matches, fires now (its use is committed at once, on the
   autocommitted connection, so "fail twice" means twice even though the effect rolls back);
4. the effect, the stored answer and the call's outcome `performed` commit together: the
   world changed exactly when the key was used, and the count says so.

Failures are not stored under the key: a retry with the same key after a failure acts again.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb

#: the schema's tables, truncated by `reset`
TABLES = (
    "calls",
    "idempotency",
    "faults",
    "refunds",
    "charges",
    "crm_versions",
    "crm_records",
    "email_outbox",
    "inventory_reservations",
    "inventory_stock",
    "vms",
)
MAX_KEY_LENGTH = 255
_INSTALL_LOCK = 0x776F726C64  # "world": serialises concurrent installs


# -- errors ---------------------------------------------------------------------------------
class WorldError(Exception):
    """Anything an operation of the example world refuses. `retryable`: try again later."""

    retryable = False


class TransientFailure(WorldError):
    """The service is unavailable for now (an injected fault); the same call may succeed."""

    retryable = True


class PermanentFailure(WorldError):
    """The call will never succeed as it is."""


class InvalidRequest(PermanentFailure):
    """The arguments are wrong (a negative amount, a missing idempotency key)."""


class NotFound(PermanentFailure):
    """The charge, record, message, reservation or VM does not exist."""


class Conflict(PermanentFailure):
    """The state does not allow it (already refunded, already released, changed since)."""


class TooLate(Conflict):
    """An e-mail that was delivered cannot be recalled; only a correction is left."""


class OutOfStock(Conflict):
    """Not enough stock left to reserve."""


class IdempotencyConflict(PermanentFailure):
    """The idempotency key was used before by another operation or with other arguments."""


# -- schema ---------------------------------------------------------------------------------
def install(dsn: str) -> None:
    """Create the `world` schema and its tables (idempotent, safe to run concurrently)."""
    sql = resources.files("wakeline_world").joinpath("schema.sql").read_text()
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INSTALL_LOCK,))
        conn.execute(sql)


def reset(dsn: str) -> None:
    """Empty every table of the world (installing it first if needed); for tests."""
    install(dsn)
    tables = ", ".join(f"world.{t}" for t in TABLES)
    with psycopg.connect(dsn) as conn:
        conn.execute(f"TRUNCATE {tables} RESTART IDENTITY")


# -- counting -------------------------------------------------------------------------------
OUTCOMES = ("performed", "deduplicated", "failed")


def stats(dsn: str) -> dict[str, dict[str, int]]:
    """Per operation: how often it was `requested`, and how often it was `performed`,
    `deduplicated` (a repeated key answered from the store) or `failed`; `unfinished` are
    requests without an outcome (running now, or their caller died mid-call)."""
    out: dict[str, dict[str, int]] = {}
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT operation, outcome, count(*) FROM world.calls GROUP BY operation, outcome"
        ).fetchall()
    for operation, outcome, n in rows:
        entry = out.setdefault(
            operation, {"requested": 0, **dict.fromkeys(OUTCOMES, 0), "unfinished": 0}
        )
        entry["requested"] += n
        entry[outcome or "unfinished"] += n
    return out


def performed(dsn: str, operation: str) -> dict[str, int]:
    """Subject (the charge a refund undid, the record, the message ...) -> how often
    `operation` acted on it: "refund performed exactly once per charge" is
    `set(performed(dsn, "payments.refund").values()) == {1}`."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT subject, count(*) FROM world.calls WHERE operation = %s "
            "AND outcome = 'performed' GROUP BY subject",
            (operation,),
        ).fetchall()
    return {subject: n for subject, n in rows}


def calls(dsn: str, operation: str | None = None) -> list[dict[str, Any]]:
    """Every request, oldest first (optionally of one operation)."""
    query = "SELECT id, at, operation, idempotency_key, subject, outcome, error FROM world.calls"
    params: tuple[Any, ...] = ()
    if operation is not None:
        query += " WHERE operation = %s"
        params = (operation,)
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(query + " ORDER BY id", params)
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur]


# -- failures on demand ---------------------------------------------------------------------
FaultKind = Literal["transient", "permanent", "delay"]


def inject(
    dsn: str,
    operation: str,
    kind: FaultKind = "transient",
    *,
    times: int | None = 1,
    match: str | None = None,
    delay_s: float = 0.0,
    message: str | None = None,
) -> int:
    """Make `operation` misbehave: `transient` raises `TransientFailure` `times` times (None:
    forever), `permanent` raises `PermanentFailure` on every call, `delay` sleeps `delay_s`
    while holding the idempotency key (a slow service). `match` limits it to one idempotency
    key or one subject (a charge id, a record id, a message id ...). Returns the fault's id."""
    if kind not in ("transient", "permanent", "delay"):
        raise InvalidRequest(f"fault kind {kind!r} is not transient, permanent or delay")
    if times is not None and times < 0:
        raise InvalidRequest("times must be >= 0 (or None for forever)")
    remaining = None if kind == "permanent" else times
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "INSERT INTO world.faults (operation, match, kind, remaining, delay_s, message) "
            "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (operation, match, kind, remaining, delay_s, message),
        ).fetchone()
    assert row is not None
    return int(row[0])


def clear_faults(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM world.faults")


def fired(dsn: str, fault_id: int) -> int:
    """How often fault `fault_id` fired."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT fired FROM world.faults WHERE id = %s", (fault_id,)).fetchone()
    if row is None:
        raise NotFound(f"no fault {fault_id}")
    return int(row[0])


def _fire_fault(ctl: psycopg.Connection, operation: str, key: str, subject: str | None) -> None:
    row = ctl.execute(
        "UPDATE world.faults SET fired = fired + 1, remaining = remaining - 1 WHERE id = ("
        " SELECT id FROM world.faults WHERE operation = %s"
        " AND (match IS NULL OR match = %s OR match = %s)"
        " AND (remaining IS NULL OR remaining > 0) ORDER BY id LIMIT 1 FOR UPDATE"
        ") RETURNING kind, delay_s, message",
        (operation, key, subject),
    ).fetchone()
    if row is None:
        return
    kind, delay_s, message = row
    if kind == "delay":
        time.sleep(delay_s)
        return
    text = message or f"{operation} failed on purpose ({kind} fault injected by a test)"
    raise TransientFailure(text) if kind == "transient" else PermanentFailure(text)


# -- connections ----------------------------------------------------------------------------
class _Connections:
    """One thread's autocommit connections, two per database (the last few databases):
    opening two per call cost 11 of 16 ms on the dev machine. Closed with the thread."""

    MAX_DATABASES = 4

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.by_dsn: OrderedDict[str, tuple[psycopg.Connection, psycopg.Connection]] = OrderedDict()

    def get(self, dsn: str) -> tuple[psycopg.Connection, psycopg.Connection]:
        pair = self.by_dsn.pop(dsn, None)
        if pair is not None and any(c.closed or c.broken for c in pair):
            _close(pair)
            pair = None
        if pair is None:
            pair = (psycopg.connect(dsn, autocommit=True), psycopg.connect(dsn, autocommit=True))
        self.by_dsn[dsn] = pair
        while len(self.by_dsn) > self.MAX_DATABASES:
            _close(self.by_dsn.popitem(last=False)[1])
        return pair

    def close(self, getpid: Callable[[], int] = os.getpid) -> None:
        if self.pid == getpid():  # a forked child must not close its parent's sockets
            while self.by_dsn:
                _close(self.by_dsn.popitem()[1])

    __del__ = close  # when the thread ends


def _close(pair: tuple[psycopg.Connection, ...]) -> None:
    for conn in pair:
        with contextlib.suppress(Exception):
            conn.close()


_local = threading.local()
_caches: weakref.WeakSet[_Connections] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for cache in list(_caches):
        cache.close()


def connections(dsn: str) -> tuple[psycopg.Connection, psycopg.Connection]:
    """This thread's two autocommit connections to `dsn`: one for statements that must
    commit on their own (the count, the faults), one for the effect's transaction."""
    cache = getattr(_local, "cache", None)
    if cache is None or cache.pid != os.getpid():
        cache = _local.cache = _Connections()
        _caches.add(cache)
    return cache.get(dsn)


# -- the call path --------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def request_digest(operation: str, request: Mapping[str, Any]) -> str:
    """SHA-256 of the operation and its arguments (canonical JSON). Only the digest is kept:
    the arguments may hold a card number."""
    text = json.dumps([operation, request], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def run(
    dsn: str,
    operation: str,
    idempotency_key: str,
    subject: str | None,
    request: Mapping[str, Any],
    act: Callable[[psycopg.Connection], dict[str, Any]],
) -> dict[str, Any]:
    """Run `act` (the effect, inside the transaction that claims the key) at most once per
    idempotency key; a repeated key gets the first answer. See the module docstring."""
    ctl, tx = connections(dsn)
    try:
        return _run(ctl, tx, operation, idempotency_key, subject, request, act)
    except psycopg.OperationalError as e:  # the connection, not the request: try again
        raise TransientFailure(f"{operation}: the database is unreachable: {e}") from e


def _run(
    ctl: psycopg.Connection,
    tx: psycopg.Connection,
    operation: str,
    idempotency_key: str,
    subject: str | None,
    request: Mapping[str, Any],
    act: Callable[[psycopg.Connection], dict[str, Any]],
) -> dict[str, Any]:
    row = ctl.execute(
        "INSERT INTO world.calls (operation, idempotency_key, subject) VALUES (%s, %s, %s) "
        "RETURNING id",
        (
            operation,
            idempotency_key if isinstance(idempotency_key, str) else None,
            None if subject is None else str(subject),
        ),
    ).fetchone()
    assert row is not None
    call_id = row[0]
    try:
        response, outcome = _claim_and_act(
            ctl, tx, call_id, operation, idempotency_key, subject, request, act
        )
    except BaseException as e:
        with contextlib.suppress(Exception):  # the caller may be going away
            ctl.execute(
                "UPDATE world.calls SET outcome = 'failed', error = %s WHERE id = %s",
                (f"{type(e).__name__}: {e}"[:2000], call_id),
            )
        raise
    if outcome == "deduplicated":
        ctl.execute("UPDATE world.calls SET outcome = 'deduplicated' WHERE id = %s", (call_id,))
    return response


def _claim_and_act(
    ctl: psycopg.Connection,
    tx: psycopg.Connection,
    call_id: int,
    operation: str,
    key: str,
    subject: str | None,
    request: Mapping[str, Any],
    act: Callable[[psycopg.Connection], dict[str, Any]],
) -> tuple[dict[str, Any], str]:
    if not isinstance(key, str) or not key.strip():
        raise InvalidRequest(f"{operation}: an idempotency key (a non-empty string) is required")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest(f"{operation}: the idempotency key is over {MAX_KEY_LENGTH} chars")
    digest = request_digest(operation, request)
    with tx.transaction():
        claimed = tx.execute(
            "INSERT INTO world.idempotency (key, operation, request_digest, response, call_id) "
            "VALUES (%s, %s, %s, 'null', %s) ON CONFLICT (key) DO NOTHING RETURNING key",
            (key, operation, digest, call_id),
        ).fetchone()
        if claimed is None:  # used before (and committed: a running claim blocks the insert)
            row = tx.execute(
                "SELECT operation, request_digest, response FROM world.idempotency WHERE key = %s",
                (key,),
            ).fetchone()
            assert row is not None
            if row[0] != operation:
                raise IdempotencyConflict(
                    f"{operation}: idempotency key {key!r} was already used for {row[0]}"
                )
            if row[1] != digest:
                raise IdempotencyConflict(
                    f"{operation}: idempotency key {key!r} was already used with other arguments"
                )
            return row[2], "deduplicated"
        _fire_fault(ctl, operation, key, subject)
        response = act(tx)
        tx.execute(
            "UPDATE world.idempotency SET response = %s WHERE key = %s", (Jsonb(response), key)
        )
        tx.execute("UPDATE world.calls SET outcome = 'performed' WHERE id = %s", (call_id,))
        return response, "performed"
