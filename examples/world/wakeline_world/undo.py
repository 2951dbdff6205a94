"""The compensating actions of the example world's tools, for the compensator.

    wakeline compensator --handlers wakeline_world.undo

One handler per compensation a tool of `wakeline_world.tools` names: `payments.refund`,
`crm.restore`, `email.recall`, `inventory.release`, `cloud.delete_vm`. Each reads the ids it
needs from the result's `external_ids` (never from the logged arguments: the card number is
redacted, the e-mail body a digest), passes `req.idempotency_key` to the world so a repeated
attempt is the first attempt's answer, and maps the world's errors:

| the world says                               | the handler returns                         |
| -------------------------------------------- | ------------------------------------------- |
| `TransientFailure` (unavailable for now)     | `Failed(transient=True)`: retried           |
| `Conflict`, and it is undone already (*)     | `NothingToUndo`                             |
| `TooLate` (the e-mail was delivered)         | `Failed`: "delivered: send a correction to <to>" |
| any other `Conflict`, `NotFound`, `PermanentFailure` | `Failed` (permanent): a human acts  |

(*) the charge is fully refunded, the record back at the version before the update, the
message recalled, the reservation released, the VM deleted: by someone else, with another
key (the same key is answered from the world's store, never a `Conflict`).

`NotFound` is never `NothingToUndo` here: the world deletes nothing for good (a refund, a
restore, a recall, a release and a deletion are all rows or states), so an id a result
recorded that the world does not know is an inconsistency for a human, not an undo.

No handler is `safe_if_unknown`: when no result was recorded there is no id to undo by, and
the world offers no lookup by the original call's idempotency key that would also stop a
call still running from acting afterwards. Such calls are escalated.

The world's database: `WAKELINE_WORLD_DSN`, else Wakeline's own (`WAKELINE_DSN` or the local
stack's; the world lives in its own schema `world`). It is opened lazily, once per process;
`set_world` replaces it (tests). `TOOLS` is the world's tool registry, so the compensator's
start-up check refuses to run while a tool names a compensation this module does not provide.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

import psycopg

from wakeline.compensator.registry import (
    CompensationRequest,
    Done,
    Failed,
    NothingToUndo,
    Outcome,
    compensation,
)
from wakeline.infra.settings import DSN, Variable, declare, text
from wakeline_world import World, tools
from wakeline_world.core import Conflict, TooLate, TransientFailure, WorldError

WORLD_DSN = Variable(
    "WAKELINE_WORLD_DSN",
    text,
    DSN.read,
    "PostgreSQL URI of the example world the compensating actions act on "
    "(default: Wakeline's own database; the world has its own schema)",
)
declare("world", "the example world (wakeline_world.undo)", WORLD_DSN)

#: the tools these handlers undo; `load_handlers` finds it and `check_tools` checks it
TOOLS = tools.registry()

_lock = threading.Lock()
_world: World | None = None


def world() -> World:
    """The process's `World`, made on first use from `WAKELINE_WORLD_DSN` / Wakeline's DSN.
    A `World` holds no connection (each thread opens its own), so one serves every thread."""
    global _world
    with _lock:
        if _world is None:
            _world = World(WORLD_DSN.read(os.environ))
        return _world


def set_world(value: World | None) -> None:
    """Use `value` from now on (None: read the environment again on next use)."""
    global _world
    with _lock:
        _world = value


# -- the handlers -----------------------------------------------------------------------


@compensation("payments.refund")
def refund(req: CompensationRequest) -> Outcome:
    """Refund what is left of the charge the result recorded."""
    charge_id = req.external_ids.get("charge_id")
    if not charge_id:
        return _no_id(req, "charge_id", "find the charge and refund it by hand")
    w = world()

    def undone_already() -> str | None:
        row = w.payments.get(charge_id)
        if row is not None and row["refunded_cents"] >= row["amount_cents"]:
            return f"charge {charge_id} was fully refunded already"
        return None

    return _call(
        lambda: w.payments.refund(charge_id, idempotency_key=req.idempotency_key),
        lambda r: Done(
            f"refunded {r['amount_cents']} cents of {charge_id} ({r['refund_id']})",
            {"refund_id": r["refund_id"], "charge_id": charge_id},
        ),
        undone_already,
    )


@compensation("crm.restore")
def restore(req: CompensationRequest) -> Outcome:
    """Make the version before the update current again, unless the record changed since."""
    record_id = req.external_ids.get("record_id")
    if not record_id:
        return _no_id(req, "record_id", "find the record and restore it by hand")
    try:
        written = int(req.external_ids["version"])
        previous = int(req.external_ids["previous_version"])
    except (KeyError, ValueError):
        return _no_id(req, "version and previous_version", f"restore {record_id} by hand")
    w = world()

    def undone_already() -> str | None:
        # restored by someone else: the current content is the content before the update
        current = w.crm.get(record_id)
        before = next((v for v in w.crm.versions(record_id) if v["version"] == previous), None)
        if previous == 0 or (before is not None and before["deleted"]):
            back = current is None
        else:
            back = before is not None and current is not None
            back = back and current["fields"] == before["fields"]
        return f"record {record_id} is back at version {previous} already" if back else None

    return _call(
        lambda: w.crm.restore(
            record_id, previous, idempotency_key=req.idempotency_key, if_version=written
        ),
        lambda r: Done(
            f"restored {record_id} to version {previous} (as version {r['version']})",
            {"record_id": record_id, "version": str(r["version"])},
        ),
        undone_already,
        conflict=f"restoring it would drop a later change of {record_id}: a human must merge",
    )


@compensation("email.recall")
def recall(req: CompensationRequest) -> Outcome:
    """Take the message out of the outbox while it is queued. Once delivered it cannot be
    recalled: the permanent failure says to send a correction, which a human decides on."""
    message_id = req.external_ids.get("message_id")
    if not message_id:
        return _no_id(req, "message_id", "find the message and recall or correct it by hand")
    to = req.external_ids.get("to") or "its recipient"
    w = world()

    def undone_already() -> str | None:
        row = w.email.message(message_id)
        if row is not None and row["status"] == "recalled":
            return f"message {message_id} was recalled already"
        return None

    return _call(
        lambda: w.email.recall(message_id, idempotency_key=req.idempotency_key),
        lambda r: Done(f"recalled {message_id} (to {to}) before delivery"),
        undone_already,
        too_late=f"delivered: send a correction to {to}",
    )


@compensation("inventory.release")
def release(req: CompensationRequest) -> Outcome:
    """Give the reservation's stock back."""
    reservation_id = req.external_ids.get("reservation_id")
    if not reservation_id:
        return _no_id(req, "reservation_id", "find the reservation and release it by hand")
    w = world()

    def undone_already() -> str | None:
        row = w.inventory.reservation(reservation_id)
        if row is not None and row["status"] == "released":
            return f"reservation {reservation_id} was released already"
        return None

    return _call(
        lambda: w.inventory.release(reservation_id, idempotency_key=req.idempotency_key),
        lambda r: Done(f"released {reservation_id} ({r['sku']})"),
        undone_already,
    )


@compensation("cloud.delete_vm")
def delete_vm(req: CompensationRequest) -> Outcome:
    """Delete the VM the call created (and its disk)."""
    vm_id = req.external_ids.get("vm_id")
    if not vm_id:
        return _no_id(req, "vm_id", "find the VM and delete it by hand")
    w = world()

    def undone_already() -> str | None:
        row = w.cloud.vm(vm_id)
        if row is not None and row["status"] == "deleted":
            return f"VM {vm_id} was deleted already"
        return None

    return _call(
        lambda: w.cloud.delete_vm(vm_id, idempotency_key=req.idempotency_key),
        lambda r: Done(f"deleted {vm_id}"),
        undone_already,
    )


# -- the error mapping ------------------------------------------------------------------


def _call(
    act: Callable[[], Mapping[str, Any]],
    done: Callable[[Mapping[str, Any]], Outcome],
    undone_already: Callable[[], str | None],
    *,
    conflict: str | None = None,
    too_late: str | None = None,
) -> Outcome:
    """Run the world's undo and map its answer (the table in the module docstring);
    `conflict` and `too_late` say what a human should do about those failures."""
    try:
        return done(act())
    except TransientFailure as e:
        return Failed(f"{type(e).__name__}: {e}", transient=True)
    except TooLate as e:
        return Failed(f"{too_late} ({e})" if too_late else f"{type(e).__name__}: {e}")
    except Conflict as e:
        already = _ask(undone_already)
        if isinstance(already, Failed):
            return already
        if already is not None:
            return NothingToUndo(f"{already} ({e})")
        return Failed(f"{type(e).__name__}: {e}" + (f"; {conflict}" if conflict else ""))
    except WorldError as e:  # NotFound, InvalidRequest, IdempotencyConflict, PermanentFailure
        return Failed(f"{type(e).__name__}: {e}", transient=e.retryable)


def _ask(undone_already: Callable[[], str | None]) -> str | Failed | None:
    try:
        return undone_already()
    except (WorldError, psycopg.OperationalError) as e:
        return Failed(f"could not check whether it is undone already: {e}", transient=True)


def _no_id(req: CompensationRequest, what: str, advice: str) -> Failed:
    return Failed(f"the result of {req.tool} (intent {req.intent_id}) recorded no {what}: {advice}")
