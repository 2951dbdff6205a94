"""Quarantine scopes that span workflows: the causal index, the fan-out, the order across them.

Tables of infra/migrations/0009_causal_index.sql, written by the compensator's sink in the
transaction of the round that read the events (compensator/processor.py), so the index is
what the compensator has read and a redone round changes nothing:

- **the causal index**: `compensator_edges` (event -> children, from `parent_event_ids` and a
  result's intent) and `compensator_calls` (each call's agent, boundary, time and workflow:
  agent -> workflows by time, boundary -> workflows).
- **origins**: a Quarantine of scope `agent`, `boundary` or `tainted` that names no
  `origin_id` spans workflows. Its partition's compensator records it
  (`compensator_origins`), finds the workflows it reaches from the index, and writes one
  child Quarantine per workflow into the **fan-out outbox** (`compensator_fanouts`), each
  naming the origin in `origin_id`, to be produced on that workflow's partition; each
  partition's compensator compensates its own. The executor of the origin's partition
  produces the rows not sent and marks them sent once the broker has them: a fan-out cut
  short by a crash resumes from the outbox, and a child sent twice is the same event (a
  Quarantine with a plan already is a redelivery). While an origin is active, calls in its
  scope that arrive later (new workflows of the agent or boundary, new descendants of the
  tainted events) add fan-outs the same way.
- **gates**: an `agent` or `boundary` origin is published on the compacted quarantines topic
  keyed `agent:<id>` / `boundary:<b>` (SDK gates refuse by those keys too); a Release of the
  origin tombstones the key and fans out a Release to every child.
- **order**: an action waits while an action of a call that causally depends on it (in any
  workflow, any plan, any process) is still pending or running, and while the fan-out of its
  plan's origin has children without a plan: children are undone before their parents.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import psycopg

from wakeline.compensator.plan import Scope, build_plan
from wakeline.compensator.registry import CompensationRegistry
from wakeline.compensator.store import pg_text, workflow_key
from wakeline.schemas import encode_event, new_event_id

#: scopes whose quarantine (without an origin_id) fans out to other workflows
SPANNING = ("agent", "boundary", "tainted")
#: workflow ids of the pseudo workflows an origin is keyed by when it names no workflow
#: (`wakeline quarantine --agent A` writes it as workflow `agent:A`): they get no plan
PSEUDO_PREFIXES = ("agent:", "boundary:", "taint:")
#: most tainted event ids a child quarantine repeats (the taint table has them all)
MAX_CHILD_TAINTED = 100


def is_origin(q: Mapping[str, Any]) -> bool:
    return q.get("origin_id") is None and q.get("scope") in SPANNING


def is_pseudo(workflow_id: str) -> bool:
    return workflow_id.startswith(PSEUDO_PREFIXES)


def gate_key(q: Mapping[str, Any]) -> bytes | None:
    """The quarantines topic key an agent or boundary quarantine refuses by, else None."""
    if q.get("scope") in ("agent", "boundary") and q.get("target"):
        return f"{q['scope']}:{q['target']}".encode("utf-8", "surrogatepass")
    return None


def taint_origin(q: Mapping[str, Any]) -> str:
    return q.get("origin_id") or q["event_id"]


def plan_scope(cur: psycopg.Cursor, q: Mapping[str, Any]) -> Scope:
    """The scope a plan of `q` is computed with: a tainted scope also covers what the taint
    table of its origin holds (descendants found in other workflows, late ones included)."""
    scope = Scope.of(q)
    if scope.kind != "tainted":
        return scope
    return replace(scope, tainted=scope.tainted | tainted_of(cur, taint_origin(q)))


def tainted_of(cur: psycopg.Cursor, origin_id: str) -> frozenset[str]:
    cur.execute("SELECT event_id FROM compensator_taint WHERE origin_id = %s", (origin_id,))
    return frozenset(r[0] for r in cur.fetchall())


# -- the causal index ---------------------------------------------------------------------------


def index_events(
    cur: psycopg.Cursor, topic: str, items: Iterable[tuple[int, Mapping[str, Any]]]
) -> tuple[list[tuple], list[tuple]]:
    """Record the causal links and calls of a round's events ((partition, event), keyed by
    their workflow); returns the edges and calls recorded (as rows)."""
    edges, calls = [], []
    for partition, e in items:
        wid = pg_text(e.get("workflow_id", ""))
        key = workflow_key(e.get("workflow_id", ""))
        eid, kind = pg_text(e["event_id"]), str(e.get("type"))
        parents = list(e.get("parent_event_ids") or ())
        if kind == "ToolResult" and e.get("intent_id"):
            parents.append(e["intent_id"])
        for p in dict.fromkeys(parents):
            edges.append((pg_text(p), eid, kind, key, wid, partition))
        if kind == "ToolIntent":
            calls.append(
                (eid, pg_text(e.get("agent_id", "")), e.get("boundary"), int(e["time"]), key,
                 wid, partition)
            )  # fmt: skip
    if edges or calls:  # one statement, one round trip: the sink runs this every round
        ecols = [list(c) for c in zip(*edges, strict=True)] if edges else [[]] * 6
        ccols = [list(c) for c in zip(*calls, strict=True)] if calls else [[]] * 7
        ccols[2] = [None if b is None else pg_text(b) for b in ccols[2]]
        cur.execute(
            "WITH edges AS (INSERT INTO compensator_edges (topic, parent_id, child_id, "
            "child_type, workflow_key, workflow_id, partition) SELECT %s, * FROM unnest("
            "%b::text[], %b::text[], %b::text[], %b::bytea[], %b::text[], %b::integer[]) "
            "ON CONFLICT DO NOTHING) "
            "INSERT INTO compensator_calls (topic, intent_id, agent_id, boundary, event_time, "
            "workflow_key, workflow_id, partition) SELECT %s, * FROM unnest(%b::text[], "
            "%b::text[], %b::text[], %b::bigint[], %b::bytea[], %b::text[], %b::integer[]) "
            "ON CONFLICT DO NOTHING",
            [topic, *ecols, topic, *ccols],
        )
    return edges, calls


_CLOSURE = (
    "WITH RECURSIVE d(id) AS (SELECT unnest(%s::text[]) UNION SELECT e.child_id FROM "
    "compensator_edges e JOIN d ON e.parent_id = d.id AND e.topic = %s) "
)


def closure(cur: psycopg.Cursor, topic: str, event_ids: Sequence[str]) -> set[str]:
    """The events and every event that depends on them, transitively."""
    cur.execute(_CLOSURE + "SELECT id FROM d", ([pg_text(e) for e in event_ids], topic))
    return {r[0] for r in cur.fetchall()}


def workflows_of(cur: psycopg.Cursor, topic: str, event_ids: Sequence[str]) -> dict[bytes, str]:
    """The workflows the events are in (as far as the index knows): key -> workflow id."""
    cur.execute(
        "SELECT workflow_key, workflow_id FROM compensator_edges WHERE topic = %s AND "
        "child_id = ANY(%s) UNION SELECT workflow_key, workflow_id FROM compensator_calls "
        "WHERE topic = %s AND intent_id = ANY(%s)",
        (topic, list(event_ids), topic, list(event_ids)),
    )
    return {bytes(r[0]): r[1] for r in cur.fetchall()}


def reach(cur: psycopg.Cursor, topic: str, q: Mapping[str, Any]) -> dict[bytes, str]:
    """The workflows an origin's scope reaches now (key -> workflow id)."""
    scope = q.get("scope")
    if scope == "agent":
        cur.execute(
            "SELECT DISTINCT workflow_key, workflow_id FROM compensator_calls WHERE topic = %s "
            "AND agent_id = %s AND event_time >= %s",
            (topic, pg_text(q.get("target") or ""), int(q.get("since") or 0)),
        )
    elif scope == "boundary":
        cur.execute(
            "SELECT DISTINCT workflow_key, workflow_id FROM compensator_calls WHERE topic = %s "
            "AND boundary = %s",
            (topic, pg_text(q.get("target") or "")),
        )
    else:
        return workflows_of(cur, topic, sorted(closure(cur, topic, q["tainted_event_ids"])))
    return {bytes(r[0]): r[1] for r in cur.fetchall()}


# -- origins and the fan-out --------------------------------------------------------------------


def on_origin(
    cur: psycopg.Cursor, topic: str, q: Mapping[str, Any], partition: int, value: bytes
) -> bool:
    """Record an origin and fan it out to the workflows it reaches; False if it was known
    (a redelivery: its fan-out rows are there already)."""
    target = q.get("target")
    cur.execute(
        "INSERT INTO compensator_origins (origin_id, topic, scope, target, since, gate_key, "
        "workflow_key, partition, value) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT DO NOTHING",
        (pg_text(q["event_id"]), topic, q["scope"], target and pg_text(target),
         q.get("since"), gate_key(q), workflow_key(q["workflow_id"]), partition, value),
    )  # fmt: skip
    if cur.rowcount != 1:
        return False
    if q["scope"] == "tainted":
        taint = closure(cur, topic, q["tainted_event_ids"])
        _add_taint(cur, q["event_id"], taint)
    for key, wid in reach(cur, topic, q).items():
        add_fanout(cur, q, partition, key, wid)
    return True


def _add_taint(cur: psycopg.Cursor, origin_id: str, events: Iterable[str]) -> None:
    ids = sorted(events)
    if ids:
        cur.execute(
            "INSERT INTO compensator_taint (origin_id, event_id) SELECT %s, unnest(%s::text[]) "
            "ON CONFLICT DO NOTHING",
            (origin_id, ids),
        )


def add_fanout(
    cur: psycopg.Cursor, origin: Mapping[str, Any], partition: int, key: bytes, wid: str
) -> bool:
    """One child Quarantine of `origin` for workflow `wid` in the outbox (not for the
    origin's own workflow, which its own plan covers); True if it is new."""
    if key == workflow_key(origin["workflow_id"]) or is_pseudo(wid):
        return False
    # only while the origin is active, holding its row: a Release of it (which fans out to
    # the children it finds) waits for this transaction, or this one sees it released
    cur.execute(
        "SELECT 1 FROM compensator_origins WHERE origin_id = %s AND state = 'active' FOR SHARE",
        (origin["event_id"],),
    )
    if cur.fetchone() is None:
        return False
    child = {
        **origin,
        "event_id": new_event_id(),
        "time": time.time_ns() // 1000,
        "workflow_id": wid,
        "parent_event_ids": [origin["event_id"]],
        "tainted_event_ids": list(origin.get("tainted_event_ids") or ())[:MAX_CHILD_TAINTED],
        "origin_id": origin["event_id"],
    }
    return _outbox(cur, origin["event_id"], "quarantine", key, child, partition)


def _outbox(
    cur: psycopg.Cursor, origin_id: str, kind: str, key: bytes, event: Mapping[str, Any],
    partition: int,
) -> bool:  # fmt: skip
    cur.execute(
        "INSERT INTO compensator_fanouts (origin_id, kind, workflow_key, workflow_id, event_id,"
        " value, origin_partition) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (origin_id, kind, key, pg_text(event["workflow_id"]), event["event_id"],
         encode_event(dict(event)), partition),
    )  # fmt: skip
    return cur.rowcount == 1


class ActiveOrigins:
    """The active origins, read at most every `ttl_s` (the sink asks every round; origins
    are rare). Read at the start of a round, before its writes, so it holds committed rows
    only. What a stale list misses, `sweep` (the executor, every `ttl_s`) adds."""

    def __init__(self, ttl_s: float = 1.0) -> None:
        self.ttl_s = ttl_s
        self._rows: list[tuple] | None = None
        self._at = 0.0

    def get(self, cur: psycopg.Cursor, topic: str) -> list[tuple]:
        if self._rows is None or time.monotonic() - self._at > self.ttl_s:
            cur.execute(
                "SELECT origin_id, scope, target, since, partition, value FROM "
                "compensator_origins WHERE topic = %s AND state = 'active'",
                (topic,),
            )
            self._rows, self._at = cur.fetchall(), time.monotonic()
        return self._rows

    def invalidate(self) -> None:
        self._rows = None


def join_late(
    cur: psycopg.Cursor,
    edges: Sequence[tuple],
    calls: Sequence[tuple],
    decode: Any,
    origins: Sequence[tuple],
    topic: str,
) -> tuple[int, set[bytes]]:
    """Calls in an active origin's scope that the compensator read after its fan-out (new
    workflows of the agent or boundary, new descendants of tainted events) join it: the
    taint table grows, and a workflow not yet reached gets its child. Returns how many
    workflows were added, and the workflows whose taint grew (their plans are computed
    again). `origins`: rows of `ActiveOrigins`."""
    grew: set[bytes] = set()
    if not origins or (not edges and not calls):
        return 0, grew
    added = 0
    for origin_id, scope, target, since, partition, value in origins:
        reached: dict[bytes, str] = {}
        if scope == "agent":
            for c in calls:
                if c[1] == target and c[3] >= int(since or 0):
                    reached[c[4]] = c[5]
        elif scope == "boundary":
            for c in calls:
                if c[2] is not None and c[2] == target:
                    reached[c[4]] = c[5]
        else:
            children = sorted({e[1] for e in edges})
            cur.execute(
                "SELECT DISTINCT e.child_id FROM compensator_edges e JOIN compensator_taint t "
                "ON t.event_id = e.parent_id AND t.origin_id = %s WHERE e.topic = %s AND "
                "e.child_id = ANY(%s)",
                (origin_id, topic, children),
            )
            hit = [r[0] for r in cur.fetchall()]
            if not hit:
                continue
            grown = closure(cur, topic, hit)
            _add_taint(cur, origin_id, grown)
            reached = workflows_of(cur, topic, sorted(grown))
            grew.update(reached)
            q = decode(bytes(value))
            for key, wid in reached.items():
                added += add_fanout(cur, q, int(partition), key, wid)
    return added, grew


def sweep(cur: psycopg.Cursor, topic: str, partitions: Sequence[int], decode: Any) -> int:
    """The active origins of these partitions reach again what the index holds now, and
    fan out to any workflow missing: a call indexed in a transaction concurrent with the
    origin's (neither saw the other's rows), or one the sink's stale origin list missed.
    Idempotent (the outbox's key); how many workflows were added."""
    cur.execute(
        "SELECT origin_id, partition, value FROM compensator_origins WHERE topic = %s AND "
        "state = 'active' AND partition = ANY(%s)",
        (topic, list(partitions)),
    )
    added = 0
    for origin_id, partition, value in cur.fetchall():
        q = decode(bytes(value))
        if q["scope"] == "tainted":
            _add_taint(cur, origin_id, closure(cur, topic, sorted(tainted_of(cur, origin_id))))
            reached = workflows_of(cur, topic, sorted(tainted_of(cur, origin_id)))
        else:
            reached = reach(cur, topic, q)
        cur.execute(
            "SELECT workflow_key FROM compensator_fanouts WHERE origin_id = %s AND kind = "
            "'quarantine'",
            (origin_id,),
        )
        have = {bytes(r[0]) for r in cur.fetchall()}
        for key, wid in reached.items():
            if key not in have:
                added += add_fanout(cur, q, int(partition), key, wid)
    return added


def on_release(
    cur: psycopg.Cursor, topic: str, release: Mapping[str, Any], key: bytes
) -> list[bytes]:
    """A Release of an origin (named by `quarantine_id`, else every active origin keyed by
    the released workflow) marks it released and fans out a Release to each child; returns
    the gate keys to tombstone."""
    lifted = release.get("quarantine_id")
    cur.execute(
        "UPDATE compensator_origins SET state = 'released', released_at = now() "
        "WHERE topic = %s AND state = 'active' AND (origin_id = %s OR (%s::text IS NULL AND "
        "workflow_key = %s)) RETURNING origin_id, gate_key, partition",
        (topic, lifted, lifted, key),
    )
    released = cur.fetchall()
    keys = []
    for origin_id, gate, partition in released:
        if gate is not None:
            keys.append(bytes(gate))
        cur.execute(
            "SELECT workflow_key, workflow_id, event_id FROM compensator_fanouts WHERE "
            "origin_id = %s AND kind = 'quarantine'",
            (origin_id,),
        )
        for wkey, wid, child_id in cur.fetchall():
            child = {
                **release,
                "event_id": new_event_id(),
                "time": time.time_ns() // 1000,
                "workflow_id": wid,
                "parent_event_ids": [release["event_id"]],
                "quarantine_id": child_id,
            }
            _outbox(cur, origin_id, "release", bytes(wkey), child, int(partition))
    return keys


def active_gates(cur: psycopg.Cursor, topic: str, partitions: Sequence[int]) -> list[tuple]:
    """(gate key, origin frame) of the active agent and boundary origins of the partitions."""
    cur.execute(
        "SELECT gate_key, value FROM compensator_origins WHERE topic = %s AND state = 'active' "
        "AND gate_key IS NOT NULL AND partition = ANY(%s) ORDER BY created_at",
        (topic, list(partitions)),
    )
    return [(bytes(r[0]), bytes(r[1])) for r in cur.fetchall()]


def unsent(cur: psycopg.Cursor, partitions: Sequence[int], limit: int = 50) -> list[tuple]:
    """Fan-out rows not yet produced of origins on these partitions: (event id, key, value)."""
    cur.execute(
        "SELECT event_id, workflow_key, value FROM compensator_fanouts WHERE sent_at IS NULL "
        "AND origin_partition = ANY(%s) ORDER BY created_at, event_id LIMIT %s",
        (list(partitions), limit),
    )
    return [(r[0], bytes(r[1]), bytes(r[2])) for r in cur.fetchall()]


def mark_sent(cur: psycopg.Cursor, event_ids: Sequence[str]) -> None:
    cur.execute(
        "UPDATE compensator_fanouts SET sent_at = now() WHERE event_id = ANY(%s)",
        (list(event_ids),),
    )


# -- order across workflows ---------------------------------------------------------------------


def waits_for(
    cur: psycopg.Cursor, topic: str, quarantine_id: str, intent_id: str, young_after_us: int
) -> str | None:
    """Why the action of `intent_id` in plan `quarantine_id` must wait, or None: an action of
    a call depending on it (in another plan) is not finished; a call depending on it in a
    quarantined workflow has no result yet and is younger than `young_after_us` (its plan
    waits for the result to decide, the grace of outcome-unknown calls); or its origin's
    fan-out has a workflow without a plan yet.

    Asked before every action, so first two index lookups say which of the three questions
    can have an answer: only a call with a dependent (a child other than its own result, or
    a child of its result) has depending calls, and only a plan of a fan-out (or of an
    origin) has a fan-out. Most calls have neither; the recursive queries cost a plan of 100
    actions some 2 s under load (bench/compensate.py)."""
    cur.execute(
        "SELECT EXISTS (SELECT 1 FROM compensator_edges e WHERE e.topic = %s AND "
        "e.parent_id = %s AND e.child_type <> 'ToolResult') OR EXISTS (SELECT 1 FROM "
        "compensator_edges r JOIN compensator_edges e ON e.topic = r.topic AND e.parent_id = "
        "r.child_id WHERE r.topic = %s AND r.parent_id = %s AND r.child_type = 'ToolResult'), "
        "EXISTS (SELECT 1 FROM compensator_fanouts WHERE event_id = %s) OR EXISTS (SELECT 1 "
        "FROM compensator_origins WHERE origin_id = %s)",
        (topic, intent_id, topic, intent_id, quarantine_id, quarantine_id),
    )
    row = cur.fetchone()
    depended_on, fanned_out = (True, True) if row is None else (bool(row[0]), bool(row[1]))
    if depended_on:
        why = _dependent_waits(cur, topic, quarantine_id, intent_id, young_after_us)
        if why is not None:
            return why
    if not fanned_out:
        return None
    cur.execute(
        "SELECT f.workflow_id FROM compensator_fanouts f WHERE f.kind = 'quarantine' AND "
        "f.origin_id IN (SELECT origin_id FROM compensator_fanouts WHERE event_id = %s "
        "UNION SELECT %s) AND NOT EXISTS (SELECT 1 FROM compensator_plans p WHERE "
        "p.quarantine_id = f.event_id OR (p.workflow_key = f.workflow_key AND "
        "p.state <> 'released')) LIMIT 1",
        (quarantine_id, quarantine_id),
    )
    row = cur.fetchone()
    if row is not None:
        return f"the fan-out has not reached workflow {row[0]} yet"
    return None


def _dependent_waits(
    cur: psycopg.Cursor, topic: str, quarantine_id: str, intent_id: str, young_after_us: int
) -> str | None:
    """`waits_for`'s first two questions: a depending call's action not finished, or a
    depending call in a quarantined workflow still without a result."""
    cur.execute(
        _CLOSURE + "SELECT a.intent_id, p.workflow_id FROM compensator_actions a JOIN "
        "compensator_plans p USING (quarantine_id) WHERE a.intent_id IN (SELECT id FROM d) "
        "AND a.intent_id <> %s AND a.quarantine_id <> %s AND a.state IN ('pending', "
        "'running') AND p.state = 'running' LIMIT 1",
        ([intent_id], topic, intent_id, quarantine_id),
    )
    row = cur.fetchone()
    if row is not None:
        return f"call {row[0]} of workflow {row[1]} depends on it and is not undone yet"
    cur.execute(
        _CLOSURE + "SELECT c.intent_id, c.workflow_id FROM compensator_calls c WHERE "
        "c.topic = %s AND c.intent_id IN (SELECT id FROM d) AND c.intent_id <> %s AND "
        "c.event_time > %s AND NOT EXISTS (SELECT 1 FROM compensator_edges r WHERE "
        "r.topic = c.topic AND r.parent_id = c.intent_id AND r.child_type = 'ToolResult') "
        "AND EXISTS (SELECT 1 FROM compensator_plans p WHERE p.workflow_key = c.workflow_key "
        "AND p.state = 'running') LIMIT 1",
        ([intent_id], topic, topic, intent_id, young_after_us),
    )
    row = cur.fetchone()
    if row is not None:
        return f"call {row[0]} of workflow {row[1]} depends on it and has no result yet"
    return None


# -- impact (a dry run of a taint quarantine) ---------------------------------------------------


def impact(
    dsn: str,
    topic: str,
    event_ids: Sequence[str],
    handlers: CompensationRegistry | None = None,
    *,
    now_us: int | None = None,
) -> dict[str, Any]:
    """What a taint quarantine of `event_ids` would stop and undo, computed as the
    compensator would (its causal index, its events, `build_plan`), running nothing: the
    workflows the SDK would refuse, and each one's plan (newest call first)."""
    from wakeline.compensator.processor import decode_frames, tool_events
    from wakeline.compensator.store import CompensatorStore
    from wakeline.schemas import decode_event

    handlers = handlers if handlers is not None else CompensationRegistry()
    now_us = now_us if now_us is not None else time.time_ns() // 1000
    store = CompensatorStore(dsn, topic)
    try:
        with store.transaction() as cur:
            taint = closure(cur, topic, list(event_ids))
            wfs = workflows_of(cur, topic, sorted(taint))
            frames = {key: store.workflow_events(cur, key) for key in wfs}
            compensated = {key: store.compensated_intents(cur, key) for key in wfs}
    finally:
        store.close()
    scope = Scope("tainted", tainted=frozenset(taint))
    workflows, calls = [], []
    for key, wid in sorted(wfs.items(), key=lambda kv: kv[1]):
        events, _ = decode_frames(frames[key], decode_event)
        steps = build_plan(tool_events(events), handlers, scope=scope, now_us=now_us,
                           compensated=compensated[key])  # fmt: skip
        workflows.append(wid)
        calls += [{"workflow_id": wid, **st.to_json()} for st in steps]
    return {
        "event_ids": list(event_ids),
        "tainted_events": len(taint),
        "workflows": workflows,
        "calls": calls,
        "handlers": handlers.names(),
    }
