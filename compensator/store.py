"""The compensator's state in PostgreSQL (tables of infra/migrations/0006_compensator.sql).

Three kinds of writer share it, each with its own rule:

- the **processor** (the runner's sink thread) records what it reads from the events topic:
  the events a plan is computed from, plans, their actions and escalation tasks. Every one of
  its transactions first locks its partition's row and checks the **fencing epoch** it got
  when the partition was assigned (`claim`): a process the group has moved on from gets
  `Fenced` and writes nothing. Its writes are idempotent (keys are event ids and offsets),
  so redoing a batch after a crash changes nothing.
- the **executor** runs actions under a **lease**: `lease` takes an action only if it is
  pending, or running under a lease that has expired, and only while the process still holds
  the partition's epoch; it returns a token that every later write of that attempt must show
  (`renew`, `finish`). A second process therefore never runs an action while the first one's
  lease is alive, and the first one renews it for as long as its handler runs: if that
  process is killed, the lease lapses and the next owner runs the action again, with the same
  idempotency key. Times are the database's (`now()`), so process clocks do not matter.
- operators (`wakeline incidents`) change tasks only.

Workflow ids are stored as bytes (`workflow_key`); text columns are scrubbed of NUL.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from wakeline.compensator import tasks
from wakeline.compensator.registry import CompensatorError
from wakeline.infra.db import connect

TERMINAL = ("done", "nothing", "failed", "cancelled")


class Fenced(CompensatorError):
    """Another process was assigned the partition since this one claimed it."""


def pg_text(value: object, limit: int = 100_000) -> str:
    """`value` as text PostgreSQL accepts: NUL replaced, bounded."""
    text = value if isinstance(value, str) else str(value)
    text = text.replace("\x00", "\ufffd")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.encode("utf-8", "replace").decode("utf-8")


def workflow_key(workflow_id: str) -> bytes:
    return workflow_id.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class StoredEvent:
    partition: int
    offset: int
    value: bytes


@dataclass(frozen=True)
class Plan:
    quarantine_id: str
    partition: int
    workflow_key: bytes
    workflow_id: str
    state: str
    value: bytes | None = None  # the Quarantine event's frame (for republishing)


@dataclass(frozen=True)
class Action:
    quarantine_id: str
    intent_id: str
    seq: int
    compensation: str
    idempotency_key: str
    tool: str
    run_id: str
    state: str
    attempts: int
    failures: int
    detail: str | None
    external_ids: Mapping[str, str]
    lease_live: bool = False
    waiting: bool = False  # a backoff (not_before) not yet over


@dataclass(frozen=True)
class Lease:
    quarantine_id: str
    intent_id: str
    token: int
    attempt: int
    failures: int


class CompensatorStore:
    """One connection per thread (psycopg connections are not shared between threads)."""

    def __init__(self, dsn: str, topic: str) -> None:
        self.dsn = dsn
        self.topic = topic
        self._local = threading.local()
        self._all: list[psycopg.Connection] = []
        self._lock = threading.Lock()

    # -- connections ----------------------------------------------------------------------
    def _conn(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            # autocommit: `transaction()` still makes real transactions (BEGIN ... COMMIT);
            # `statement()` runs a statement atomic by itself in one round trip
            conn = connect(self.dsn, autocommit=True)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Cursor]:
        conn = self._conn()
        try:
            with conn.transaction(), conn.cursor() as cur:
                yield cur
        except psycopg.OperationalError:
            self.reset()  # the connection may be gone: the next call opens a new one
            raise

    @contextmanager
    def statement(self) -> Iterator[psycopg.Cursor]:
        """A cursor for one statement that is atomic by itself (an UPDATE ... RETURNING, a
        SELECT): one round trip, where `transaction()` adds a BEGIN and a COMMIT. The
        executor makes a few of these per action; they were most of its time."""
        conn = self._conn()
        try:
            with conn.cursor() as cur:
                yield cur
        except psycopg.OperationalError:
            self.reset()
            raise

    def reset(self) -> None:
        """Drop this thread's connection."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may fail too
                conn.close()

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()

    # -- partitions -----------------------------------------------------------------------
    def claim(self, partitions: Sequence[int], owner: str) -> dict[int, int]:
        """Bump each partition's fencing epoch and make it ours; partition -> epoch."""
        out: dict[int, int] = {}
        with self.transaction() as cur:
            for p in sorted(partitions):
                cur.execute(
                    "INSERT INTO compensator_partitions (topic, partition, epoch, owner) "
                    "VALUES (%s, %s, 1, %s) ON CONFLICT (topic, partition) DO UPDATE SET "
                    "epoch = compensator_partitions.epoch + 1, owner = excluded.owner, "
                    "updated_at = now() RETURNING epoch",
                    (self.topic, p, owner),
                )
                row = cur.fetchone()
                assert row is not None
                out[p] = int(row[0])
        return out

    def check_epochs(self, cur: psycopg.Cursor, epochs: Mapping[int, int]) -> None:
        """Lock the partitions' rows (claims wait for us; in partition order, as `claim`
        takes them) and check they are still ours: `Fenced` otherwise."""
        cur.execute(
            "SELECT partition, epoch, owner FROM compensator_partitions WHERE topic = %s AND "
            "partition = ANY(%s) ORDER BY partition FOR UPDATE",
            (self.topic, sorted(epochs)),
        )
        found = {int(r[0]): (int(r[1]), r[2]) for r in cur.fetchall()}
        for p, epoch in sorted(epochs.items()):
            now = found.get(p)
            if now is None or now[0] != epoch:
                held = "none" if now is None else f"epoch {now[0]} of {now[1]}"
                raise Fenced(
                    f"partition {p} of {self.topic} was claimed by another process "
                    f"(ours: epoch {epoch}; now: {held})"
                )

    # -- events -----------------------------------------------------------------------------
    def insert_events(self, cur: psycopg.Cursor, rows: Sequence[tuple[Any, ...]]) -> None:
        """rows: (partition, offset, workflow_key, event_id, type, time, value); one
        statement for them all (arrays, unnested by the server): one round trip. The arrays
        go in binary (%b): psycopg's text dump of a bytea array runs regexes over every
        element, the larger part of the sink's time at 5,000 events/s."""
        if rows:
            cols = list(zip(*rows, strict=True))
            cur.execute(
                'INSERT INTO compensator_events (topic, partition, "offset", workflow_key, '
                "event_id, event_type, event_time, value) SELECT %s, * FROM unnest("
                "%b::integer[], %b::bigint[], %b::bytea[], %b::text[], %b::text[], "
                "%b::bigint[], %b::bytea[]) ON CONFLICT DO NOTHING",
                [self.topic, *(list(c) for c in cols)],
            )

    def workflow_events(self, cur: psycopg.Cursor, key: bytes) -> list[StoredEvent]:
        cur.execute(
            'SELECT partition, "offset", value FROM compensator_events '
            'WHERE workflow_key = %s AND topic = %s ORDER BY partition, "offset"',
            (key, self.topic),
        )
        return [StoredEvent(int(p), int(o), bytes(v)) for p, o, v in cur.fetchall()]

    def events_of(self, key: bytes) -> list[StoredEvent]:
        with self.statement() as cur:
            return self.workflow_events(cur, key)

    # -- plans ------------------------------------------------------------------------------
    def plan(self, cur: psycopg.Cursor, quarantine_id: str) -> Plan | None:
        cur.execute(
            "SELECT quarantine_id, partition, workflow_key, workflow_id, state FROM "
            "compensator_plans WHERE quarantine_id = %s",
            (quarantine_id,),
        )
        row = cur.fetchone()
        return None if row is None else Plan(row[0], int(row[1]), bytes(row[2]), row[3], row[4])

    def active_plans(
        self, cur: psycopg.Cursor, key: bytes | None = None, partitions: Iterable[int] = ()
    ) -> list[Plan]:
        """Plans not released (running or done), with their Quarantine's frame."""
        where, args = ["p.state <> 'released'", "p.topic = %s"], [self.topic]
        if key is not None:
            where.append("p.workflow_key = %s")
            args.append(key)
        ps = list(partitions)
        if ps:
            where.append("p.partition = ANY(%s)")
            args.append(ps)
        return self._plans(cur, " AND ".join(where), args)

    def plan_with_frame(self, quarantine_id: str) -> Plan | None:
        """One plan, whatever its state, with its Quarantine's frame."""
        with self.statement() as cur:
            found = self._plans(cur, "p.quarantine_id = %s", [quarantine_id])
        return found[0] if found else None

    def _plans(self, cur: psycopg.Cursor, where: str, args: list[Any]) -> list[Plan]:
        cur.execute(
            "SELECT p.quarantine_id, p.partition, p.workflow_key, p.workflow_id, p.state, e.value "
            "FROM compensator_plans p LEFT JOIN compensator_events e ON e.topic = p.topic AND "
            'e.partition = p.partition AND e."offset" = p."offset" '
            f"WHERE {where} ORDER BY p.created_at",
            args,
        )
        return [
            Plan(r[0], int(r[1]), bytes(r[2]), r[3], r[4], None if r[5] is None else bytes(r[5]))
            for r in cur.fetchall()
        ]

    def quarantined(self, cur: psycopg.Cursor, keys: Iterable[bytes]) -> set[bytes]:
        """Which of these workflows have a plan not released (running or done)."""
        ks = list(keys)
        if not ks:
            return set()
        cur.execute(
            "SELECT DISTINCT workflow_key FROM compensator_plans WHERE topic = %s AND "
            "state <> 'released' AND workflow_key = ANY(%b::bytea[])",
            (self.topic, ks),
        )
        return {bytes(r[0]) for r in cur.fetchall()}

    def insert_plan(
        self,
        cur: psycopg.Cursor,
        *,
        quarantine: Mapping[str, Any],
        partition: int,
        offset: int,
        key: bytes,
        steps: list[dict[str, Any]],
    ) -> bool:
        cur.execute(
            'INSERT INTO compensator_plans (quarantine_id, topic, partition, "offset", '
            "workflow_key, workflow_id, scope, run_id, reason, quarantined_by, quarantined_at, "
            "steps) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING",
            (
                pg_text(quarantine["event_id"]),
                self.topic,
                partition,
                offset,
                key,
                pg_text(quarantine["workflow_id"]),
                pg_text(quarantine.get("scope") or "workflow"),
                pg_text(quarantine.get("run_id") or ""),
                pg_text(quarantine.get("reason") or ""),
                pg_text(quarantine.get("by") or quarantine.get("principal") or "?"),
                int(quarantine["time"]),
                Jsonb(steps),
            ),
        )
        return cur.rowcount == 1

    def set_steps(self, cur: psycopg.Cursor, quarantine_id: str, steps: list[dict]) -> None:
        cur.execute(
            "UPDATE compensator_plans SET steps = %s WHERE quarantine_id = %s",
            (Jsonb(steps), quarantine_id),
        )

    def reopen(self, cur: psycopg.Cursor, quarantine_id: str) -> None:
        cur.execute(
            "UPDATE compensator_plans SET state = 'running', finished_at = NULL "
            "WHERE quarantine_id = %s AND state = 'done'",
            (quarantine_id,),
        )

    def release(self, cur: psycopg.Cursor, quarantine_id: str, release: Mapping[str, Any]) -> int:
        """Mark the plan released and cancel its actions not started; how many were."""
        cur.execute(
            "UPDATE compensator_plans SET state = 'released', release_id = %s, released_by = %s,"
            " released_at = now(), finished_at = coalesce(finished_at, now()) "
            "WHERE quarantine_id = %s AND state <> 'released'",
            (
                pg_text(release["event_id"]),
                pg_text(release.get("by") or release.get("principal") or "?"),
                quarantine_id,
            ),
        )
        cur.execute(
            "UPDATE compensator_actions SET state = 'cancelled', finished_at = now(), "
            "updated_at = now(), detail = %s WHERE quarantine_id = %s AND state = 'pending'",
            (pg_text(f"cancelled: released by {release.get('by') or '?'}"), quarantine_id),
        )
        return cur.rowcount

    def finish_plan(self, quarantine_id: str) -> bool:
        """running -> done once no action is left to run; True if it changed now.

        A late call may join the plan meanwhile: the processor locks the plan's row before it
        adds actions (`insert_actions`), so this UPDATE waits for that transaction, but its
        NOT EXISTS was read before that commit. The second statement, which reads after it,
        reopens the plan then (the processor's own reopen found it still running)."""
        with self.statement() as cur:
            cur.execute(
                "UPDATE compensator_plans SET state = 'done', finished_at = now() "
                "WHERE quarantine_id = %s AND state = 'running' AND NOT EXISTS (SELECT 1 FROM "
                "compensator_actions a WHERE a.quarantine_id = %s AND a.state IN "
                "('pending', 'running'))",
                (quarantine_id, quarantine_id),
            )
            if cur.rowcount != 1:
                return False
            cur.execute(
                "UPDATE compensator_plans SET state = 'running', finished_at = NULL "
                "WHERE quarantine_id = %s AND state = 'done' AND EXISTS (SELECT 1 FROM "
                "compensator_actions a WHERE a.quarantine_id = %s AND a.state IN "
                "('pending', 'running'))",
                (quarantine_id, quarantine_id),
            )
            return cur.rowcount == 0

    # -- actions ----------------------------------------------------------------------------
    def insert_actions(
        self, cur: psycopg.Cursor, quarantine_id: str, actions: Sequence[Mapping[str, Any]]
    ) -> int:
        """Add the plan's actions not yet there (seq continues after the last); how many."""
        if not actions:
            return 0
        # the plan's row first: a `finish_plan` under way waits for this transaction
        cur.execute(
            "SELECT 1 FROM compensator_plans WHERE quarantine_id = %s FOR UPDATE",
            (quarantine_id,),
        )
        cur.execute(
            "SELECT coalesce(max(seq) + 1, 0) FROM compensator_actions WHERE quarantine_id = %s",
            (quarantine_id,),
        )
        row = cur.fetchone()
        seq = int(row[0]) if row else 0
        added = 0
        for a in actions:
            cur.execute(
                "INSERT INTO compensator_actions (quarantine_id, intent_id, seq, compensation, "
                "idempotency_key, tool, run_id) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (
                    quarantine_id,
                    pg_text(a["intent_id"]),
                    seq,
                    pg_text(a["compensation"]),
                    a["idempotency_key"],
                    pg_text(a["tool"]),
                    pg_text(a["run_id"]),
                ),
            )
            if cur.rowcount == 1:
                seq += 1
                added += 1
        return added

    def actions(self, quarantine_id: str) -> list[Action]:
        with self.statement() as cur:
            return self._actions(cur, quarantine_id)

    def _actions(self, cur: psycopg.Cursor, quarantine_id: str) -> list[Action]:
        cur.execute(
            "SELECT quarantine_id, intent_id, seq, compensation, idempotency_key, tool, run_id, "
            "state, attempts, failures, detail, external_ids, "
            "coalesce(lease_until > now(), false), coalesce(not_before > now(), false) "
            "FROM compensator_actions WHERE quarantine_id = %s ORDER BY seq",
            (quarantine_id,),
        )
        return [
            Action(*r[:10], r[10], dict(r[11] or {}), bool(r[12]), bool(r[13]))
            for r in cur.fetchall()
        ]

    def compensated_intents(self, cur: psycopg.Cursor, key: bytes) -> set[str]:
        """Intent ids an earlier plan of the workflow undid."""
        cur.execute(
            "SELECT a.intent_id FROM compensator_actions a JOIN compensator_plans p USING "
            "(quarantine_id) WHERE p.workflow_key = %s AND a.state IN ('done', 'nothing')",
            (key,),
        )
        return {r[0] for r in cur.fetchall()}

    def runnable(self, partitions: Mapping[int, int]) -> list[tuple[str, int]]:
        """Running plans on our partitions (quarantine id, partition), oldest first."""
        if not partitions:
            return []
        with self.statement() as cur:
            cur.execute(
                "SELECT p.quarantine_id, p.partition FROM compensator_plans p JOIN "
                "compensator_partitions c ON c.topic = p.topic AND c.partition = p.partition "
                "WHERE p.topic = %s AND p.state = 'running' AND p.partition = ANY(%s) "
                "ORDER BY p.created_at",
                (self.topic, list(partitions)),
            )
            return [(r[0], int(r[1])) for r in cur.fetchall()]

    def lease(
        self,
        quarantine_id: str,
        intent_id: str,
        *,
        owner: str,
        partition: int,
        epoch: int,
        lease_s: float,
    ) -> Lease | None:
        """Take the action for one attempt, or None (someone holds it, it waits for its
        backoff, it is finished, or the partition is no longer ours)."""
        with self.statement() as cur:
            cur.execute(
                "UPDATE compensator_actions SET state = 'running', attempts = attempts + 1, "
                "lease_owner = %s, lease_token = lease_token + 1, "
                "lease_until = now() + %s * interval '1 second', "
                "started_at = coalesce(started_at, now()), updated_at = now() "
                "WHERE quarantine_id = %s AND intent_id = %s "
                "AND (state = 'pending' OR (state = 'running' AND lease_until < now())) "
                "AND (not_before IS NULL OR not_before <= now()) "
                "AND EXISTS (SELECT 1 FROM compensator_partitions c WHERE c.topic = %s "
                "AND c.partition = %s AND c.epoch = %s) "
                "RETURNING lease_token, attempts, failures",
                (owner, lease_s, quarantine_id, intent_id, self.topic, partition, epoch),
            )
            row = cur.fetchone()
        if row is None:
            return None
        return Lease(quarantine_id, intent_id, int(row[0]), int(row[1]), int(row[2]))

    def renew(self, leases: Sequence[Lease], lease_s: float) -> list[Lease]:
        """Extend the leases still ours; returns those that were lost (another attempt took
        the action: its token moved on). A lease whose own attempt ended meanwhile (same
        token, no longer running) is not lost: the heartbeat read it just before `finish`."""
        lost = []
        with self.transaction() as cur:
            for lease in leases:
                cur.execute(
                    "UPDATE compensator_actions SET lease_until = now() + %s * interval "
                    "'1 second' WHERE quarantine_id = %s AND intent_id = %s AND "
                    "lease_token = %s AND state = 'running'",
                    (lease_s, lease.quarantine_id, lease.intent_id, lease.token),
                )
                if cur.rowcount == 1:
                    continue
                cur.execute(
                    "SELECT lease_token FROM compensator_actions WHERE quarantine_id = %s AND "
                    "intent_id = %s",
                    (lease.quarantine_id, lease.intent_id),
                )
                row = cur.fetchone()
                if row is None or int(row[0]) != lease.token:
                    lost.append(lease)
        return lost

    def finish(
        self,
        lease: Lease,
        state: str,
        detail: str,
        *,
        external_ids: Mapping[str, str] | None = None,
        retry_in_s: float | None = None,
        failed: bool = False,
    ) -> bool:
        """End an attempt: a terminal state, or `pending` again after `retry_in_s`. False if
        the lease was lost meanwhile (another process may have run the action too)."""
        with self.statement() as cur:
            cur.execute(
                "UPDATE compensator_actions SET state = %s, detail = %s, external_ids = %s, "
                "lease_owner = NULL, lease_until = NULL, failures = failures + %s, "
                "not_before = CASE WHEN %s::float8 IS NULL THEN NULL "
                "ELSE now() + %s::float8 * interval '1 second' END, "
                "finished_at = CASE WHEN %s THEN now() END, updated_at = now() "
                "WHERE quarantine_id = %s AND intent_id = %s AND lease_token = %s "
                "AND state = 'running'",
                (
                    state,
                    pg_text(detail, 4000),
                    Jsonb(dict(external_ids or {})),
                    1 if failed else 0,
                    retry_in_s,
                    retry_in_s,
                    state in TERMINAL,
                    lease.quarantine_id,
                    lease.intent_id,
                    lease.token,
                ),
            )
            return cur.rowcount == 1

    def settle_from_event(
        self, cur: psycopg.Cursor, event: Mapping[str, Any], state: str, detail: str
    ) -> bool:
        """A CompensationResult on the topic says an attempt ended: record it for the attempt
        a process took and lost (it died after recording the result, before writing it
        here). Only that: an action nobody started, another attempt, another key, or a live
        lease (its holder writes the same itself) is left alone, so a result forged on the
        topic never marks an action done that no handler ran."""
        cur.execute(
            "UPDATE compensator_actions SET state = %s, detail = %s, "
            "lease_owner = NULL, lease_until = NULL, finished_at = now(), updated_at = now() "
            "WHERE quarantine_id = %s AND intent_id = %s AND idempotency_key = %s "
            "AND compensation = %s AND attempts = %s AND state = 'running' "
            "AND lease_until < now()",
            (
                state,
                pg_text(detail, 4000),
                pg_text(event.get("run_id", "")),
                pg_text(event.get("original_event_id", "")),
                pg_text(event.get("idempotency_key", "")),
                pg_text(event.get("compensation", "")),
                int(event.get("attempt") or 0),
            ),
        )
        return cur.rowcount == 1

    # -- tasks (every statement on the table is in compensator/tasks.py) ---------------------
    def insert_task(self, cur: psycopg.Cursor, task: Mapping[str, Any]) -> bool:
        """File a human task unless the plan already has it (one per call and kind)."""
        return tasks.insert_task(cur.connection, **task)

    def refresh_plan_task(self, cur: psycopg.Cursor, task: Mapping[str, Any]) -> None:
        tasks.refresh_report(
            cur.connection, task["task_id"], title=task["title"], report=task["report"],
            report_json=task.get("report_json"),
        )  # fmt: skip

    def unpublished_tasks(self, partitions: Iterable[int]) -> list[tasks.Task]:
        ps = list(partitions)
        if not ps:
            return []
        with self.statement() as cur:
            return tasks.unpublished(cur.connection, ps)

    def mark_published(self, task_ids: Sequence[str]) -> None:
        with self.transaction() as cur:
            for task_id in task_ids:
                tasks.mark_published(cur.connection, task_id)

    def unnotified_tasks(self, partitions: Iterable[int]) -> list[tasks.Task]:
        ps = list(partitions)
        if not ps:
            return []
        with self.statement() as cur:
            return tasks.unnotified(cur.connection, ps)

    def mark_notified(self, task_id: str, attempts: int, error: str | None) -> None:
        with self.transaction() as cur:
            tasks.record_notification(cur.connection, task_id, attempts=attempts, error=error)
