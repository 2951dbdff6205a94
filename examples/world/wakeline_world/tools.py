"""The example world's operations declared as Wakeline tools.

    from wakeline.producers import Emitter
    from wakeline_world import World
    from wakeline_world.tools import registry

    world = World(dsn)
    emitter = Emitter.from_env(registry=registry())
    ctx = emitter.workflow("wf-42", agent_id="billing-bot", principal="alice@example.com")
    args = {"customer": "cus_1", "amount_cents": 1299, "currency": "EUR",
            "card_number": "4242 4242 4242 4242", "idempotency_key": "wf-42/charge"}
    ctx.call("payments.charge", world.tool("payments.charge"), args)

Each spec says how dangerous the tool is, which resources it reads and writes, which tool
undoes it (`compensation`), and what of its arguments never reaches the log: the card number
is redacted, e-mail bodies are kept only as a digest. A compensating action never sees a
redacted argument, so every result records in `external_ids` what its undo needs: the charge
id for `payments.refund`, the record id and the version before the call for `crm.restore`,
the message id for `email.recall`, the reservation id for `inventory.release`, the VM id for
`cloud.delete_vm`. (`external_ids` values are strings: versions are written in decimal.)

An e-mail can be recalled only while it is queued in the outbox; after delivery the undo is
a correction (`email.send_correction`), which a human decides on. `extra["undo_window"]`
says so for each tool whose undo has a window. That window is a state, not a time: when a
message leaves the outbox depends on the world's hold (`World(email_hold_s=...)`) and on who
delivers, so `email.send` declares no `undo_window_s` (any number would be a guess) and
`email.recall` (`wakeline_world.undo`) checks the outbox: once the message is delivered it
fails for good, saying to send a correction, and the compensator escalates it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from wakeline.producers import ToolRegistry, ToolSpec


def _ids(*names: str) -> Callable[[Any], Mapping[str, str]]:
    def external_ids(result: Any) -> Mapping[str, str]:
        return {n: str(result[n]) for n in names if result.get(n) is not None}

    return external_ids


SPECS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "payments.charge",
        reversibility="compensable",
        impact="high",
        writes=("payments:customer:{customer}",),
        compensation="payments.refund",
        redact=frozenset({"card_number"}),
        idempotent=True,
        summarise=lambda r: (
            f"charged {r['amount_cents']} {r['currency']} to {r['customer']} ({r['charge_id']})"
        ),
        external_ids=_ids("charge_id"),
        description="Charge a customer's card.",
        advice=(
            "refund the {amount_cents} {currency} charged to {customer} by hand "
            "(payments.refund), or tell the customer why the charge stands"
        ),
    ),
    ToolSpec(
        "payments.refund",
        reversibility="irreversible",
        impact="high",
        writes=("payments:charge:{charge_id}",),
        idempotent=True,
        summarise=lambda r: f"refunded {r['amount_cents']} of {r['charge_id']} ({r['refund_id']})",
        external_ids=_ids("refund_id", "charge_id"),
        description="Refund what is left of a charge (or part of it).",
        advice=(
            "tell finance that refund {refund_id} of charge {charge_id} went out: it cannot "
            "be taken back"
        ),
    ),
    ToolSpec(
        "crm.get",
        reversibility="read",
        impact="low",
        reads=("crm:{record_id}",),
        summarise=lambda r: "no such record" if r is None else f"version {r['version']}",
        description="Read a customer record.",
    ),
    ToolSpec(
        "crm.update",
        reversibility="reversible",
        impact="medium",
        writes=("crm:{record_id}",),
        compensation="crm.restore",
        idempotent=True,
        summarise=lambda r: (
            f"{r['record_id']} now at version {r['version']} (was {r['previous_version']})"
        ),
        external_ids=_ids("record_id", "version", "previous_version"),
        description="Merge fields into a customer record, as a new version.",
        advice="restore {record_id} to version {previous_version} by hand (crm.restore)",
    ),
    ToolSpec(
        "crm.restore",
        reversibility="reversible",
        impact="medium",
        writes=("crm:{record_id}",),
        idempotent=True,
        summarise=lambda r: (
            f"{r['record_id']} restored to version {r['restored_from']} as {r['version']}"
        ),
        external_ids=_ids("record_id", "version", "restored_from", "previous_version"),
        description="Make an earlier version of a record current again (0: delete it).",
        advice="check record {record_id}: it was restored to version {restored_from}",
    ),
    ToolSpec(
        "email.send",
        reversibility="compensable",
        impact="high",
        writes=("email:{to}",),
        compensation="email.recall",
        digest_only=frozenset({"body"}),
        idempotent=True,
        summarise=lambda r: f"queued {r['message_id']} to {r['to']}",
        external_ids=_ids("message_id", "to"),
        description="Queue an e-mail in the outbox.",
        advice="send a correction to {to} with email.send_correction (it cannot be recalled now)",
        extra={"undo_window": "while the message is queued in the outbox (status 'queued')"},
    ),
    ToolSpec(
        "email.recall",
        reversibility="irreversible",
        impact="medium",
        writes=("email:message:{message_id}",),
        idempotent=True,
        summarise=lambda r: f"recalled {r['message_id']}",
        external_ids=_ids("message_id"),
        description="Take a queued e-mail out of the outbox before it is delivered.",
        advice="check that message {message_id} was meant to be recalled; resend it if so",
    ),
    ToolSpec(
        "email.send_correction",
        reversibility="irreversible",
        impact="high",
        writes=("email:message:{message_id}",),
        digest_only=frozenset({"body"}),
        idempotent=True,
        summarise=lambda r: f"queued correction {r['message_id']} of {r['correction_of']}",
        external_ids=_ids("message_id", "correction_of", "to"),
        description="Send a correction of a delivered e-mail to its recipient.",
        advice="tell {to} which message stands: correction {message_id} of {correction_of}",
    ),
    ToolSpec(
        "inventory.stock",
        reversibility="read",
        impact="low",
        reads=("inventory:{sku}",),
        summarise=lambda r: "unknown SKU" if r is None else f"{r['available']} available",
        description="How much of a SKU is on hand, reserved and available.",
    ),
    ToolSpec(
        "inventory.reserve",
        reversibility="reversible",
        impact="low",
        writes=("inventory:{sku}",),
        compensation="inventory.release",
        idempotent=True,
        summarise=lambda r: f"reserved {r['quantity']} of {r['sku']} ({r['reservation_id']})",
        external_ids=_ids("reservation_id", "sku"),
        description="Hold stock of a SKU for an order.",
        advice="release reservation {reservation_id} of {sku} by hand (inventory.release)",
    ),
    ToolSpec(
        "inventory.release",
        reversibility="reversible",
        impact="low",
        writes=("inventory:reservation:{reservation_id}",),
        idempotent=True,
        summarise=lambda r: f"released {r['reservation_id']}",
        external_ids=_ids("reservation_id", "sku"),
        description="Give a reservation's stock back.",
        advice="reserve {sku} again if reservation {reservation_id} was still needed",
    ),
    ToolSpec(
        "cloud.create_vm",
        reversibility="compensable",
        impact="medium",
        writes=("cloud:vm:{name}",),
        compensation="cloud.delete_vm",
        idempotent=True,
        summarise=lambda r: f"created {r['vm_id']} ({r['name']}, {r['region']})",
        external_ids=_ids("vm_id"),
        description="Create a virtual machine (running).",
        advice="delete VM {name} by hand (cloud.delete_vm) once nothing depends on it",
    ),
    ToolSpec(
        "cloud.delete_vm",
        reversibility="irreversible",
        impact="high",
        writes=("cloud:vm-id:{vm_id}",),
        idempotent=True,
        summarise=lambda r: f"deleted {r['vm_id']}",
        external_ids=_ids("vm_id"),
        description="Delete a virtual machine and its disk.",
        advice="recreate VM {vm_id} from its last backup if it was still needed",
    ),
)


def register(target: ToolRegistry, specs: Iterable[ToolSpec] = SPECS) -> ToolRegistry:
    """Add the world's tools to an existing registry."""
    for spec in specs:
        target.register(spec)
    return target


def registry(*, strict: bool = True) -> ToolRegistry:
    """A registry of the world's tools (strict: an unknown tool name is refused)."""
    return ToolRegistry(SPECS, strict=strict)


#: tool -> the tool that undoes it
COMPENSATIONS: dict[str, str] = {s.name: s.compensation for s in SPECS if s.compensation}
