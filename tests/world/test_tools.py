"""The world's operations as Wakeline tools: the specs, and a workflow through the SDK
against the real broker whose intents and results carry what an undo needs."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from wakeline.infra.settings import KafkaSettings
from wakeline.producers import Emitter, ToolRegistry
from wakeline.schemas import decode_event
from wakeline.testkit.harness import read_topic
from wakeline_world import OPERATIONS, World
from wakeline_world.tools import COMPENSATIONS, SPECS, register, registry

CARD = "4242 4242 4242 4242"


def test_every_operation_is_declared_and_every_undo_is_a_declared_tool():
    names = [s.name for s in SPECS]
    assert sorted(names) == sorted(OPERATIONS)
    assert COMPENSATIONS == {
        "payments.charge": "payments.refund",
        "crm.update": "crm.restore",
        "email.send": "email.recall",
        "inventory.reserve": "inventory.release",
        "cloud.create_vm": "cloud.delete_vm",
    }
    reg = registry()
    for spec in SPECS:
        assert spec.compensation is None or spec.compensation in reg
        assert spec.mutates == (spec.reversibility != "read")
        if spec.mutates:
            assert spec.idempotent and spec.external_ids is not None and spec.writes
    assert reg.get("payments.charge").redacted_fields == ["card_number"]
    assert register(ToolRegistry()).get("email.send").digest_only == {"body"}


def _events(kafka: KafkaSettings, workflow_id: str) -> list[dict]:
    msgs = [m for m in read_topic(kafka, kafka.topics.events) if m.key() == workflow_id.encode()]
    msgs.sort(key=lambda m: m.offset())
    return [decode_event(m.value()) for m in msgs]


@pytest.mark.integration
def test_a_workflow_through_the_sdk_records_what_each_undo_needs(
    kafka: KafkaSettings, fresh_dsn: str, tmp_path: Path
):
    world = World(fresh_dsn).install()
    world.inventory.restock("sku-mug", 5)
    wf = f"wf-world-{uuid.uuid4()}"
    calls = [
        (
            "payments.charge",
            {"customer": "cus_ada", "amount_cents": 1299, "currency": "EUR", "card_number": CARD},
        ),
        ("crm.get", {"record_id": "cus_ada"}),
        ("crm.update", {"record_id": "cus_ada", "fields": {"tier": "gold"}}),
        ("email.send", {"to": "ada@example.com", "subject": "Receipt", "body": "Paid 12.99"}),
        ("inventory.reserve", {"sku": "sku-mug", "quantity": 2}),
        ("cloud.create_vm", {"name": "render-1", "size": "large", "region": "eu-west"}),
    ]
    with Emitter(kafka, spool_dir=tmp_path / "spool", registry=registry()) as emitter:
        ctx = emitter.workflow(wf, agent_id="billing-bot", principal="alice@example.com")
        for n, (tool, args) in enumerate(calls):
            if tool != "crm.get":
                args = {**args, "idempotency_key": f"{wf}/{n}"}
            ctx.call(tool, world.tool(tool), args)
        ctx.complete_workflow("succeeded")
        assert emitter.flush(20) == 0

    events = _events(kafka, wf)
    assert [e["type"] for e in events] == ["ToolIntent", "ToolResult"] * len(calls) + [
        "WorkflowCompleted"
    ]
    intents, results = events[0:-1:2], events[1:-1:2]
    text = str(events)  # the card number never reaches the log, in any rendering
    for form in (CARD, CARD.replace(" ", ""), CARD.replace(" ", "-"), "4242 4242"):
        assert form not in text, form
    assert "Paid 12.99" not in str(events)  # the body is only a digest
    by_tool = {}
    for intent, result in zip(intents, results, strict=True):
        assert result["intent_id"] == intent["event_id"] and result["status"] == "ok"
        assert intent["compensation"] == COMPENSATIONS.get(intent["tool"])
        by_tool[intent["tool"]] = (intent, result)
    assert by_tool["payments.charge"][0]["redacted_fields"] == ["card_number"]
    assert by_tool["payments.charge"][0]["resources_written"] == ["payments:customer:cus_ada"]
    assert by_tool["crm.get"][0]["reversibility"] == "read"
    assert by_tool["crm.get"][1]["external_ids"] == {}

    ids = {tool: result["external_ids"] for tool, (_, result) in by_tool.items()}
    assert world.payments.get(ids["payments.charge"]["charge_id"])["customer"] == "cus_ada"
    assert ids["crm.update"] == {"record_id": "cus_ada", "version": "1", "previous_version": "0"}
    assert world.email.message(ids["email.send"]["message_id"])["status"] == "queued"
    held = world.inventory.reservation(ids["inventory.reserve"]["reservation_id"])
    assert held["status"] == "held"
    assert world.cloud.vm(ids["cloud.create_vm"]["vm_id"])["name"] == "render-1"

    # every undo, newest first, from the recorded ids alone (the arguments may be redacted)
    world.cloud.delete_vm(ids["cloud.create_vm"]["vm_id"], "undo-4")
    world.inventory.release(ids["inventory.reserve"]["reservation_id"], "undo-3")
    world.email.recall(ids["email.send"]["message_id"], "undo-2")
    world.crm.restore(
        ids["crm.update"]["record_id"], int(ids["crm.update"]["previous_version"]), "undo-1"
    )
    world.payments.refund(ids["payments.charge"]["charge_id"], "undo-0")
    assert world.crm.get("cus_ada") is None
    assert world.inventory.stock("sku-mug")["available"] == 5
    assert world.payments.get(ids["payments.charge"]["charge_id"])["refunded_cents"] == 1299
    assert world.email.deliver_due() == []
    stats = world.stats()
    for undo in COMPENSATIONS.values():
        assert stats[undo]["performed"] == 1
