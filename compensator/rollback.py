"""Rollback to a workflow checkpoint: undo what a run did after a `WorkflowSnapshot`.

`rollback(...)` is every step, each an event on the workflow's partition:

1. the checkpoint is read from the PostgreSQL ledger (`producers/snapshots.py`: by event id,
   or the newest of that name) and its state checked against its ledgered digest; a workflow
   with a quarantine in force is refused (release it first: the compensator would take the
   rollback for a duplicate of it);
2. a `Quarantine` of the snapshot's run with `after_event_id` = the snapshot's event id: SDK
   gates refuse the workflow's calls, and the compensator plans only the calls after the
   checkpoint (`plan.after_checkpoint`), newest first, escalating what cannot be undone;
3. with `wait_s`, once the compensator's plan is finished (`compensator_plans.state` done),
   a `Release` naming that quarantine, and the snapshot's state handed back. Without it the
   run stays quarantined until `wakeline release WF`.

`checkpoints(...)` lists a workflow's snapshots: the ledgered ones with their ledger
position, then those the compensator took in that the ledger does not show yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from wakeline.compensator import operator
from wakeline.compensator.operator import OperatorError, _connect, _envelope, _produce, _text
from wakeline.errors import StackError, WakelineError
from wakeline.infra.settings import KafkaSettings
from wakeline.producers.snapshots import (
    Snapshot,
    checked_state,
    find_snapshot,
    ledgered_snapshots,
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
    """Quarantine the checkpoint's run after it; with `wait_s`, wait for the compensator's
    plan to finish, release the run and hand back the state (module docstring)."""
    workflow_id = _text("workflow id", workflow_id, limit=operator.MAX_ID_BYTES)
    snap = find_snapshot(ledgered_snapshots(store, workflow_id, decode), checkpoint, workflow_id)
    state = checked_state(snap.event)
    in_force = operator._open_plan(dsn, workflow_id.encode()) or {}  # the compensator's view
    if in_force.get("quarantine_id") is not None:
        raise OperatorError(
            f"workflow {workflow_id} has quarantine {in_force['quarantine_id']} in force: "
            "release it (`wakeline release`) before rolling back, or the compensator takes "
            "the rollback for a duplicate of it"
        )
    why = reason or f"rollback to checkpoint {snap.name} (event {snap.event_id})"
    q = operator.quarantine(
        kafka, workflow_id, reason=why, by=by, run_id=snap.run_id, after_event_id=snap.event_id
    )
    report: dict[str, Any] = {
        "workflow_id": workflow_id,
        "checkpoint": snap.to_json(),
        "state": state,
        "quarantine": {k: q[k] for k in ("event_id", "topic", "partition", "offset")},
        "plan": None,
        "release": None,
    }
    if wait_s is None:
        return report
    qid = q["event_id"]
    deadline = time.monotonic() + wait_s
    while True:
        plan = plan_state(dsn, qid)
        if plan is not None and plan["state"] == "done":
            break
        if time.monotonic() >= deadline:
            raise StackError(
                f"the compensator's plan of rollback quarantine {qid} is "
                f"{'not taken up' if plan is None else plan['state']} after {wait_s:g} s "
                "(is `wakeline compensator` running?); the run stays quarantined: release it "
                "with `wakeline release` once the plan is done"
            )
        time.sleep(poll_s)
    report["plan"] = plan
    release = _envelope("Release", workflow_id, snap.run_id, q["event"]["by"])
    release.update(
        reason=f"rollback to checkpoint {snap.name} finished",
        by=q["event"]["by"],
        quarantine_id=qid,
    )
    report["release"] = {"event": release, **_produce(kafka, release, 15.0)}
    return report
