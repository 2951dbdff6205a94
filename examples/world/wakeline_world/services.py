"""The five services of the example world, each on its own tables in the `world` schema.

Every operation that changes something takes an `idempotency_key` and runs through
`core.run` (claimed key, counted, faults on demand). Each undo is an operation of its own, a
forward action that reverses an earlier one: `refund` a charge, `restore` a CRM version,
`recall` a queued e-mail (after delivery only `send_correction` is left), `release` a
reservation, `delete_vm`. Undoing twice is a `Conflict` (already refunded, already released),
never a second effect; the same key twice is the same answer.

Reads (`get`, `message`, `stock`, `vm` ...) are plain queries, not counted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from wakeline_world.core import (
    Conflict,
    InvalidRequest,
    NotFound,
    OutOfStock,
    TooLate,
    connections,
    new_id,
    run,
)

_CURRENCY = re.compile(r"^[A-Z]{3}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
VM_SIZES = ("small", "medium", "large", "xlarge")


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{name} must be a non-empty string, got {type(value).__name__}")
    return value


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidRequest(f"{name} must be a positive integer, got {value!r}")
    return value


def _one(dsn: str, query: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
    with connections(dsn)[0].cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchone()


def _all(dsn: str, query: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with connections(dsn)[0].cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


class Payments:
    """Charges and refunds. A card number, if given, is kept only as its last four digits."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def charge(
        self,
        customer: str,
        amount_cents: int,
        currency: str,
        idempotency_key: str,
        card_number: str | None = None,
    ) -> dict[str, Any]:
        request = {
            "customer": customer,
            "amount_cents": amount_cents,
            "currency": currency,
            "card_number": card_number,
        }

        def act(tx: psycopg.Connection) -> dict[str, Any]:
            _text("customer", customer)
            _count("amount_cents", amount_cents)
            if not isinstance(currency, str) or not _CURRENCY.match(currency):
                raise InvalidRequest(f"currency must be three capital letters, got {currency!r}")
            last4 = None
            if card_number is not None:
                digits = re.sub(r"[\s-]", "", str(card_number))
                if not digits.isdigit() or not 12 <= len(digits) <= 19:
                    raise InvalidRequest("card_number must be 12 to 19 digits")
                last4 = digits[-4:]
            charge_id = new_id("ch")
            tx.execute(
                "INSERT INTO world.charges (charge_id, customer, amount_cents, currency, "
                "card_last4) VALUES (%s, %s, %s, %s, %s)",
                (charge_id, customer, amount_cents, currency, last4),
            )
            return {
                "charge_id": charge_id,
                "customer": customer,
                "amount_cents": amount_cents,
                "currency": currency,
                "status": "succeeded",
            }

        return run(self.dsn, "payments.charge", idempotency_key, str(customer), request, act)

    def refund(
        self, charge_id: str, idempotency_key: str, amount_cents: int | None = None
    ) -> dict[str, Any]:
        """Refund what is left of the charge (or `amount_cents` of it)."""
        request = {"charge_id": charge_id, "amount_cents": amount_cents}

        def act(tx: psycopg.Connection) -> dict[str, Any]:
            row = tx.execute(
                "SELECT amount_cents, refunded_cents FROM world.charges WHERE charge_id = %s "
                "FOR UPDATE",
                (charge_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"no charge {charge_id}")
            left = row[0] - row[1]
            if left == 0:
                raise Conflict(f"charge {charge_id} is already fully refunded")
            amount = left if amount_cents is None else _count("amount_cents", amount_cents)
            if amount > left:
                raise Conflict(f"charge {charge_id} has only {left} cents left to refund")
            refund_id = new_id("re")
            tx.execute(
                "INSERT INTO world.refunds (refund_id, charge_id, amount_cents) "
                "VALUES (%s, %s, %s)",
                (refund_id, charge_id, amount),
            )
            tx.execute(
                "UPDATE world.charges SET refunded_cents = refunded_cents + %s "
                "WHERE charge_id = %s",
                (amount, charge_id),
            )
            return {
                "refund_id": refund_id,
                "charge_id": charge_id,
                "amount_cents": amount,
                "status": "succeeded",
            }

        return run(self.dsn, "payments.refund", idempotency_key, str(charge_id), request, act)

    def get(self, charge_id: str) -> dict[str, Any] | None:
        return _one(self.dsn, "SELECT * FROM world.charges WHERE charge_id = %s", (charge_id,))

    def refunds(self, charge_id: str) -> list[dict[str, Any]]:
        return _all(
            self.dsn,
            "SELECT * FROM world.refunds WHERE charge_id = %s ORDER BY created_at",
            (charge_id,),
        )


class Crm:
    """Customer records with every version kept. Version 0 is "did not exist"."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def update(
        self, record_id: str, fields: Mapping[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        """Merge `fields` into the record (creating it), as a new version."""
        request = {"record_id": record_id, "fields": fields}

        def act(tx: psycopg.Connection) -> dict[str, Any]:
            _text("record_id", record_id)
            if not isinstance(fields, Mapping) or not fields:
                raise InvalidRequest("fields must be a non-empty mapping")
            current = _lock_record(tx, record_id, create=True)
            base: dict[str, Any] = {}
            if current > 0:
                row = tx.execute(
                    "SELECT fields, deleted FROM world.crm_versions "
                    "WHERE record_id = %s AND version = %s",
                    (record_id, current),
                ).fetchone()
                assert row is not None
                base = {} if row[1] else dict(row[0])
            version = _write_version(tx, record_id, current, {**base, **fields}, False, None)
            return {"record_id": record_id, "version": version, "previous_version": current}

        return run(self.dsn, "crm.update", idempotency_key, str(record_id), request, act)

    def restore(
        self,
        record_id: str,
        version: int,
        idempotency_key: str,
        if_version: int | None = None,
    ) -> dict[str, Any]:
        """Make `version` current again, as a new version (0: the record did not exist, so
        it is deleted). `if_version`: refuse (`Conflict`) unless the record is still at that
        version, so a restore never silently drops a later change."""
        request = {"record_id": record_id, "version": version, "if_version": if_version}

        def act(tx: psycopg.Connection) -> dict[str, Any]:
            if isinstance(version, bool) or not isinstance(version, int) or version < 0:
                raise InvalidRequest(f"version must be an integer >= 0, got {version!r}")
            current = _lock_record(tx, record_id, create=False)
            if if_version is not None and current != if_version:
                raise Conflict(
                    f"record {record_id} is at version {current}, not {if_version}: "
                    "it changed since"
                )
            fields: dict[str, Any] = {}
            deleted = True
            if version > 0:
                row = tx.execute(
                    "SELECT fields, deleted FROM world.crm_versions "
                    "WHERE record_id = %s AND version = %s",
                    (record_id, version),
                ).fetchone()
                if row is None:
                    raise NotFound(f"record {record_id} has no version {version}")
                fields, deleted = dict(row[0]), row[1]
            new = _write_version(tx, record_id, current, fields, deleted, version)
            return {
                "record_id": record_id,
                "version": new,
                "restored_from": version,
                "previous_version": current,
            }

        return run(self.dsn, "crm.restore", idempotency_key, str(record_id), request, act)

    def get(self, record_id: str) -> dict[str, Any] | None:
        """The current version: `{"record_id", "version", "fields"}`; None if absent/deleted."""
        row = _one(
            self.dsn,
            "SELECT v.record_id, v.version, v.fields, v.deleted FROM world.crm_records r "
            "JOIN world.crm_versions v ON v.record_id = r.record_id "
            "AND v.version = r.current_version WHERE r.record_id = %s",
            (record_id,),
        )
        if row is None or row.pop("deleted"):
            return None
        return row

    def versions(self, record_id: str) -> list[dict[str, Any]]:
        return _all(
            self.dsn,
            "SELECT * FROM world.crm_versions WHERE record_id = %s ORDER BY version",
            (record_id,),
        )


def _lock_record(tx: psycopg.Connection, record_id: str, *, create: bool) -> int:
    if create:
        tx.execute(
            "INSERT INTO world.crm_records (record_id, current_version) VALUES (%s, 0) "
            "ON CONFLICT DO NOTHING",
            (record_id,),
        )
    row = tx.execute(
        "SELECT current_version FROM world.crm_records WHERE record_id = %s FOR UPDATE",
        (record_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"no CRM record {record_id}")
    return int(row[0])


def _write_version(
    tx: psycopg.Connection,
    record_id: str,
    current: int,
    fields: dict[str, Any],
    deleted: bool,
    restored_from: int | None,
) -> int:
    version = current + 1
    tx.execute(
        "INSERT INTO world.crm_versions (record_id, version, fields, deleted, restored_from) "
        "VALUES (%s, %s, %s, %s, %s)",
        (record_id, version, Jsonb(fields), deleted, restored_from),
    )
    tx.execute(
        "UPDATE world.crm_records SET current_version = %s WHERE record_id = %s",
        (version, record_id),
    )
    return version


class Email:
    """An outbox: `send` queues, delivery (`deliver_due`, `deliver_queued`, `deliver`) sends.
    A queued message can be recalled; a delivered one cannot, only corrected by another one.

    `hold_s`: how long a message waits in the outbox before `deliver_due` takes it."""

    def __init__(self, dsn: str, hold_s: float = 0.0) -> None:
        self.dsn = dsn
        self.hold_s = hold_s

    def send(self, to: str, subject: str, body: str, idempotency_key: str) -> dict[str, Any]:
        request = {"to": to, "subject": subject, "body": body}

        def act(tx: psycopg.Connection) -> dict[str, Any]:
            if not isinstance(to, str) or not _EMAIL.match(to):
                raise InvalidRequest(f"to must be an e-mail address, got {to!r}")
            _text("subject", subject)
            if not isinstance(body, str):
                raise InvalidRequest("body must be a string")
            return self._queue(tx, to, subject, body, None)

        return run(self.dsn, "email.send", idempotency_key, to, request, act)

    def recall(self, message_id: str, idempotency_key: str) -> dict[str, Any]:
        def act(tx: psycopg.Connection) -> dict[str, Any]:
            row = self._lock(tx, message_id)
            if row[0] == "delivered":
                raise TooLate(
                    f"message {message_id} was delivered at {row[1].isoformat()}; it cannot be "
                    "recalled, only corrected (send_correction)"
                )
            if row[0] == "recalled":
                raise Conflict(f"message {message_id} is already recalled")
            tx.execute(
                "UPDATE world.email_outbox SET status = 'recalled', "
                "recalled_at = clock_timestamp() WHERE message_id = %s",
                (message_id,),
            )
            return {"message_id": message_id, "status": "recalled"}

        return run(
            self.dsn, "email.recall", idempotency_key, message_id, {"message_id": message_id}, act
        )

    def send_correction(
        self, message_id: str, body: str, idempotency_key: str, subject: str | None = None
    ) -> dict[str, Any]:
        """A new message to the same recipient correcting a delivered one."""
        request = {"message_id": message_id, "body": body, "subject": subject}

        def act(tx: psycopg.Connection) -> dict[str, Any]:
            status = self._lock(tx, message_id)[0]
            if status != "delivered":
                what = "recall it instead" if status == "queued" else "it was never delivered"
                raise Conflict(f"message {message_id} is {status}: {what}")
            if not isinstance(body, str) or not body:
                raise InvalidRequest("body must be a non-empty string")
            row = tx.execute(
                "SELECT recipient, subject FROM world.email_outbox WHERE message_id = %s",
                (message_id,),
            ).fetchone()
            assert row is not None
            title = subject if subject else f"Correction: {row[1]}"
            return self._queue(tx, row[0], title, body, message_id)

        return run(self.dsn, "email.send_correction", idempotency_key, message_id, request, act)

    def deliver_due(self) -> list[str]:
        """Deliver every queued message whose hold is over; returns their ids (each
        delivery is counted as a performed `email.deliver`)."""
        return self._deliver("deliver_at <= clock_timestamp()", ())

    def deliver_queued(self) -> list[str]:
        """Deliver every queued message now, hold or not (the mail server ran): from then
        on none of them can be recalled. Returns their ids, counted like `deliver_due`."""
        return self._deliver("true", ())

    def deliver(self, message_id: str) -> bool:
        """Deliver one queued message now, hold or not; False if it is not queued."""
        return bool(self._deliver("message_id = %s", (message_id,)))

    def message(self, message_id: str) -> dict[str, Any] | None:
        return _one(
            self.dsn, "SELECT * FROM world.email_outbox WHERE message_id = %s", (message_id,)
        )

    def outbox(self) -> list[dict[str, Any]]:
        return _all(self.dsn, "SELECT * FROM world.email_outbox ORDER BY queued_at, message_id")

    def _queue(
        self, tx: psycopg.Connection, to: str, subject: str, body: str, correction_of: str | None
    ) -> dict[str, Any]:
        message_id = new_id("msg")
        tx.execute(
            "INSERT INTO world.email_outbox (message_id, recipient, subject, body, status, "
            "correction_of, deliver_at) VALUES (%s, %s, %s, %s, 'queued', %s, "
            "clock_timestamp() + make_interval(secs => %s))",
            (message_id, to, subject, body, correction_of, self.hold_s),
        )
        out = {"message_id": message_id, "status": "queued", "to": to}
        if correction_of is not None:
            out["correction_of"] = correction_of
        return out

    @staticmethod
    def _lock(tx: psycopg.Connection, message_id: str) -> tuple[Any, ...]:
        row = tx.execute(
            "SELECT status, delivered_at FROM world.email_outbox WHERE message_id = %s FOR UPDATE",
            (message_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no message {message_id}")
        return row

    def _deliver(self, where: str, params: tuple[Any, ...]) -> list[str]:
        conn = connections(self.dsn)[1]
        with conn.transaction():
            rows = conn.execute(
                "UPDATE world.email_outbox SET status = 'delivered', "
                f"delivered_at = clock_timestamp() WHERE status = 'queued' AND {where} "
                "RETURNING message_id",
                params,
            ).fetchall()
            ids = sorted(r[0] for r in rows)
            if ids:
                conn.cursor().executemany(
                    "INSERT INTO world.calls (operation, subject, outcome) "
                    "VALUES ('email.deliver', %s, 'performed')",
                    [(i,) for i in ids],
                )
        return ids


class Inventory:
    """Stock per SKU and reservations against it."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def restock(self, sku: str, quantity: int) -> None:
        """Set-up, not an agent's operation: add `quantity` on hand (creating the SKU)."""
        _text("sku", sku)
        _count("quantity", quantity)
        with psycopg.connect(self.dsn) as conn:
            conn.execute(
                "INSERT INTO world.inventory_stock (sku, on_hand) VALUES (%s, %s) "
                "ON CONFLICT (sku) DO UPDATE SET on_hand = inventory_stock.on_hand + %s",
                (sku, quantity, quantity),
            )

    def reserve(
        self, sku: str, quantity: int, idempotency_key: str, order_ref: str | None = None
    ) -> dict[str, Any]:
        request = {"sku": sku, "quantity": quantity, "order_ref": order_ref}

        def act(tx: psycopg.Connection) -> dict[str, Any]:
            _count("quantity", quantity)
            row = tx.execute(
                "SELECT on_hand - reserved FROM world.inventory_stock WHERE sku = %s FOR UPDATE",
                (sku,),
            ).fetchone()
            if row is None:
                raise NotFound(f"no SKU {sku}")
            if row[0] < quantity:
                raise OutOfStock(f"SKU {sku}: {row[0]} available, {quantity} asked")
            reservation_id = new_id("rsv")
            tx.execute(
                "INSERT INTO world.inventory_reservations (reservation_id, sku, quantity, "
                "order_ref, status) VALUES (%s, %s, %s, %s, 'held')",
                (reservation_id, sku, quantity, order_ref),
            )
            tx.execute(
                "UPDATE world.inventory_stock SET reserved = reserved + %s WHERE sku = %s",
                (quantity, sku),
            )
            return {
                "reservation_id": reservation_id,
                "sku": sku,
                "quantity": quantity,
                "status": "held",
            }

        return run(self.dsn, "inventory.reserve", idempotency_key, str(sku), request, act)

    def release(self, reservation_id: str, idempotency_key: str) -> dict[str, Any]:
        def act(tx: psycopg.Connection) -> dict[str, Any]:
            row = tx.execute(
                "SELECT sku, quantity, status FROM world.inventory_reservations "
                "WHERE reservation_id = %s FOR UPDATE",
                (reservation_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"no reservation {reservation_id}")
            sku, quantity, status = row
            if status == "released":
                raise Conflict(f"reservation {reservation_id} is already released")
            tx.execute(
                "UPDATE world.inventory_reservations SET status = 'released', "
                "released_at = clock_timestamp() WHERE reservation_id = %s",
                (reservation_id,),
            )
            tx.execute(
                "UPDATE world.inventory_stock SET reserved = reserved - %s WHERE sku = %s",
                (quantity, sku),
            )
            return {"reservation_id": reservation_id, "sku": sku, "status": "released"}

        request = {"reservation_id": reservation_id}
        return run(self.dsn, "inventory.release", idempotency_key, reservation_id, request, act)

    def stock(self, sku: str) -> dict[str, Any] | None:
        """`{"sku", "on_hand", "reserved", "available"}`, None for an unknown SKU."""
        return _one(
            self.dsn,
            "SELECT sku, on_hand, reserved, on_hand - reserved AS available "
            "FROM world.inventory_stock WHERE sku = %s",
            (sku,),
        )

    def reservation(self, reservation_id: str) -> dict[str, Any] | None:
        return _one(
            self.dsn,
            "SELECT * FROM world.inventory_reservations WHERE reservation_id = %s",
            (reservation_id,),
        )


class Cloud:
    """Virtual machines: created running, deleted for good."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def create_vm(self, name: str, size: str, region: str, idempotency_key: str) -> dict[str, Any]:
        request = {"name": name, "size": size, "region": region}

        def act(tx: psycopg.Connection) -> dict[str, Any]:
            _text("name", name)
            _text("region", region)
            if size not in VM_SIZES:
                raise InvalidRequest(f"size must be one of {', '.join(VM_SIZES)}, got {size!r}")
            vm_id = new_id("vm")
            tx.execute(
                "INSERT INTO world.vms (vm_id, name, size, region, status) "
                "VALUES (%s, %s, %s, %s, 'running')",
                (vm_id, name, size, region),
            )
            return {"vm_id": vm_id, "name": name, "region": region, "status": "running"}

        return run(self.dsn, "cloud.create_vm", idempotency_key, str(name), request, act)

    def delete_vm(self, vm_id: str, idempotency_key: str) -> dict[str, Any]:
        def act(tx: psycopg.Connection) -> dict[str, Any]:
            row = tx.execute(
                "SELECT status FROM world.vms WHERE vm_id = %s FOR UPDATE", (vm_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no VM {vm_id}")
            if row[0] == "deleted":
                raise Conflict(f"VM {vm_id} is already deleted")
            tx.execute(
                "UPDATE world.vms SET status = 'deleted', deleted_at = clock_timestamp() "
                "WHERE vm_id = %s",
                (vm_id,),
            )
            return {"vm_id": vm_id, "status": "deleted"}

        return run(self.dsn, "cloud.delete_vm", idempotency_key, vm_id, {"vm_id": vm_id}, act)

    def vm(self, vm_id: str) -> dict[str, Any] | None:
        return _one(self.dsn, "SELECT * FROM world.vms WHERE vm_id = %s", (vm_id,))

    def vms(self) -> list[dict[str, Any]]:
        return _all(self.dsn, "SELECT * FROM world.vms ORDER BY created_at, vm_id")
