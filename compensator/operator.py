"""What an operator does to a workflow: quarantine it, release it, and read its story.

- `quarantine(kafka, workflow_id, reason=..., by=...)` writes a `Quarantine` event on the
  workflow's partition of `<prefix>events` (key = the workflow id, as the SDK writes its
  events: the same framing, `encode_event` and `cloudevents_headers`) and returns once the
  broker acknowledged it (acks=all, one request in flight), with the event id, partition and
  offset. The compensator takes it from there; `wait_visible` waits until the compacted
  `<prefix>quarantines` topic (what SDK gates read) shows it. What writes many (a rollback
  of several runs) passes one `Writer`, whose one producer is flushed once.
- `release(kafka, workflow_id, ...)` writes a `Release` naming the quarantine in force:
  from the compensator's plans (compensator_plans), else the quarantines topic, else none.
- `timeline(...)` is a workflow's every call (intent, result, compensation, escalation),
  quarantines and releases, each with its ledger position, from the workflow's ledger
  entries and the compensator's tables; `workflow_rows(...)` the list of workflows with
  their quarantine state. `wakeline workflow show | list` print them (cli/workflow.py).

Who acted is recorded: `by` (default `$USER@hostname`) is both the event's `by` and its
`principal`; the agent is `wakeline-operator` and the source `wakeline://operator/<host>`.
"""

from __future__ import annotations

import getpass
import logging
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wakeline.errors import SchemaError, StackError, WakelineError
from wakeline.infra.settings import KafkaSettings
from wakeline.schemas import cloudevents_headers, encode_event, new_event_id

log = logging.getLogger(__name__)

AGENT_ID = "wakeline-operator"
#: longest workflow id the ledger indexes (ledger/store.py MAX_LOOKUP_KEY)
MAX_ID_BYTES = 1024
#: compensator_plans.state -> the workflow's state as `workflow list` shows it
PLAN_STATES = {"running": "compensating", "done": "compensated", "released": "released"}
QUARANTINED_STATES = ("quarantined", "compensating", "compensated")


class OperatorError(WakelineError):
    """Bad operator input (an empty reason, a workflow id that is not text, ...)."""

    exit_code = 2


# -- writing: quarantine, release ------------------------------------------------------


def operator_identity() -> str:
    """`$USER@hostname`, the default `by` of an operator's events."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (a container without a passwd entry)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _text(name: str, value: Any, *, limit: int | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise OperatorError(f"{name} is required (a non-empty text), got {value!r}")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise OperatorError(f"{name} {value!r} is not valid UTF-8 ({e.reason})") from e
    if "\x00" in value:
        raise OperatorError(f"{name} {value!r} contains a NUL character")
    if limit is not None and len(raw) > limit:
        raise OperatorError(f"{name} is {len(raw)} bytes long; at most {limit} are allowed")
    return value


def _envelope(type_name: str, workflow_id: str, run_id: str, by: str) -> dict[str, Any]:
    return {
        "event_id": new_event_id(),
        "type": type_name,
        "time": time.time_ns() // 1000,
        "source": f"wakeline://operator/{socket.gethostname()}",
        "workflow_id": workflow_id,
        "run_id": run_id,
        "step_id": None,
        "agent_id": AGENT_ID,
        "tenant": None,
        "boundary": None,
        "parent_event_ids": [],
        "correlation_id": None,
        "principal": by,
        "trace_id": None,
        "span_id": None,
    }


def quarantine(
    kafka: KafkaSettings,
    workflow_id: str | None,
    *,
    reason: str,
    by: str | None = None,
    run_id: str | None = None,
    tainted: Sequence[str] = (),
    agent: str | None = None,
    since_us: int | None = None,
    boundary: str | None = None,
    alert_id: str | None = None,
    after_event_id: str | None = None,
    timeout_s: float = 15.0,
    writer: Writer | None = None,
) -> dict[str, Any]:
    """Write a `Quarantine`; returns the event, its id, partition and offset. One scope:
    `run` with `run_id`; `tainted` with `tainted` (every call depending on those events,
    in any workflow); `agent` with `agent` (what it did since `since_us`, and the agent is
    refused everywhere); `boundary` with `boundary`; else `workflow`. The three that span
    workflows need no workflow: the event is then written as workflow `agent:<id>`,
    `boundary:<b>` or `taint:<first event>`, and the compensator fans it out (one
    Quarantine per workflow it reaches, compensator/scopes.py). `after_event_id` with
    `run_id` is a rollback: only the run's calls after that WorkflowSnapshot are undone
    (compensator/rollback.py). With `writer`, the event is queued there: its partition and
    offset are in the returned report once `writer.flush()` returned."""
    reason = _text("reason", reason)
    by = _text("by", by if by is not None else operator_identity())
    tainted = [_text("tainted event id", t) for t in tainted]
    given = [n for n, v in (("--run", run_id), ("--tainted", tainted), ("--agent", agent),
                            ("--boundary", boundary)) if v]  # fmt: skip
    if len(given) > 1:
        raise OperatorError(f"give one of {', '.join(given)}: a quarantine has one scope")
    if since_us is not None and agent is None:
        raise OperatorError("--since goes with --agent")
    target = None
    if after_event_id is not None and run_id is None:
        raise OperatorError("a rollback (after_event_id) quarantines one run: give its run id")
    if run_id is not None:
        scope, run = "run", _text("run id", run_id)
    else:
        scope, run = ("tainted" if tainted else "workflow"), str(uuid.uuid4())
    if agent is not None:
        scope, target = "agent", _text("agent id", agent, limit=MAX_ID_BYTES - 10)
    elif boundary is not None:
        scope, target = "boundary", _text("boundary", boundary, limit=MAX_ID_BYTES - 10)
    if workflow_id is None:
        if scope in ("agent", "boundary"):
            workflow_id = f"{scope}:{target}"
        elif scope == "tainted":
            workflow_id = f"taint:{tainted[0]}"
        else:
            raise OperatorError(
                "a workflow id is needed, unless the scope spans workflows "
                "(--agent, --boundary or --tainted with --events)"
            )
    workflow_id = _text("workflow id", workflow_id, limit=MAX_ID_BYTES)
    event = _envelope("Quarantine", workflow_id, run, by)
    event.update(
        scope=scope, reason=reason, by=by, alert_id=alert_id, tainted_event_ids=tainted,
        target=target, since=since_us if scope == "agent" else None,
    )  # fmt: skip
    if after_event_id is not None:
        event["after_event_id"] = _text("checkpoint event id", after_event_id)
    return _write(kafka, event, timeout_s, writer)


def release(
    kafka: KafkaSettings,
    workflow_id: str,
    *,
    reason: str = "released by an operator",
    by: str | None = None,
    dsn: str | None = None,
    timeout_s: float = 15.0,
    writer: Writer | None = None,
) -> dict[str, Any]:
    """Write a `Release` of the workflow naming the quarantine in force (see
    `quarantine_in_force`); returns the event, where the id came from, partition, offset."""
    workflow_id = _text("workflow id", workflow_id, limit=MAX_ID_BYTES)
    reason = _text("reason", reason)
    by = _text("by", by if by is not None else operator_identity())
    found = quarantine_in_force(kafka, workflow_id, dsn=dsn, timeout_s=timeout_s)
    run_id = found.get("run_id") if found.get("scope") == "run" else None
    event = _envelope("Release", workflow_id, run_id or str(uuid.uuid4()), by)
    event.update(reason=reason, by=by, quarantine_id=found.get("quarantine_id"))
    return {**_write(kafka, event, timeout_s, writer), "found_in": found.get("found_in")}


def quarantine_in_force(
    kafka: KafkaSettings, workflow_id: str, *, dsn: str | None = None, timeout_s: float = 10.0
) -> dict[str, Any]:
    """The quarantine a Release should lift: the newest unreleased plan of the compensator
    (when `dsn` is given and reachable), else the quarantines topic's state, else nothing
    (`{"quarantine_id": None, "found_in": None}`)."""
    if dsn is not None:
        try:
            plan = _open_plan(dsn, workflow_id.encode())
        except WakelineError as e:
            log.warning("cannot read the compensator's plans (%s); asking the topic", e)
            plan = None
        if plan is not None:
            return {**plan, "found_in": "compensator_plans"}
    state = _topic_state(kafka, workflow_id, timeout_s)
    if state is not None and state.event_id is not None:
        return {
            "quarantine_id": state.event_id,
            "scope": state.scope,
            "run_id": state.run_id,
            "found_in": kafka.topics.quarantines,
        }
    return {"quarantine_id": None, "found_in": None}


def wait_visible(
    kafka: KafkaSettings, workflow_id: str, event_id: str, timeout_s: float
) -> float | None:
    """Seconds until the compacted quarantines topic shows quarantine `event_id` for the
    workflow (what SDK gates refuse calls by), or None after `timeout_s`: the compensator,
    which publishes it there, is not running or not keeping up."""
    from wakeline.producers.gates import _parse_quarantine_record
    from wakeline.producers.state import StateReader

    started = time.monotonic()
    reader = StateReader(
        kafka, kafka.topics.quarantines, _parse_quarantine_record, name="operator-wait"
    ).start()
    key = workflow_id.encode()
    try:
        while True:
            state = reader.get(key)
            if state is not None and state.event_id == event_id:
                return time.monotonic() - started
            if time.monotonic() - started >= timeout_s:
                return None
            time.sleep(0.01)
    finally:
        reader.close()


class Writer:
    """One producer for all an operator's invocation writes (acks=all, in order): `add`
    queues an event on its workflow's partition of `<prefix>events` (key = the workflow id,
    `encode_event`, `cloudevents_headers`, as the SDK frames its events); `flush` waits once
    for the broker's acknowledgement of what was queued since the last flush."""

    def __init__(self, kafka: KafkaSettings, timeout_s: float = 15.0) -> None:
        from confluent_kafka import Producer

        self.kafka = kafka
        self.timeout_s = timeout_s
        self.topic = kafka.topics.events
        self._producer = Producer(
            kafka.producer_config(
                **{
                    # not idempotent: a fresh idempotent producer's first record waits ~500 ms
                    # for its producer id (docs/decisions.md); one request in flight keeps the
                    # order on a retry, whose duplicate repeats the event id (a redelivery to
                    # the compensator and the ledger)
                    "enable.idempotence": False,
                    "max.in.flight.requests.per.connection": 1,
                    "acks": "all",
                    "linger.ms": 0,
                    "message.timeout.ms": max(1000, int(timeout_s * 1000)),
                    "socket.connection.setup.timeout.ms": 5000,
                    "log_level": 0,
                }
            )
        )
        self._pending: list[dict[str, Any]] = []  # reports queued since the last flush
        self._why: dict[str, str] = {}  # event id -> why it was not written

    def add(self, event: dict[str, Any]) -> dict[str, Any]:
        """Queue `event` (a bad one raises here and queues nothing); returns its report
        (`event`, `event_id`, `topic`), whose `partition` and `offset` `flush` fills in."""
        from confluent_kafka import KafkaException

        value = encode_event(event)
        report: dict[str, Any] = {
            "event": event,
            "event_id": event["event_id"],
            "topic": self.topic,
            "partition": None,
            "offset": None,
        }

        def on_delivery(err: Any, msg: Any) -> None:
            if err is None:
                report.update(partition=msg.partition(), offset=msg.offset())
            else:
                self._why[event["event_id"]] = self._refusal(err)

        self._pending.append(report)
        try:
            self._producer.produce(
                self.topic, value, event["workflow_id"].encode(),
                headers=cloudevents_headers(event), on_delivery=on_delivery,
            )  # fmt: skip
        except (KafkaException, BufferError) as e:
            self._why[event["event_id"]] = f"refused before it left: {e}"
        return report

    def flush(self) -> list[dict[str, Any]]:
        """Wait for the broker to acknowledge what `add` queued; returns those reports, or
        raises StackError naming each event not written and why (and those that were)."""
        from confluent_kafka import KafkaException

        reports, self._pending = self._pending, []
        try:
            self._producer.flush(self.timeout_s + 5)
        except KafkaException as e:
            for r in reports:
                self._why.setdefault(r["event_id"], str(e))
        lost = [r for r in reports if r["offset"] is None]
        if not lost:
            return reports
        what = "; ".join(
            f"the {r['event']['type']} {r['event_id']} of workflow {r['event']['workflow_id']!r}"
            f" ({self._why.get(r['event_id']) or self._refusal(None)})"
            for r in lost
        )
        written = [r["event_id"] for r in reports if r["offset"] is not None]
        raise StackError(
            f"{len(lost)} of {len(reports)} event(s) not written to {self.topic}: {what}"
            + (f"; written: {', '.join(written)}" if written else "")
        )

    def _refusal(self, err: Any) -> str:
        """Why a record was not written: `err` of its delivery report (None: it got none)."""
        from confluent_kafka import KafkaError

        if err is None or err.code() == KafkaError._MSG_TIMED_OUT:
            return (f"not acknowledged within {self.timeout_s:g} s: is the broker at "
                    f"{self.kafka.bootstrap} reachable?")  # fmt: skip
        return f"the broker at {self.kafka.bootstrap} refused it: {err}"


def _write(
    kafka: KafkaSettings, event: dict[str, Any], timeout_s: float, writer: Writer | None
) -> dict[str, Any]:
    """Queue `event` on `writer` (positions once it is flushed), else write it alone."""
    if writer is not None:
        return writer.add(event)
    one = Writer(kafka, timeout_s)
    report = one.add(event)
    one.flush()
    return report


def _topic_state(kafka: KafkaSettings, workflow_id: str, timeout_s: float) -> Any:
    from wakeline.producers.gates import _parse_quarantine_record
    from wakeline.producers.state import StateReader

    reader = StateReader(
        kafka, kafka.topics.quarantines, _parse_quarantine_record, name="operator-release"
    ).start()
    try:
        if not reader.wait_live(timeout_s):
            raise StackError(
                f"cannot read {kafka.topics.quarantines} within {timeout_s:g} s: is the broker "
                f"at {kafka.bootstrap} reachable?"
            )
        return reader.get(workflow_id.encode())
    finally:
        reader.close()


# -- the compensator's tables (infra/migrations/0006_compensator.sql) ------------------


def _connect(dsn: str) -> Any:
    import psycopg

    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as e:
        raise StackError(f"cannot reach PostgreSQL: {e}") from e


def _open_plan(dsn: str, key: bytes) -> dict[str, Any] | None:
    import psycopg

    try:
        with _connect(dsn) as conn:
            row = conn.execute(
                "SELECT quarantine_id, scope, run_id FROM compensator_plans "
                "WHERE workflow_key = %s AND state <> 'released' "
                'ORDER BY quarantined_at DESC, partition, "offset" DESC LIMIT 1',
                (key,),
            ).fetchone()
    except psycopg.Error as e:
        raise StackError(f"cannot read compensator_plans: {e}") from e
    if row is None:
        return None
    return {"quarantine_id": row[0], "scope": row[1], "run_id": row[2]}


@dataclass
class CompensatorState:
    """What the compensator's tables hold about one workflow."""

    plans: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    #: (event id, type, offset) of the events it took in, in partition order
    events: list[tuple[str, str, int]] = field(default_factory=list)


_PLAN_COLUMNS = (
    'quarantine_id, partition, "offset", scope, run_id, reason, quarantined_by, '
    "quarantined_at, state, release_id, released_by, created_at, finished_at"
)
_ACTION_COLUMNS = (
    "a.quarantine_id, a.intent_id, a.seq, a.compensation, a.idempotency_key, a.tool, "
    "a.run_id, a.state, a.attempts, a.detail, a.external_ids, a.started_at, a.finished_at"
)
_TASK_COLUMNS = (
    "task_id, kind, quarantine_id, intent_id, reason, title, state, escalation_event_id, "
    "published_at, notified_at, acked_by, resolved_by, resolution_note, created_at"
)


def compensator_state(dsn: str, workflow_ids: Sequence[str]) -> dict[str, CompensatorState]:
    """The plans, actions, tasks and taken-in events of each workflow, by workflow id."""
    import psycopg

    keys = [w.encode() for w in workflow_ids]
    out = {w: CompensatorState() for w in workflow_ids}
    try:
        with _connect(dsn) as conn:

            def rows(sql: str) -> list[dict[str, Any]]:
                cur = conn.execute(sql, (keys,))
                names = [d.name for d in cur.description]
                return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

            plans = rows(
                f"SELECT workflow_key, {_PLAN_COLUMNS} FROM compensator_plans "
                'WHERE workflow_key = ANY(%s) ORDER BY partition, "offset"'
            )
            actions = rows(
                f"SELECT p.workflow_key, {_ACTION_COLUMNS} "
                "FROM compensator_actions a JOIN compensator_plans p USING (quarantine_id) "
                "WHERE p.workflow_key = ANY(%s) ORDER BY a.quarantine_id, a.seq"
            )
            tasks = rows(
                f"SELECT workflow_key, {_TASK_COLUMNS} FROM compensator_tasks "
                "WHERE workflow_key = ANY(%s) ORDER BY created_at, task_id"
            )
            events = rows(
                'SELECT workflow_key, event_id, event_type, "offset" FROM compensator_events '
                'WHERE workflow_key = ANY(%s) ORDER BY partition, "offset"'
            )
    except psycopg.Error as e:
        raise StackError(f"cannot read the compensator's tables: {e}") from e
    for kind, found in (("plans", plans), ("actions", actions), ("tasks", tasks)):
        for row in found:
            wf = bytes(row.pop("workflow_key")).decode("utf-8", "replace")
            if wf in out:
                getattr(out[wf], kind).append(row)
    for row in events:
        wf = bytes(row["workflow_key"]).decode("utf-8", "replace")
        if wf in out:
            out[wf].events.append((row["event_id"], row["event_type"], row["offset"]))
    return out


# -- reading: a workflow's timeline, the list of workflows -----------------------------


def _where(entry: Any) -> dict[str, int]:
    return {"partition": entry.partition, "leaf_index": entry.leaf_index, "offset": entry.offset}


def decoded(
    entries: Iterable[Any], decode: Callable[[bytes], dict[str, Any]]
) -> tuple[list[tuple[dict[str, Any], dict[str, int]]], list[dict[str, Any]]]:
    """(event, ledger position) of each entry in ledger order, and the entries that do not
    decode (with the reason)."""
    events, undecodable = [], []
    for e in entries:
        where = _where(e)
        try:
            events.append((decode(e.record().value or b""), where))
        except (SchemaError, WakelineError) as err:
            undecodable.append({**where, "event_id": e.event_id, "error": str(err)})
    return events, undecodable


def _pick(event: Mapping[str, Any], *names: str) -> dict[str, Any]:
    return {n: event.get(n) for n in names}


_BASE = ("event_id", "type", "time", "run_id", "agent_id", "principal")
_INTENT = ("tool", "reversibility", "impact", "compensation", "policy_decision",
           "policy_reason", "approval_id", "step_id")  # fmt: skip
_RESULT = ("intent_id", "status", "result_summary", "error_type", "error_message",
           "external_ids", "duration_us")  # fmt: skip
_COMPENSATION = ("original_event_id", "compensation", "idempotency_key", "attempt",
                 "quarantine_id", "status", "error_type", "error_message", "final",
                 "external_ids")  # fmt: skip
_QUARANTINE = ("scope", "reason", "by", "alert_id", "tainted_event_ids", "after_event_id")
_ESCALATION = ("summary", "undone", "not_undone", "recommended_actions", "related_event_ids",
               "quarantine_id", "task_id")  # fmt: skip


def workflow_state(
    events: Sequence[Mapping[str, Any]], plans: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """The quarantine state: `quarantined` (in force, the compensator has no plan for it),
    `compensating` / `compensated` (its plan is running / finished), `released`, or, never
    quarantined, `completed` (its newest run ended with its seal) or `active`. The ledger's
    events say which quarantine is in force; the compensator's plan (when there is one) says
    how far it got."""
    from wakeline.compensator.plan import active_quarantine

    q = active_quarantine(events)
    by_id = {p["quarantine_id"]: p for p in plans}
    if q is not None:
        plan = by_id.get(q["event_id"])
        state = "quarantined" if plan is None else PLAN_STATES.get(plan["state"], plan["state"])
        return {"state": state, "quarantine": _pick(q, "event_id", "time", "scope", "run_id",
                                                    "reason", "by")}  # fmt: skip
    ledgered = [e for e in events if e.get("type") in ("Quarantine", "Release")]
    if ledgered or plans:
        newest = plans[-1] if plans else None
        if newest is not None and newest["state"] != "released" and not ledgered:
            # the compensator holds a plan whose quarantine is not ledgered yet
            return {"state": PLAN_STATES[newest["state"]], "quarantine": None}
        return {"state": "released", "quarantine": None}
    return {"state": "completed" if _sealed(events) else "active", "quarantine": None}


def _sealed(events: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the newest run ended with its seal: a WorkflowCompleted and no call after it."""
    for e in reversed(events):
        if e.get("type") == "WorkflowCompleted":
            return True
        if e.get("type") in ("ToolIntent", "ToolResult", "WorkflowSnapshot"):
            return False
    return False


def timeline(
    workflow_id: str,
    entries: Sequence[Any],
    decode: Callable[[bytes], dict[str, Any]],
    state: CompensatorState | None = None,
) -> dict[str, Any]:
    """Every call of the workflow in ledger order, each with its intent, result,
    compensation attempts and escalations; its quarantines, releases and other events;
    the compensator's current view (actions, tasks) when `state` is given; and what the
    compensator knows that the ledger does not show yet (`unledgered`)."""
    events, undecodable = decoded(entries, decode)
    calls: dict[str, dict[str, Any]] = {}
    quarantines, releases, escalations, other, orphans = [], [], [], [], []
    for event, where in events:
        kind = event.get("type")
        base = {**_pick(event, *_BASE), "ledger": where}
        if kind == "ToolIntent":
            if event["event_id"] in calls:
                continue
            calls[event["event_id"]] = {
                "intent": {
                    **base,
                    **_pick(event, *_INTENT),
                },
                "result": None,
                "compensations": [],
                "escalations": [],
                "action": None,
                "tasks": [],
            }
        elif kind == "ToolResult":
            item = {
                **base,
                **_pick(event, *_RESULT),
            }
            call = calls.get(event.get("intent_id", ""))
            if call is None:
                orphans.append(item)
            elif call["result"] is None or (
                item["status"] == "ok" and call["result"]["status"] != "ok"
            ):
                call["result"] = item  # duplicates: the one saying it took effect
        elif kind in ("CompensationStarted", "CompensationResult"):
            item = {
                **base,
                **_pick(event, *_COMPENSATION),
            }
            call = calls.get(event.get("original_event_id", ""))
            (call["compensations"] if call is not None else orphans).append(item)
        elif kind == "Escalation":
            item = {
                **base,
                **_pick(event, *_ESCALATION),
            }
            escalations.append(item)
            for related in event.get("related_event_ids") or ():
                if related in calls:
                    calls[related]["escalations"].append(item["event_id"])
        elif kind == "Quarantine":
            quarantines.append({**base, **_pick(event, *_QUARANTINE)})
        elif kind == "Release":
            releases.append({**base, **_pick(event, "reason", "by", "quarantine_id")})
        else:
            other.append(base)
    unledgered: list[str] = []
    plans: list[dict[str, Any]] = []
    if state is not None:
        plans = [_jsonable(p) for p in state.plans]
        for a in state.actions:
            call = calls.get(a["intent_id"])
            if call is not None:
                call["action"] = _jsonable(a)
        for t in state.tasks:
            if t["intent_id"] in calls:
                calls[t["intent_id"]]["tasks"].append(_jsonable(t))
        unledgered = _unledgered(state, {e["event_id"] for e, _ in events})
    return {
        "workflow_id": workflow_id,
        **workflow_state([e for e, _ in events], plans),
        "ledgered_events": len(entries),
        "partitions": sorted({e.partition for e in entries}),
        "calls": list(calls.values()),
        "quarantines": quarantines,
        "releases": releases,
        "escalations": escalations,
        "other_events": other,
        "unmatched": orphans,
        "plans": plans,
        "tasks": [_jsonable(t) for t in (state.tasks if state else ()) if t["kind"] == "plan"],
        "undecodable": undecodable,
        "unledgered": unledgered,
        "compensator_state": state is not None,
    }


def _unledgered(state: CompensatorState, ledgered: set[str]) -> list[str]:
    """What the compensator's tables show that the ledger does not (yet)."""
    notes = []
    seen = [(i, t, o) for i, t, o in state.events if i not in ledgered]
    if seen:
        kinds = sorted({t for _, t, _ in seen})
        notes.append(
            f"{len(seen)} event(s) the compensator took in are not ledgered yet "
            f"({', '.join(kinds)}; first at offset {seen[0][2]}): the ledger lags the topic"
        )
    for p in state.plans:
        if p["quarantine_id"] not in ledgered:
            notes.append(f"quarantine {p['quarantine_id']} (plan {p['state']}) is not ledgered")
    for t in state.tasks:
        if t["published_at"] is not None and t["escalation_event_id"] not in ledgered:
            notes.append(
                f"escalation {t['escalation_event_id']} (task {t['task_id']}) was published "
                "but is not ledgered yet"
            )
        elif t["published_at"] is None:
            notes.append(f"task {t['task_id']}: its Escalation event is not published yet")
    return notes


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, bytes | memoryview):
            v = bytes(v).decode("utf-8", "replace")
        elif hasattr(v, "isoformat"):
            v = v.isoformat()
        out[k] = v
    return out


def workflow_rows(
    store: Any,
    decode: Callable[[bytes], dict[str, Any]],
    *,
    limit: int | None = 20,
    quarantined_only: bool = False,
    state_of: Callable[[Sequence[str]], Mapping[str, CompensatorState]] | None = None,
) -> list[dict[str, Any]]:
    """Workflows newest activity first (the newest ledgered event's broker time), with their
    event count, partitions and quarantine state; `quarantined_only` keeps those with a
    quarantine in force. `state_of(ids)` reads the compensator's tables (None: the ledger's
    events alone decide the state)."""
    rows: list[dict[str, Any]] = []
    batch = max(limit or 100, 20)
    scanned = store.workflows(None if quarantined_only else limit)
    for start in range(0, len(scanned), batch):
        chunk = scanned[start : start + batch]
        ids = [w.workflow_id for w in chunk]
        states = state_of(ids) if state_of is not None else {}
        for w in chunk:
            events, undecodable = decoded(store.entries_for_workflow(w.workflow_id), decode)
            st = states.get(w.workflow_id)
            status = workflow_state([e for e, _ in events], st.plans if st else ())
            if quarantined_only and status["state"] not in QUARANTINED_STATES:
                continue
            open_tasks = sum(1 for t in st.tasks if t["state"] != "resolved") if st else None
            rows.append(
                {
                    "workflow_id": w.workflow_id,
                    "events": w.entries,
                    "partitions": list(w.partitions),
                    "first_ms": w.first_ms,
                    "last_ms": w.last_ms,
                    "calls": sum(1 for e, _ in events if e.get("type") == "ToolIntent"),
                    **status,
                    "open_tasks": open_tasks,
                    "undecodable": len(undecodable),
                }
            )
            if limit is not None and len(rows) >= limit:
                return rows
    return rows
