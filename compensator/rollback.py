"""Rollback to a workflow checkpoint: undo what a run did after a `WorkflowSnapshot`.

`rollback(...)` is every step, each an event on the workflow's partition:

1. the checkpoint is read from the PostgreSQL ledger (`producers/snapshots.py`: by event id,
   or the newest of that name) and its state checked against its ledgered digest; a workflow
   with a quarantine in force is refused (release it first: the compensator would take the
   rollback for a duplicate of it);
2. a `Quarantine` of the snapshot's run with `after_event_id` = the snapshot's event id: SDK
   gates refuse the run's calls, and the compensator plans only the calls after the
   checkpoint (`plan.after_checkpoint`), newest first, escalating what cannot be undone;
   and one of each run resumed since from a point after the checkpoint (`resumed_since`),
   after that run's first snapshot: all of it;
3. with `wait_s`, once the compensator's plans are finished (`compensator_plans.state`
   done), a `Release` naming each quarantine, and the snapshot's state handed back. Without
   it the runs stay quarantined until `wakeline release WF`.

`rollback_when_ledgered(...)` is `rollback` against the PostgreSQL ledger once the worker has
ledgered the checkpoint: what an agent going back to a checkpoint it has just written calls
(the default of `WakelineGraph(rollback=...)`, producers/adapters/langgraph.py).

`checkpoints(...)` lists a workflow's snapshots: the ledgered ones with their ledger
position, then those the compensator took in that the ledger does not show yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from wakeline.compensator import operator
from wakeline.compensator.operator import OperatorError, Writer, _connect, _envelope, _text
from wakeline.errors import StackError, WakelineError
from wakeline.infra.settings import KafkaSettings
from wakeline.producers.snapshots import (
    Snapshot,
    SnapshotError,
    checked_state,
    find_snapshot,
    ledgered_snapshots,
    open_ledger,
)

Decode = Callable[[bytes], dict[str, Any]]


def checkpoints(store: Any, decode: Decode, workflow_id: str, dsn: str | None) -> list[Snapshot]:
    """The workflow's WorkflowSnapshots: ledgered (in ledger order), then, when `dsn` is
    given, the ones only the compensator has seen so far (`ledger` None)."""
    found = ledgered_snapshots(store, workflow_id, decode)
    if dsn is None:
        return found
    seen = {s.event_id for s in found}
    import psycopg

    try:
        with _connect(dsn) as conn:
            rows = conn.execute(
                "SELECT event_id, value FROM compensator_events WHERE workflow_key = %s "
                "AND event_type = 'WorkflowSnapshot' ORDER BY partition, \"offset\"",
                (workflow_id.encode(),),
            ).fetchall()
    except psycopg.Error as e:
        raise StackError(f"cannot read compensator_events: {e}") from e
    for event_id, value in rows:
        if event_id in seen:
            continue
        try:
            found.append(Snapshot(decode(bytes(value))))
        except WakelineError as e:  # stored once decoded; a schema gone from PostgreSQL
            raise StackError(f"checkpoint {event_id} in compensator_events: {e}") from e
    return found


def plan_state(dsn: str, quarantine_id: str) -> dict[str, Any] | None:
    """The compensator's plan of a quarantine and its actions, or None (not taken up yet)."""
    import psycopg

    try:
        with _connect(dsn) as conn:
            plan = conn.execute(
                "SELECT state, steps FROM compensator_plans WHERE quarantine_id = %s",
                (quarantine_id,),
            ).fetchone()
            if plan is None:
                return None
            actions = conn.execute(
                "SELECT intent_id, tool, compensation, state, detail FROM compensator_actions "
                "WHERE quarantine_id = %s ORDER BY seq",
                (quarantine_id,),
            ).fetchall()
    except psycopg.Error as e:
        raise StackError(f"cannot read the compensator's plans: {e}") from e
    names = ("intent_id", "tool", "compensation", "state", "detail")
    return {
        "state": plan[0],
        "steps": plan[1] or [],
        "actions": [dict(zip(names, a, strict=True)) for a in actions],
    }


def resumed_since(snapshots: Sequence[Snapshot], target: Snapshot) -> list[Snapshot]:
    """The runs resumed from a point a rollback to `target` undoes, as the first snapshot of
    each (ledger order): a run whose first snapshot names as its parent `target`, or a
    snapshot after it in its run, or one in such a resumed run (`Emitter.resume` writes that
    parent link). A rollback to `target` undoes those runs from their start as well."""
    where = {s.event_id: i for i, s in enumerate(snapshots)}
    undone_from = {target.run_id: where[target.event_id]}  # run -> first index undone
    found = []
    for i, s in enumerate(snapshots):
        if s.run_id in undone_from:
            continue
        for parent in s.event.get("parent_event_ids") or ():
            at = where.get(parent)
            if at is not None and undone_from.get(snapshots[at].run_id, len(snapshots)) <= at:
                undone_from[s.run_id] = i
                found.append(s)
                break
    return found


def rollback(
    kafka: KafkaSettings,
    dsn: str,
    store: Any,
    decode: Decode,
    workflow_id: str,
    checkpoint: str,
    *,
    by: str | None = None,
    reason: str | None = None,
    wait_s: float | None = None,
    poll_s: float = 0.2,
) -> dict[str, Any]:
    """Quarantine the checkpoint's run after it, and every run resumed since from a point
    after it (`resumed_since`) from its start; with `wait_s`, wait for the compensator's
    plans to finish, release the runs and hand back the state (module docstring)."""
    workflow_id = _text("workflow id", workflow_id, limit=operator.MAX_ID_BYTES)
    snaps = ledgered_snapshots(store, workflow_id, decode)
    snap = find_snapshot(snaps, checkpoint, workflow_id)
    state = checked_state(snap.event)
    in_force = operator._open_plan(dsn, workflow_id.encode()) or {}  # the compensator's view
    if in_force.get("quarantine_id") is not None:
        raise OperatorError(
            f"workflow {workflow_id} has quarantine {in_force['quarantine_id']} in force: "
            "release it (`wakeline release`) before rolling back, or the compensator takes "
            "the rollback for a duplicate of it"
        )
    why = reason or f"rollback to checkpoint {snap.name} (event {snap.event_id})"
    writer = Writer(kafka)  # one producer for every Quarantine and Release of the rollback
    runs = []  # (snapshot the run is undone after, the Quarantine written), newest run first
    for start in [*reversed(resumed_since(snaps, snap)), snap]:
        q = operator.quarantine(kafka, workflow_id, reason=why, by=by, run_id=start.run_id,
                                after_event_id=start.event_id, writer=writer)  # fmt: skip
        runs.append((start, q))
    writer.flush()
    report: dict[str, Any] = {
        "workflow_id": workflow_id,
        "checkpoint": snap.to_json(),
        "state": state,
        "quarantine": None,
        "plan": None,
        "release": None,
        #: the runs resumed since, undone from their start (newest first)
        "resumed_runs": [],
    }
    for start, q in runs:
        item = {"run_id": start.run_id, "after_event_id": start.event_id,
                "quarantine": {k: q[k] for k in ("event_id", "topic", "partition", "offset")},
                "plan": None, "release": None}  # fmt: skip
        if start is snap:
            report.update(quarantine=item["quarantine"])
        else:
            report["resumed_runs"].append(item)
    if wait_s is None:
        return report
    deadline = time.monotonic() + wait_s
    plans = {}
    for _, q in runs:
        plans[q["event_id"]] = wait_plan_done(dsn, q["event_id"], deadline, wait_s, poll_s)
    for (start, q), item in zip(runs, [*report["resumed_runs"], report], strict=True):
        release = _envelope("Release", workflow_id, start.run_id, q["event"]["by"])
        release.update(
            reason=f"rollback to checkpoint {snap.name} finished",
            by=q["event"]["by"],
            quarantine_id=q["event_id"],
        )
        item["plan"] = plans[q["event_id"]]
        item["release"] = writer.add(release)
    writer.flush()
    return report


def rollback_when_ledgered(
    kafka: KafkaSettings,
    dsn: str | None,
    workflow_id: str,
    checkpoint: str,
    *,
    wait_s: float,
    reason: str | None = None,
    by: str | None = None,
) -> dict[str, Any]:
    """`rollback` with the PostgreSQL ledger at `dsn` (default `WAKELINE_DSN` or the local
    stack), waiting up to `wait_s` in all: for the worker to ledger the checkpoint, then for
    the compensator's plans (`StackError` past it)."""
    deadline = time.monotonic() + wait_s
    with open_ledger(dsn) as (store, decode, url):
        assert url is not None
        while True:
            try:
                return rollback(
                    kafka, url, store, decode, workflow_id, checkpoint, by=by, reason=reason,
                    wait_s=max(1.0, deadline - time.monotonic()),
                )  # fmt: skip
            except SnapshotError as e:  # not ledgered yet: the worker lags
                if "no ledgered checkpoint" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def wait_plan_done(
    dsn: str, qid: str, deadline: float, wait_s: float, poll_s: float = 0.2
) -> dict[str, Any]:
    """`plan_state` of quarantine `qid` once the compensator's plan is done (every call undone,
    skipped or escalated); StackError at `deadline` (time.monotonic), saying what it is."""
    while True:
        plan = plan_state(dsn, qid)
        if plan is not None and plan["state"] == "done":
            return plan
        if time.monotonic() >= deadline:
            raise StackError(
                f"the compensator's plan of quarantine {qid} is "
                f"{'not taken up' if plan is None else plan['state']} after {wait_s:g} s "
                "(is `wakeline compensator` running?); the quarantine stays in force: release "
                "it with `wakeline release` once the plan is done"
            )
        time.sleep(poll_s)
