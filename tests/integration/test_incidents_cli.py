"""`wakeline incidents` and `compensator/tasks.py` against the real PostgreSQL.

Plan and task rows are inserted directly (as the compensator would), then the CLI is driven
with click's CliRunner.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from click.testing import CliRunner, Result

from wakeline.cli.main import cli
from wakeline.compensator import tasks
from wakeline.compensator.processor import task_id
from wakeline.errors import StoreError

pytestmark = pytest.mark.integration


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


def plan(conn: psycopg.Connection, workflow: str) -> str:
    quarantine_id = f"q-{uuid.uuid4()}"
    conn.execute(
        'INSERT INTO compensator_plans (quarantine_id, topic, partition, "offset", '
        "workflow_key, workflow_id, scope, reason, quarantined_by, quarantined_at) "
        "VALUES (%s, 'wakeline.events', 3, 42, %s, %s, 'workflow', 'runaway', 'ops', 1)",
        (quarantine_id, workflow.encode(), workflow),
    )
    return quarantine_id


def task(
    conn: psycopg.Connection,
    workflow: str,
    quarantine_id: str | None = None,
    *,
    kind: str = "call",
    intent_id: str | None = None,
    tid: str | None = None,
    report: str = "Not undone, and why:\n  - email.send: irreversible",
) -> str:
    quarantine_id = quarantine_id or plan(conn, workflow)
    intent_id = intent_id or (f"i-{uuid.uuid4()}" if kind == "call" else None)
    tid = tid or task_id(quarantine_id, kind, intent_id)
    assert tasks.insert_task(
        conn,
        task_id=tid,
        kind=kind,
        quarantine_id=quarantine_id,
        intent_id=intent_id,
        workflow_id=workflow,
        partition=3,
        reason="irreversible",
        title=f"email.send in workflow {workflow} needs a human",
        report=report,
        report_json={"kind": kind, "recommended": ["send a correction to ada@example.com"]},
        escalation_event_id=f"e-{uuid.uuid4()}",
    )
    return tid


def run(dsn: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["incidents", *args, "--dsn", dsn])


def wf() -> str:
    return f"wf-{uuid.uuid4().hex[:8]}"


def test_list_shows_open_and_acked_tasks_oldest_first(dsn: str, conn) -> None:
    w = wf()
    first, second, third = task(conn, w), task(conn, w), task(conn, w)
    assert run(dsn, "ack", second, "--by", "bob").exit_code == 0
    assert run(dsn, "resolve", third, "--note", "sent a correction", "--by", "eve").exit_code == 0
    got = run(dsn, "list", "--workflow", w)
    assert got.exit_code == 0, got.output
    lines = got.output.splitlines()
    assert [ln.split()[0] for ln in lines[:2]] == [first, second]
    assert " open " in lines[0] and "acked by bob" in lines[1]
    assert "2 task(s)" in lines[-1]
    every = json.loads(run(dsn, "list", "--all", "--workflow", w, "--json").output)
    assert [t["task_id"] for t in every] == [first, second, third]
    assert every[2]["state"] == "resolved" and every[2]["resolution_note"] == "sent a correction"
    assert "report" not in every[0]  # `show` has it
    resolved = json.loads(run(dsn, "list", "--state", "resolved", "--workflow", w, "--json").output)
    assert [t["task_id"] for t in resolved] == [third]
    assert run(dsn, "list", "--workflow", "nobody").output.strip() == (
        "no open or acked tasks for workflow nobody"
    )
    assert run(dsn, "list", "--all", "--state", "open").exit_code == 2


def test_show_prints_the_report_and_where_the_task_stands(dsn: str, conn) -> None:
    w = wf()
    t = task(conn, w, report="What the agent did:\n  1. email.send\n")
    got = run(dsn, "show", t)
    assert got.exit_code == 0, got.output
    assert got.output.startswith(f"task {t} (call): open\n")
    assert f"workflow {w}" in got.output and "(not published yet)" in got.output
    assert "What the agent did:\n  1. email.send" in got.output
    data = json.loads(run(dsn, "show", t, "--json").output)
    assert data["report_json"]["recommended"] == ["send a correction to ada@example.com"]
    assert data["workflow_key_hex"] == w.encode().hex()


def test_ack_then_resolve(dsn: str, conn) -> None:
    t = task(conn, wf())
    got = run(dsn, "ack", t, "--by", "alice@ops")
    assert (got.exit_code, got.output.strip()) == (0, f"task {t} acked by alice@ops")
    again = run(dsn, "ack", t, "--by", "bob")
    assert again.exit_code == 1 and "acked already by alice@ops" in again.output
    got = run(dsn, "resolve", t, "--note", "refunded by hand", "--by", "alice@ops")
    assert got.exit_code == 0 and "resolved by alice@ops" in got.output
    shown = run(dsn, "show", t).output
    assert "resolved by alice@ops" in shown and "note: refunded by hand" in shown


def test_by_defaults_to_user_at_host(dsn: str, conn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "carol")
    monkeypatch.setattr("socket.gethostname", lambda: "box")
    t = task(conn, wf())
    assert run(dsn, "ack", t).output.strip() == f"task {t} acked by carol@box"


def test_resolve_needs_a_note(dsn: str, conn) -> None:
    t = task(conn, wf())
    for note in ("", "   ", "\n\t"):
        got = run(dsn, "resolve", t, "--note", note)
        assert got.exit_code == 1 and "needs a note" in got.output
    assert run(dsn, "resolve", t).exit_code == 2  # --note is required
    assert tasks.get_task(conn, t).state == "open"


def test_a_resolved_task_is_not_acked_or_resolved_again(dsn: str, conn) -> None:
    t = task(conn, wf())
    assert run(dsn, "resolve", t, "--note", "done", "--by", "eve").exit_code == 0
    again = run(dsn, "resolve", t, "--note", "done again", "--by", "mallory")
    assert again.exit_code == 1
    assert "was resolved by eve" in again.output and "cannot be resolved" in again.output
    ack = run(dsn, "ack", t, "--by", "mallory")
    assert ack.exit_code == 1 and "cannot be acked" in ack.output
    row = tasks.get_task(conn, t)
    assert (row.resolved_by, row.resolution_note, row.acked_by) == ("eve", "done", None)


@pytest.mark.parametrize(
    "hostile",
    ["nope", "' OR '1'='1", "x'; DROP TABLE compensator_tasks; --", "%s", "[/red]", "a\x00b", ""],
)
def test_unknown_and_hostile_ids_are_a_clear_error(dsn: str, conn, hostile: str) -> None:
    task(conn, wf())  # a task exists: an injected OR would find it
    for args in (("show", hostile), ("ack", hostile), ("resolve", hostile, "--note", "x")):
        got = run(dsn, *args)
        assert got.exit_code == 1, (args, got.output)
        assert "no task" in got.output and "Traceback" not in got.output
    assert conn.execute("SELECT count(*) FROM compensator_tasks").fetchone()[0] > 0


def test_a_nul_or_control_characters_in_a_note(dsn: str, conn) -> None:
    t = task(conn, wf())
    got = run(dsn, "resolve", t, "--note", "refunded\x00 by hand \x1b[31mred", "--by", "a\x00b")
    assert got.exit_code == 0, got.output
    row = tasks.get_task(conn, t)
    assert row.resolution_note == "refunded\ufffd by hand \x1b[31mred"
    assert row.resolved_by == "a\ufffdb"
    shown = run(dsn, "show", t).output
    assert "\x1b" not in shown and "\\x1b[31mred" in shown  # never acted on by a terminal
    assert run(dsn, "resolve", wf(), "--note", "\x00").exit_code == 1


def test_a_note_too_long_is_refused(dsn: str, conn) -> None:
    t = task(conn, wf())
    got = run(dsn, "resolve", t, "--note", "x" * (tasks.MAX_NOTE + 1))
    assert got.exit_code == 1 and "at most" in got.output


def test_two_operators_racing_one_wins(dsn: str, conn) -> None:
    t = task(conn, wf())
    results: list[object] = []
    barrier = threading.Barrier(2)

    def resolve(who: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            barrier.wait()
            try:
                results.append(tasks.resolve(c, t, by=who, note=f"done by {who}"))
            except tasks.TaskError as e:
                results.append(e)

    threads = [threading.Thread(target=resolve, args=(w,)) for w in ("ann", "ben")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    won = [r for r in results if isinstance(r, tasks.Task)]
    lost = [r for r in results if isinstance(r, tasks.TaskError)]
    assert len(won) == 1 and len(lost) == 1
    assert f"was resolved by {won[0].resolved_by}" in str(lost[0])


def test_insert_task_is_idempotent_and_scrubs_nul(dsn: str, conn) -> None:
    w = wf()
    q = plan(conn, w)
    args = dict(
        kind="call", quarantine_id=q, intent_id="i-1", workflow_id=w + "\x00", partition=3,
        reason="outcome_unknown", title="t\x00", report="r\x00",
        report_json={"k\x00": ["v\x00", 1, None, True]}, escalation_event_id="e-1",
    )  # fmt: skip
    first = task_id(q, "call", "i-1")
    assert first == task_id(q, "call", "i-1") != task_id(q, "plan", None)
    assert tasks.insert_task(conn, task_id=first, **args) is True
    assert tasks.insert_task(conn, task_id=first, **args) is False
    # another id for the same plan, kind and call: the unique index says no
    assert tasks.insert_task(conn, task_id="t-other", **args) is False
    row = tasks.get_task(conn, first)
    assert (row.workflow_id, row.title, row.report) == (w + "\ufffd", "t\ufffd", "r\ufffd")
    assert row.report_json == {"k\ufffd": ["v\ufffd", 1, None, True]}
    assert row.workflow_key == (w + "\x00").encode()
    plan_task = dict(args, kind="plan", intent_id=None)
    assert tasks.insert_task(conn, task_id=task_id(q, "plan", None), **plan_task) is True
    with pytest.raises(tasks.TaskError, match="a 'call' task names its intent_id"):
        tasks.insert_task(conn, task_id="t-x", **dict(args, intent_id=None))
    with pytest.raises(StoreError, match="cannot file a task"):  # no such plan
        tasks.insert_task(conn, task_id="t-y", **dict(args, quarantine_id="q-none"))


def test_publication_and_notification_are_recorded(dsn: str, conn) -> None:
    t = task(conn, wf())
    assert tasks.mark_published(conn, t) is True
    assert tasks.mark_published(conn, t) is False
    tasks.record_notification(conn, t, attempts=5, error="HTTP 500")
    row = tasks.get_task(conn, t)
    assert (row.notify_attempts, row.notify_error, row.notified_at) == (5, "HTTP 500", None)
    assert "notification failed after 5 attempt(s): HTTP 500" in run(dsn, "show", t).output
    tasks.record_notification(conn, t, attempts=1)
    row = tasks.get_task(conn, t)
    assert row.notify_attempts == 6 and row.notify_error is None and row.notified_at is not None
    assert row.published_at is not None


def test_a_database_that_cannot_be_reached_is_a_clear_error() -> None:
    got = CliRunner().invoke(
        cli, ["incidents", "list", "--dsn", "postgresql://nobody@127.0.0.1:1/none"]
    )
    assert got.exit_code == 1 and "cannot connect to PostgreSQL" in got.output


def test_a_real_report_is_filed_and_shown(dsn: str, conn) -> None:
    from tests.unit.compensator.eventkit import T0, Events, handlers
    from wakeline.compensator.plan import Scope, build_plan
    from wakeline.compensator.report import Position, plan_report

    ev = Events(workflow=wf())
    ev.call()
    ev.call("email.send", compensation=None, reversibility="irreversible")
    q = ev.quarantine()
    steps = build_plan(ev.events, handlers(), scope=Scope.of(q), now_us=T0 + 10**8)
    report = plan_report(
        workflow_id=ev.workflow,
        quarantine=q,
        events=ev.events,
        steps=steps,
        outcomes={},
        positions={e["event_id"]: Position(3, i, i) for i, e in enumerate(ev.events)},
    )
    quarantine_id = plan(conn, ev.workflow)
    t = task_id(quarantine_id, "plan", None)
    assert tasks.insert_task(
        conn,
        task_id=t,
        kind="plan",
        quarantine_id=quarantine_id,
        intent_id=None,
        workflow_id=ev.workflow,
        partition=3,
        reason="plan",
        title=report.title,
        report=report.text,
        report_json=report.data,
        escalation_event_id="e-plan",
    )
    shown = run(dsn, "show", t)
    assert shown.exit_code == 0 and report.text in shown.output
    data = json.loads(run(dsn, "show", t, "--json").output)
    assert data["report_json"] == json.loads(json.dumps(report.data))
    listed = run(dsn, "list", "--workflow", ev.workflow).output
    assert f"{t}  open  plan" in listed and report.title in listed
