"""The world's compensating actions (`wakeline_world.undo`) against the real PostgreSQL:
each undoes its tool's effect exactly once however often it is called with one request, and
maps the world's failures to the outcomes the compensator acts on."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from wakeline.compensator.registry import (
    CompensationRegistry,
    CompensationRequest,
    Done,
    Failed,
    NothingToUndo,
    Outcome,
    check_tools,
    load_handlers,
)
from wakeline.infra.settings import DatabaseSettings
from wakeline_world import World, undo
from wakeline_world.tools import COMPENSATIONS, registry

pytestmark = pytest.mark.integration

TOOLS = registry()


@pytest.fixture(scope="module")
def handlers() -> CompensationRegistry:
    return load_handlers(["wakeline_world.undo"]).handlers


@pytest.fixture
def w(world: World) -> Iterator[World]:
    undo.set_world(world)
    yield world
    undo.set_world(None)


def request(tool: str, response: Mapping[str, Any], *, attempt: int = 1) -> CompensationRequest:
    """The request the compensator builds for a call of `tool` that answered `response`:
    the result's `external_ids` are what the tool's spec records, as the SDK does."""
    spec = TOOLS.get(tool)
    assert spec.compensation is not None and spec.external_ids is not None
    intent = {
        "event_id": str(uuid.uuid4()),
        "tool": tool,
        "args": "{}",
        "time": 1_700_000_000_000_000,
        "workflow_id": "wf-undo",
        "run_id": "run-1",
        "reversibility": spec.reversibility,
    }
    result = {
        "event_id": str(uuid.uuid4()),
        "status": "ok",
        "external_ids": dict(spec.external_ids(response)),
    }
    return CompensationRequest.of(spec.compensation, intent, result, attempt=attempt)


@dataclass(frozen=True)
class Case:
    """A tool: how to call it, which subject its undo is counted under, whether it is undone,
    and how someone else undoes it (another key)."""

    tool: str
    call: Callable[[World], dict[str, Any]]
    subject: Callable[[dict[str, Any]], str]
    undone: Callable[[World, dict[str, Any]], bool]
    undo_by_hand: Callable[[World, dict[str, Any]], Any]


def _crm_update(w: World) -> dict[str, Any]:
    w.crm.update("cus_ada", {"tier": "silver"}, idempotency_key="setup")
    return w.crm.update("cus_ada", {"tier": "gold"}, idempotency_key="agent")


def _reserve(w: World) -> dict[str, Any]:
    w.inventory.restock("sku-1", 10)
    return w.inventory.reserve("sku-1", 3, idempotency_key="agent")


CASES = [
    Case(
        "payments.charge",
        lambda w: w.payments.charge("cus_ada", 1299, "EUR", idempotency_key="agent"),
        lambda r: r["charge_id"],
        lambda w, r: w.payments.get(r["charge_id"])["refunded_cents"] == 1299,
        lambda w, r: w.payments.refund(r["charge_id"], idempotency_key="by-hand"),
    ),
    Case(
        "crm.update",
        _crm_update,
        lambda r: r["record_id"],
        lambda w, r: w.crm.get(r["record_id"])["fields"] == {"tier": "silver"},
        lambda w, r: w.crm.restore(r["record_id"], 1, idempotency_key="by-hand"),
    ),
    Case(
        "email.send",
        lambda w: w.email.send("ada@example.com", "Your refund", "...", idempotency_key="agent"),
        lambda r: r["message_id"],
        lambda w, r: w.email.message(r["message_id"])["status"] == "recalled",
        lambda w, r: w.email.recall(r["message_id"], idempotency_key="by-hand"),
    ),
    Case(
        "inventory.reserve",
        _reserve,
        lambda r: r["reservation_id"],
        lambda w, r: w.inventory.stock("sku-1")["reserved"] == 0,
        lambda w, r: w.inventory.release(r["reservation_id"], idempotency_key="by-hand"),
    ),
    Case(
        "cloud.create_vm",
        lambda w: w.cloud.create_vm("build-1", "small", "eu-west", idempotency_key="agent"),
        lambda r: r["vm_id"],
        lambda w, r: w.cloud.vm(r["vm_id"])["status"] == "deleted",
        lambda w, r: w.cloud.delete_vm(r["vm_id"], idempotency_key="by-hand"),
    ),
]
BY_TOOL = [pytest.param(c, id=c.tool) for c in CASES]


def test_the_module_provides_every_compensation_its_tools_name() -> None:
    loaded = load_handlers(["wakeline_world.undo"])
    assert loaded.tools is not None and sorted(s.name for s in loaded.tools) == sorted(
        s.name for s in TOOLS
    )
    check_tools(loaded.handlers, loaded.tools)  # the compensator's start-up check
    assert loaded.handlers.names() == sorted(COMPENSATIONS.values())
    assert {c.tool for c in CASES} == set(COMPENSATIONS)
    # no result recorded means no id to undo by, and the world has no lookup: escalate
    assert not any(h.safe_if_unknown for h in loaded.handlers)
    # recall works while queued, whenever that ends: no time window is claimed (tools.py)
    assert TOOLS.get("email.send").undo_window_s is None


@pytest.mark.parametrize("case", BY_TOOL)
def test_undone_exactly_once_however_often_it_is_called(
    w: World, handlers: CompensationRegistry, case: Case
) -> None:
    response = case.call(w)
    req = request(case.tool, response)
    handler = handlers.get(req.compensation)
    assert handler is not None
    outcomes = [handler.invoke(req) for _ in range(10)]
    assert all(isinstance(o, Done) for o in outcomes), outcomes
    assert all(o == outcomes[0] for o in outcomes)  # every repeat is the first answer
    assert case.undone(w, response)
    assert w.performed(req.compensation) == {case.subject(response): 1}
    stats = w.stats()[req.compensation]
    assert (stats["performed"], stats["deduplicated"], stats["failed"]) == (1, 9, 0)


def test_concurrent_attempts_with_one_key_refund_once(
    w: World, handlers: CompensationRegistry
) -> None:
    response = CASES[0].call(w)
    req = request("payments.charge", response)
    handler = handlers.get("payments.refund")
    assert handler is not None
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def attempt() -> None:
        got = handler.invoke(req)
        with lock:
            outcomes.append(got)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 8 and all(isinstance(o, Done) for o in outcomes), outcomes
    assert w.performed("payments.refund") == {response["charge_id"]: 1}
    assert len(w.payments.refunds(response["charge_id"])) == 1


@pytest.mark.parametrize("case", BY_TOOL)
def test_a_transient_fault_is_a_transient_failure_and_the_retry_undoes_once(
    w: World, handlers: CompensationRegistry, case: Case
) -> None:
    response = case.call(w)
    name = COMPENSATIONS[case.tool]
    w.inject(name, "transient", times=2)
    handler = handlers.get(name)
    assert handler is not None
    first, second = (handler.invoke(request(case.tool, response)) for _ in range(2))
    req = request(case.tool, response)  # another intent: another key
    assert isinstance(first, Failed) and first.transient, first
    assert isinstance(second, Failed) and second.transient, second
    assert not case.undone(w, response)
    assert isinstance(handler.invoke(req), Done)
    assert isinstance(handler.invoke(req), Done)
    assert case.undone(w, response)
    assert w.performed(name) == {case.subject(response): 1}


@pytest.mark.parametrize("case", BY_TOOL)
def test_a_permanent_fault_is_a_permanent_failure(
    w: World, handlers: CompensationRegistry, case: Case
) -> None:
    response = case.call(w)
    name = COMPENSATIONS[case.tool]
    w.inject(name, "permanent")
    got = handlers.get(name).invoke(request(case.tool, response))  # type: ignore[union-attr]
    assert isinstance(got, Failed) and not got.transient
    assert "PermanentFailure" in got.reason
    assert not case.undone(w, response)


@pytest.mark.parametrize("case", BY_TOOL)
def test_undone_already_by_someone_else_is_nothing_to_undo(
    w: World, handlers: CompensationRegistry, case: Case
) -> None:
    response = case.call(w)
    case.undo_by_hand(w, response)
    got = handlers.get(COMPENSATIONS[case.tool]).invoke(request(case.tool, response))  # type: ignore[union-attr]
    assert isinstance(got, NothingToUndo), got
    assert "already" in got.detail
    assert w.performed(COMPENSATIONS[case.tool]) == {case.subject(response): 1}  # by hand


def test_a_delivered_email_cannot_be_recalled_a_human_sends_a_correction(
    w: World, handlers: CompensationRegistry
) -> None:
    response = CASES[2].call(w)
    assert w.email.deliver_queued() == [response["message_id"]]
    got = handlers.get("email.recall").invoke(request("email.send", response))  # type: ignore[union-attr]
    assert isinstance(got, Failed) and not got.transient
    assert got.reason.startswith("delivered: send a correction to ada@example.com")
    assert w.email.message(response["message_id"])["status"] == "delivered"
    assert w.email.deliver_queued() == []


def test_a_record_changed_since_is_not_restored_over_the_change(
    w: World, handlers: CompensationRegistry
) -> None:
    response = _crm_update(w)
    w.crm.update("cus_ada", {"email": "ada@new.example"}, idempotency_key="later")
    got = handlers.get("crm.restore").invoke(request("crm.update", response))  # type: ignore[union-attr]
    assert isinstance(got, Failed) and not got.transient
    assert "a human must merge" in got.reason
    assert w.crm.get("cus_ada")["fields"] == {"tier": "gold", "email": "ada@new.example"}


def test_a_record_the_call_created_is_deleted(w: World, handlers: CompensationRegistry) -> None:
    response = w.crm.update("cus_new", {"tier": "gold"}, idempotency_key="agent")
    assert response["previous_version"] == 0
    got = handlers.get("crm.restore").invoke(request("crm.update", response))  # type: ignore[union-attr]
    assert isinstance(got, Done) and w.crm.get("cus_new") is None


def test_an_id_the_world_does_not_know_or_no_id_is_for_a_human(
    w: World, handlers: CompensationRegistry
) -> None:
    refund = handlers.get("payments.refund")
    assert refund is not None
    unknown = refund.invoke(request("payments.charge", {"charge_id": "ch_nowhere"}))
    assert isinstance(unknown, Failed) and not unknown.transient
    assert "NotFound" in unknown.reason
    missing = refund.invoke(request("payments.charge", {}))
    assert isinstance(missing, Failed) and not missing.transient
    assert "recorded no charge_id" in missing.reason
    assert w.stats().get("payments.refund", {}).get("performed", 0) == 0


def test_the_world_comes_from_the_environment_once_per_process(
    fresh_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    undo.set_world(None)
    try:
        monkeypatch.setenv("WAKELINE_WORLD_DSN", fresh_dsn)
        seen: list[World] = []
        threads = [threading.Thread(target=lambda: seen.append(undo.world())) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({id(x) for x in seen}) == 1 and seen[0].dsn == fresh_dsn
        undo.set_world(None)
        monkeypatch.delenv("WAKELINE_WORLD_DSN")
        assert undo.world().dsn == DatabaseSettings.from_env().dsn  # Wakeline's own database
    finally:
        undo.set_world(None)
