"""Human tasks: the `compensator_tasks` table (infra/migrations/0006_compensator.sql).

Every statement on the table is here, for the compensator (which files tasks) and for
`wakeline incidents` (which lists, acks and resolves them). Each function runs on a
connection the caller owns and never commits: the compensator runs `insert_task` inside its
own fenced transaction, the CLI on an autocommit connection.

A task is `open`, then `acked` (someone is on it), then `resolved` (with a note); `open` may
go straight to `resolved`. Each change is one conditional UPDATE, so when two operators race
one wins and the other is told who did what first. Text is stored scrubbed of NUL (which
PostgreSQL's text and jsonb refuse): each NUL becomes U+FFFD.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from wakeline.errors import StoreError, WakelineError

KINDS = ("call", "plan")
STATES = ("open", "acked", "resolved")
#: states `list_tasks` shows unless asked for others: the tasks someone still has to close
UNRESOLVED = ("open", "acked")
#: longest resolution note or `--by` accepted (characters)
MAX_NOTE = 10_000
MAX_BY = 200

_COLUMNS = (
    "task_id, kind, quarantine_id, intent_id, workflow_key, workflow_id, partition, reason, "
    "title, report, report_json, state, created_at, updated_at, acked_at, acked_by, "
    "resolved_at, resolved_by, resolution_note, escalation_event_id, published_at, "
    "notified_at, notify_attempts, notify_error"
)


class TaskError(WakelineError):
    """A task cannot be changed as asked (unknown id, wrong state, bad note)."""


class UnknownTask(TaskError):
    """No task has this id."""


@dataclass(frozen=True)
class Task:
    """One row of `compensator_tasks`."""

    task_id: str
    kind: str
    quarantine_id: str
    intent_id: str | None
    workflow_key: bytes
    workflow_id: str
    partition: int
    reason: str
    title: str
    report: str
    report_json: Any
    state: str
    created_at: datetime
    updated_at: datetime
    acked_at: datetime | None
    acked_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    resolution_note: str | None
    escalation_event_id: str
    published_at: datetime | None
    notified_at: datetime | None
    notify_attempts: int
    notify_error: str | None

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "workflow_key"}
        out["workflow_key_hex"] = self.workflow_key.hex()
        for k, v in out.items():
            if isinstance(v, datetime):
                out[k] = v.isoformat()
        return out


def insert_task(
    conn: psycopg.Connection,
    *,
    task_id: str,
    kind: str,
    quarantine_id: str,
    intent_id: str | None,
    workflow_id: str,
    partition: int,
    reason: str,
    title: str,
    report: str,
    report_json: Mapping[str, Any] | None,
    escalation_event_id: str,
    workflow_key: bytes | None = None,
) -> bool:
    """File a task; False (and nothing changes) when the task, or one for the same plan,
    kind and call, exists already. `task_id`: stable for the plan, kind and call
    (`compensator.processor.task_id`), so filing again after a crash names the same task.
    `workflow_key`: the Kafka key, byte for byte (default: `workflow_id` in UTF-8)."""
    if kind not in KINDS:
        raise TaskError(f"task kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if (kind == "call") != (intent_id is not None):
        raise TaskError("a 'call' task names its intent_id, a 'plan' task none")
    key = workflow_key if workflow_key is not None else workflow_id.encode("utf-8", "replace")
    params = (
        _clean(task_id), kind, _clean(quarantine_id), _clean(intent_id), key,
        _clean(workflow_id), partition, _clean(reason), _clean(title), _clean(report),
        Jsonb(_clean_json(dict(report_json or {}))), _clean(escalation_event_id),
    )  # fmt: skip
    with _store_errors("file a task"):
        row = conn.execute(
            "INSERT INTO compensator_tasks (task_id, kind, quarantine_id, intent_id, "
            "workflow_key, workflow_id, partition, reason, title, report, report_json, "
            "escalation_event_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT DO NOTHING RETURNING task_id",
            params,
        ).fetchone()
    return row is not None


def get_task(conn: psycopg.Connection, task_id: str) -> Task | None:
    if "\x00" in task_id:
        return None  # no stored id holds a NUL
    with _store_errors("read a task"), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"SELECT {_COLUMNS} FROM compensator_tasks WHERE task_id = %s", (task_id,)
        ).fetchone()
    return None if row is None else _task(row)


def list_tasks(
    conn: psycopg.Connection,
    *,
    states: Collection[str] | None = UNRESOLVED,
    workflow_id: str | None = None,
    quarantine_id: str | None = None,
    limit: int | None = None,
) -> list[Task]:
    """Tasks oldest first; `states` None: every state."""
    where, params = [], []  # type: ignore[var-annotated]
    if states is not None:
        bad = [s for s in states if s not in STATES]
        if bad:
            raise TaskError(f"state {bad[0]!r} is not one of {', '.join(STATES)}")
        where.append("state = ANY(%s)")
        params.append(list(states))
    if workflow_id is not None:
        where.append("workflow_id = %s")
        params.append(_clean(workflow_id))
    if quarantine_id is not None:
        where.append("quarantine_id = %s")
        params.append(_clean(quarantine_id))
    sql = f"SELECT {_COLUMNS} FROM compensator_tasks"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at, task_id"
    if limit is not None:
        sql += " LIMIT %s"
        params.append(int(limit))
    with _store_errors("list tasks"), conn.cursor(row_factory=dict_row) as cur:
        return [_task(r) for r in cur.execute(sql, params).fetchall()]  # type: ignore[arg-type]


def ack(conn: psycopg.Connection, task_id: str, *, by: str) -> Task:
    """open -> acked. TaskError when it is acked or resolved already (who, when)."""
    by = _who(by)
    with _store_errors("ack a task"), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"UPDATE compensator_tasks SET state = 'acked', acked_at = now(), acked_by = %s, "
            f"updated_at = now() WHERE task_id = %s AND state = 'open' RETURNING {_COLUMNS}",
            (by, task_id),
        ).fetchone() if "\x00" not in task_id else None  # fmt: skip
    if row is not None:
        return _task(row)
    raise _refusal(conn, task_id, "acked")


def resolve(conn: psycopg.Connection, task_id: str, *, by: str, note: str) -> Task:
    """open or acked -> resolved, with a note saying what was done. TaskError when it is
    resolved already, or the note is empty."""
    by = _who(by)
    note = _clean(note).strip() if isinstance(note, str) else ""
    if not note:
        raise TaskError("a resolution needs a note saying what was done (--note)")
    if len(note) > MAX_NOTE:
        raise TaskError(f"the note has {len(note)} characters; at most {MAX_NOTE}, please")
    with _store_errors("resolve a task"), conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"UPDATE compensator_tasks SET state = 'resolved', resolved_at = now(), "
            f"resolved_by = %s, resolution_note = %s, updated_at = now() "
            f"WHERE task_id = %s AND state IN ('open', 'acked') RETURNING {_COLUMNS}",
            (by, note, task_id),
        ).fetchone() if "\x00" not in task_id else None  # fmt: skip
    if row is not None:
        return _task(row)
    raise _refusal(conn, task_id, "resolved")


def mark_published(conn: psycopg.Connection, task_id: str) -> bool:
    """The task's Escalation event was acknowledged by the broker (once; False after)."""
    with _store_errors("mark a task published"):
        cur = conn.execute(
            "UPDATE compensator_tasks SET published_at = now(), updated_at = now() "
            "WHERE task_id = %s AND published_at IS NULL",
            (task_id,),
        )
    return cur.rowcount == 1


def record_notification(
    conn: psycopg.Connection, task_id: str, *, attempts: int, error: str | None = None
) -> None:
    """What the webhook did: delivered (error None) or gave up with `error`."""
    with _store_errors("record a notification"):
        conn.execute(
            "UPDATE compensator_tasks SET notify_attempts = notify_attempts + %s, "
            "notified_at = CASE WHEN %s::text IS NULL THEN now() ELSE notified_at END, "
            "notify_error = %s, updated_at = now() WHERE task_id = %s",
            (attempts, _clean(error), _clean(error), task_id),
        )


def refresh_report(
    conn: psycopg.Connection,
    task_id: str,
    *,
    title: str,
    report: str,
    report_json: Mapping[str, Any] | None,
) -> bool:
    """A plan's report again (late calls joined the plan), while nobody acted on it."""
    with _store_errors("refresh a report"):
        cur = conn.execute(
            "UPDATE compensator_tasks SET title = %s, report = %s, report_json = %s, "
            "updated_at = now() WHERE task_id = %s AND state = 'open'",
            (_clean(title), _clean(report), Jsonb(_clean_json(dict(report_json or {}))),
             task_id),
        )  # fmt: skip
    return cur.rowcount == 1


def unpublished(conn: psycopg.Connection, partitions: Collection[int]) -> list[Task]:
    """Tasks of these events partitions whose Escalation event is not yet acknowledged."""
    return _select(conn, "published_at IS NULL AND partition = ANY(%s)", (list(partitions),))


def unnotified(conn: psycopg.Connection, partitions: Collection[int]) -> list[Task]:
    """Published tasks of these partitions the webhook has neither delivered nor given up."""
    return _select(
        conn,
        "published_at IS NOT NULL AND notified_at IS NULL AND notify_error IS NULL "
        "AND partition = ANY(%s)",
        (list(partitions),),
    )


def _select(conn: psycopg.Connection, where: str, args: tuple[Any, ...]) -> list[Task]:
    with _store_errors("read tasks"), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM compensator_tasks WHERE {where} ORDER BY created_at",
                    args)  # fmt: skip
        return [_task(r) for r in cur.fetchall()]


def _refusal(conn: psycopg.Connection, task_id: str, wanted: str) -> TaskError:
    """Why a conditional UPDATE changed nothing: no such task, or its state."""
    task = get_task(conn, task_id)
    if task is None:
        return UnknownTask(f"no task {task_id!r} (`wakeline incidents list --all` lists them)")
    if task.state == "resolved":
        return TaskError(
            f"task {task_id} was resolved by {task.resolved_by} at {_when(task.resolved_at)}; "
            f"a resolved task cannot be {wanted}"
        )
    return TaskError(
        f"task {task_id} was acked already by {task.acked_by} at {_when(task.acked_at)}"
    )


def _when(at: datetime | None) -> str:
    return "?" if at is None else at.isoformat(timespec="seconds")


def _who(by: str) -> str:
    by = _clean(by).strip() if isinstance(by, str) else ""
    if not by:
        raise TaskError("say who you are (--by WHO)")
    if len(by) > MAX_BY:
        raise TaskError(f"--by has {len(by)} characters; at most {MAX_BY}, please")
    return by


def _task(row: Mapping[str, Any]) -> Task:
    return Task(**{**row, "workflow_key": bytes(row["workflow_key"])})


def _clean(s: str | None) -> Any:
    return None if s is None else str(s).replace("\x00", "\ufffd")


def _clean_json(value: Any) -> Any:
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, Mapping):
        return {_clean(str(k)): _clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_json(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return _clean(str(value))


@contextmanager
def _store_errors(what: str) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as e:
        raise StoreError(f"cannot {what}: {e}") from e
