"""Each service of the example world and its undo, against the real PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest

from wakeline_world import (
    Conflict,
    InvalidRequest,
    NotFound,
    OutOfStock,
    TooLate,
    World,
    install,
    reset,
)

pytestmark = pytest.mark.integration


def test_charge_then_refund(world: World):
    charge = world.payments.charge(
        "cus_ada", 1299, "EUR", idempotency_key="k-charge", card_number="4242 4242 4242 4242"
    )
    assert charge["status"] == "succeeded"
    row = world.payments.get(charge["charge_id"])
    assert row is not None
    assert (row["amount_cents"], row["card_last4"], row["refunded_cents"]) == (1299, "4242", 0)

    refund = world.payments.refund(charge["charge_id"], idempotency_key="k-refund")
    assert (refund["charge_id"], refund["amount_cents"]) == (charge["charge_id"], 1299)
    assert world.payments.get(charge["charge_id"])["refunded_cents"] == 1299
    assert [r["refund_id"] for r in world.payments.refunds(charge["charge_id"])] == [
        refund["refund_id"]
    ]
    with pytest.raises(Conflict, match="already fully refunded"):
        world.payments.refund(charge["charge_id"], idempotency_key="another-key")
    with pytest.raises(NotFound):
        world.payments.refund("ch_nope", idempotency_key="k-nope")


def test_partial_refunds_never_exceed_the_charge(world: World):
    charge_id = world.payments.charge("cus_1", 1000, "USD", "c")["charge_id"]
    world.payments.refund(charge_id, "r1", amount_cents=400)
    with pytest.raises(Conflict, match="only 600"):
        world.payments.refund(charge_id, "r2", amount_cents=700)
    assert world.payments.refund(charge_id, "r3")["amount_cents"] == 600


def test_the_card_number_is_never_stored(world: World):
    world.payments.charge("cus_1", 500, "EUR", "k", card_number="4000-0566-5566-5556")
    with psycopg.connect(world.dsn) as conn:
        dump = str(conn.execute("SELECT * FROM world.charges").fetchall())
        dump += str(conn.execute("SELECT * FROM world.idempotency").fetchall())
    assert "5556" in dump and "4000056655665556" not in dump and "4000-0566" not in dump


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (("cus", 0, "EUR"), "positive"),
        (("cus", 10, "eur"), "currency"),
        (("", 10, "EUR"), "customer"),
    ],
)
def test_bad_charges_are_refused_and_counted(world: World, args, why):
    with pytest.raises(InvalidRequest, match=why):
        world.payments.charge(*args, idempotency_key="k")
    assert world.stats()["payments.charge"]["failed"] == 1
    with psycopg.connect(world.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM world.charges").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM world.idempotency").fetchone() == (0,)


def test_crm_keeps_versions_and_restores_the_previous_one(world: World):
    first = world.crm.update("cus_ada", {"email": "ada@example.com", "tier": "gold"}, "u1")
    assert (first["version"], first["previous_version"]) == (1, 0)
    second = world.crm.update("cus_ada", {"tier": "platinum"}, "u2")
    assert (second["version"], second["previous_version"]) == (2, 1)
    assert world.crm.get("cus_ada")["fields"] == {"email": "ada@example.com", "tier": "platinum"}

    back = world.crm.restore("cus_ada", second["previous_version"], "undo-u2")
    assert (back["version"], back["restored_from"]) == (3, 1)
    assert world.crm.get("cus_ada")["fields"] == {"email": "ada@example.com", "tier": "gold"}
    assert [v["version"] for v in world.crm.versions("cus_ada")] == [1, 2, 3]

    world.crm.restore("cus_ada", first["previous_version"], "undo-u1")  # 0: did not exist
    assert world.crm.get("cus_ada") is None
    again = world.crm.update("cus_ada", {"tier": "new"}, "u3")
    assert world.crm.get("cus_ada")["fields"] == {"tier": "new"}
    assert again["version"] == 5


def test_crm_restore_refuses_to_drop_a_later_change(world: World):
    world.crm.update("r", {"a": 1}, "u1")
    mine = world.crm.update("r", {"a": 2}, "u2")
    world.crm.update("r", {"a": 3}, "someone-else")
    with pytest.raises(Conflict, match="changed since"):
        world.crm.restore("r", mine["previous_version"], "undo", if_version=mine["version"])
    assert world.crm.get("r")["fields"] == {"a": 3}
    with pytest.raises(NotFound):
        world.crm.restore("r", 9, "undo-9")
    with pytest.raises(NotFound):
        world.crm.restore("nobody", 1, "undo-nobody")


def test_email_can_be_recalled_while_queued(world: World):
    sent = world.email.send("ada@example.com", "Your refund", "We refunded 12.99", "e1")
    assert sent["status"] == "queued"
    assert world.email.recall(sent["message_id"], "recall-e1")["status"] == "recalled"
    assert world.email.deliver_due() == []  # a recalled message is never delivered
    assert world.email.message(sent["message_id"])["status"] == "recalled"
    with pytest.raises(Conflict, match="already recalled"):
        world.email.recall(sent["message_id"], "recall-again")
    with pytest.raises(Conflict, match="never delivered"):
        world.email.send_correction(sent["message_id"], "ignore it", "fix")


def test_after_delivery_only_a_correction_is_left(world: World):
    sent = world.email.send("ada@example.com", "Your refund", "We refunded 12.99", "e1")
    with pytest.raises(Conflict, match="recall it instead"):
        world.email.send_correction(sent["message_id"], "wrong amount", "too-early")
    assert world.email.deliver_due() == [sent["message_id"]]
    with pytest.raises(TooLate, match="only corrected"):
        world.email.recall(sent["message_id"], "recall-e1")
    fix = world.email.send_correction(sent["message_id"], "Sorry: no refund yet.", "fix-e1")
    assert (fix["correction_of"], fix["to"], fix["status"]) == (
        sent["message_id"],
        "ada@example.com",
        "queued",
    )
    assert world.email.message(fix["message_id"])["subject"] == "Correction: Your refund"
    assert world.email.deliver_due() == [fix["message_id"]]
    assert world.performed("email.deliver") == {sent["message_id"]: 1, fix["message_id"]: 1}


def test_the_outbox_holds_messages_until_their_time(fresh_dsn: str):
    world = World(fresh_dsn, email_hold_s=3600).install()
    a = world.email.send("a@example.com", "s", "b", "a")["message_id"]
    b = world.email.send("b@example.com", "s", "b", "b")["message_id"]
    assert world.email.deliver_due() == []
    assert world.email.deliver(a) is True
    assert world.email.deliver(a) is False  # delivered once
    assert {m["message_id"]: m["status"] for m in world.email.outbox()} == {
        a: "delivered",
        b: "queued",
    }
    with pytest.raises(InvalidRequest):
        world.email.send("not an address", "s", "b", "c")


def test_inventory_reserve_and_release(world: World):
    world.inventory.restock("sku-1", 10)
    held = world.inventory.reserve("sku-1", 3, "r1", order_ref="order-7")
    assert world.inventory.stock("sku-1")["available"] == 7
    with pytest.raises(OutOfStock, match="7 available"):
        world.inventory.reserve("sku-1", 8, "r2")
    assert world.inventory.release(held["reservation_id"], "undo-r1")["status"] == "released"
    assert world.inventory.stock("sku-1") == {
        "sku": "sku-1",
        "on_hand": 10,
        "reserved": 0,
        "available": 10,
    }
    with pytest.raises(Conflict, match="already released"):
        world.inventory.release(held["reservation_id"], "undo-again")
    with pytest.raises(NotFound):
        world.inventory.reserve("sku-unknown", 1, "r3")
    assert world.inventory.reservation(held["reservation_id"])["order_ref"] == "order-7"


def test_cloud_create_and_delete_vm(world: World):
    vm = world.cloud.create_vm("build-1", "small", "eu-west", "v1")
    assert world.cloud.vm(vm["vm_id"])["status"] == "running"
    assert world.cloud.delete_vm(vm["vm_id"], "undo-v1")["status"] == "deleted"
    assert world.cloud.vm(vm["vm_id"])["status"] == "deleted"
    with pytest.raises(Conflict, match="already deleted"):
        world.cloud.delete_vm(vm["vm_id"], "undo-again")
    with pytest.raises(NotFound):
        world.cloud.delete_vm("vm_nope", "undo-nope")
    with pytest.raises(InvalidRequest, match="size"):
        world.cloud.create_vm("x", "huge", "eu-west", "v2")


def test_install_is_idempotent_and_reset_empties_only_the_world(fresh_dsn: str):
    def public_tables() -> list[str]:
        with psycopg.connect(fresh_dsn) as conn:
            rows = conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema <> 'world' AND table_schema NOT IN "
                "('pg_catalog', 'information_schema') ORDER BY 1"
            ).fetchall()
        return [r[0] for r in rows]

    before = public_tables()
    install(fresh_dsn)
    install(fresh_dsn)
    world = World(fresh_dsn)
    world.payments.charge("c", 1, "EUR", "k")
    reset(fresh_dsn)
    assert world.stats() == {}
    assert world.payments.charge("c", 1, "EUR", "k")["charge_id"]  # the key is free again
    assert public_tables() == before  # Wakeline's tables are untouched
