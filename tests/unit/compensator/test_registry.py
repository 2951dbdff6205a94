"""The handler API: declaring, loading by module name, the start-up check, invoking."""

from __future__ import annotations

import dataclasses
import itertools
import sys
import textwrap
from pathlib import Path

import pytest

from wakeline.compensator.registry import (
    CompensationRegistry,
    CompensationRequest,
    Done,
    Failed,
    Handler,
    HandlerLoadError,
    MissingCompensations,
    NothingToUndo,
    check_tools,
    compensation,
    idempotency_key,
    load_handlers,
)
from wakeline.errors import ConfigError

from .eventkit import Events

_names = itertools.count()


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Write a module with this source under a fresh name; returns the name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str) -> str:
        name = f"wl_test_handlers_{next(_names)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.delitem(sys.modules, name, raising=False)
        return name

    return write


UNDO = """
    from wakeline.compensator.registry import CompensationRegistry, Done, compensation
    from wakeline.producers.registry import ToolRegistry

    @compensation("stripe.refund")
    def refund(req):
        return Done("refunded " + req.external_ids["charge_id"])

    crm = CompensationRegistry()

    @crm.compensation("crm.restore", safe_if_unknown=True)
    def restore(req):
        return Done()

    TOOLS = ToolRegistry()
    TOOLS.declare("stripe.charge", reversibility="compensable", compensation="stripe.refund")
    TOOLS.declare("crm.update", reversibility="compensable", compensation="crm.restore")
"""


def test_a_module_declares_handlers_by_decorator_and_registry_and_its_tools(module) -> None:
    loaded = load_handlers([module(UNDO)])
    assert loaded.handlers.names() == ["crm.restore", "stripe.refund"]
    assert loaded.handlers.get("crm.restore").safe_if_unknown is True
    assert loaded.handlers.get("stripe.refund").safe_if_unknown is False
    assert loaded.tools is not None and "stripe.charge" in loaded.tools
    check_tools(loaded.handlers, loaded.tools)  # every compensation is provided


def test_the_start_up_check_lists_every_missing_compensation(module) -> None:
    tools = module("""
        from wakeline.producers.registry import ToolRegistry
        TOOLS = ToolRegistry()
        TOOLS.declare("stripe.charge", compensation="stripe.refund")
        TOOLS.declare("stripe.capture", compensation="stripe.refund")
        TOOLS.declare("vm.create", compensation="vm.delete")
        TOOLS.declare("email.send", reversibility="irreversible")
    """)
    loaded = load_handlers([tools])
    with pytest.raises(MissingCompensations) as got:
        check_tools(loaded.handlers, loaded.tools)
    assert got.value.missing == {
        "stripe.refund": ["stripe.capture", "stripe.charge"],
        "vm.delete": ["vm.create"],
    }
    assert str(got.value) == (
        "2 compensating action(s) named by registered tools are provided by no handler module: "
        "stripe.refund (for stripe.capture, stripe.charge); vm.delete (for vm.create)"
    )
    assert isinstance(got.value, ConfigError)  # the CLI exits 2
    check_tools(CompensationRegistry(), None)  # no tool registry declared: nothing to check


def test_handlers_and_tools_may_come_from_different_modules(module) -> None:
    undo = module("""
        from wakeline.compensator.registry import Done, compensation
        @compensation("vm.delete")
        def delete(req):
            return Done()
    """)
    tools = module("""
        from wakeline.producers.registry import ToolRegistry
        TOOLS = ToolRegistry()
        TOOLS.declare("vm.create", compensation="vm.delete")
    """)
    loaded = load_handlers([f"{undo}", f" {tools} ", undo])  # stripped, loaded once
    assert loaded.modules == [undo, tools]
    check_tools(loaded.handlers, loaded.tools)


def test_a_module_that_is_not_there_is_named(module) -> None:
    with pytest.raises(HandlerLoadError, match=r"handler module no_such_mod\.undo not found"):
        load_handlers(["no_such_mod.undo"])


def test_a_module_that_raises_on_import_is_a_clear_error(module) -> None:
    bad = module("RATE = 1 / 0\n")
    with pytest.raises(HandlerLoadError, match=rf"{bad} raised on import: ZeroDivisionError"):
        load_handlers([bad])
    missing_dep = module("import stripe_sdk_that_is_not_installed\n")
    with pytest.raises(HandlerLoadError, match="raised on import: ModuleNotFoundError"):
        load_handlers([missing_dep])
    exits = module("raise SystemExit(3)\n")
    with pytest.raises(HandlerLoadError, match="raised on import: SystemExit"):
        load_handlers([exits])


def test_a_module_that_declares_nothing_is_refused(module) -> None:
    with pytest.raises(HandlerLoadError, match="declares no compensating action"):
        load_handlers([module("X = 1\n")])


def test_one_compensation_provided_twice_is_refused(module) -> None:
    a = module(UNDO)
    b = module("""
        from wakeline.compensator.registry import Done, compensation
        @compensation("stripe.refund")
        def other_refund(req):
            return Done()
    """)
    with pytest.raises(HandlerLoadError, match="stripe.refund is provided twice"):
        load_handlers([a, b])


def test_reexporting_the_same_handler_is_not_a_conflict(module) -> None:
    a = module(UNDO)
    b = module(f"from {a} import refund\n")
    assert "stripe.refund" in load_handlers([a, b]).handlers


def test_names_must_be_non_empty() -> None:
    with pytest.raises(HandlerLoadError, match="non-empty name"):
        compensation("")
    with pytest.raises(HandlerLoadError, match="non-empty name"):
        CompensationRegistry().register(" ", lambda r: Done())
    with pytest.raises(HandlerLoadError, match="not callable"):
        CompensationRegistry().add(Handler("x", "not a function"))  # type: ignore[arg-type]


def test_the_idempotency_key_is_stable_and_distinct() -> None:
    key = idempotency_key("0190a0b0-0000-7000-8000-000000000001", "stripe.refund")
    # a fixed value: keys must never change across versions (the outside world stores them)
    assert key == "wl-4339c67747f179ed44c2511612080af0"
    assert len(key) == 35 and key.startswith("wl-") and key.isascii()
    assert key == idempotency_key("0190a0b0-0000-7000-8000-000000000001", "stripe.refund")
    assert key != idempotency_key("0190a0b0-0000-7000-8000-000000000002", "stripe.refund")
    assert key != idempotency_key("0190a0b0-0000-7000-8000-000000000001", "stripe.void")
    # no ambiguity between where the id ends and the name begins
    assert idempotency_key("a", "bc") != idempotency_key("ab", "c")


def test_the_idempotency_key_is_the_same_on_every_attempt() -> None:
    ev = Events()
    intent = ev.intent()
    result = ev.result(intent)
    keys = {
        CompensationRequest.of("stripe.refund", intent, result, attempt=n).idempotency_key
        for n in (1, 2, 7)
    }
    assert keys == {idempotency_key(intent["event_id"], "stripe.refund")}


def test_the_request_is_frozen_and_carries_what_was_logged() -> None:
    ev = Events()
    intent = ev.intent(args='{"amount":5,"card":{"brand":"visa"}}')
    intent["redacted_fields"] = ["card.number"]
    result = ev.result(intent, external_ids={"charge_id": "ch_9"})
    req = CompensationRequest.of("stripe.refund", intent, result, attempt=2, quarantine_id="q")
    assert dict(req.args) == {"amount": 5, "card": {"brand": "visa"}}  # no card number
    assert req.redacted_fields == ("card.number",)
    assert (req.result_id, req.status, req.external_ids["charge_id"]) == (
        result["event_id"],
        "ok",
        "ch_9",
    )
    assert (req.attempt, req.quarantine_id, req.envelope.run_id) == (2, "q", "run-1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.attempt = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        req.external_ids["charge_id"] = "other"  # type: ignore[index]
    unknown = CompensationRequest.of("stripe.refund", intent, None)
    assert (unknown.status, unknown.result_id, dict(unknown.external_ids)) == (None, None, {})


def test_invoke_turns_whatever_a_handler_does_into_an_outcome() -> None:
    ev = Events()
    intent = ev.intent()
    req = CompensationRequest.of("x", intent, ev.result(intent))

    def raises(exc: BaseException):  # noqa: ANN202
        def fn(r):  # noqa: ANN001, ANN202
            raise exc

        return fn

    assert Handler("x", lambda r: Done("ok", {"refund": "re_1"})).invoke(req) == Done(
        "ok", {"refund": "re_1"}
    )
    assert Handler("x", lambda r: NothingToUndo()).invoke(req) == NothingToUndo()
    assert Handler("x", lambda r: Failed("card expired")).invoke(req) == Failed("card expired")
    timeout = Handler("x", raises(TimeoutError("slow"))).invoke(req)
    assert timeout == Failed("TimeoutError: slow", transient=True)
    conn = Handler("x", raises(ConnectionResetError("reset"))).invoke(req)
    assert isinstance(conn, Failed) and conn.transient
    bug = Handler("x", raises(KeyError("charge_id"))).invoke(req)
    assert isinstance(bug, Failed) and not bug.transient
    assert bug.reason.startswith("KeyError: 'charge_id' (at ")
    wrong = Handler("x", lambda r: True).invoke(req)
    assert isinstance(wrong, Failed) and "returned bool, not Done" in wrong.reason


def test_a_tool_registry_conflict_across_modules_is_a_load_error(module) -> None:
    a = module("""
        from wakeline.producers.registry import ToolRegistry
        TOOLS = ToolRegistry()
        TOOLS.declare("vm.create", compensation="vm.delete")
    """)
    b = module("""
        from wakeline.producers.registry import ToolRegistry
        TOOLS = ToolRegistry()
        TOOLS.declare("vm.create", compensation="vm.destroy")
    """)
    with pytest.raises(HandlerLoadError, match="already registered"):
        load_handlers([a, b])
