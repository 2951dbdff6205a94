"""Compensating actions: how they are declared, what they receive, what they return.

A compensating action is a Python callable declared once, next to the tool it undoes, under
the name the tool's `ToolSpec.compensation` gives:

    @compensation("stripe.refund")
    def refund(req: CompensationRequest) -> Outcome:
        charge = req.external_ids["charge_id"]  # from the result, never from redacted args
        stripe.Refund.create(charge=charge, idempotency_key=req.idempotency_key)
        return Done(f"refunded {charge}")

It receives a `CompensationRequest` (the intent as logged, the result, the envelope, an
idempotency key that is the same for every attempt, the attempt number) and returns `Done`,
`NothingToUndo` or `Failed` (transient: retry later; permanent: escalate to a human).

`load_handlers` imports the modules named on the daemon's command line and collects the
handlers they declare (decorated functions or a `CompensationRegistry`) and the tool
registries they declare (`ToolRegistry`); `check_tools` refuses a tool registry naming a
compensation nobody provides. See docs/compensation.md.
"""

from __future__ import annotations

import importlib
import json
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any

import blake3

from wakeline.errors import ConfigError, WakelineError
from wakeline.producers.registry import ToolRegistry

#: domain of the idempotency key digest; changing it changes every key (never do)
_KEY_DOMAIN = b"wakeline.compensation.idempotency-key.v1\x00"
#: the attribute `@compensation` sets on the function it declares
_MARK = "__wakeline_compensation__"
_EMPTY: Mapping[str, Any] = MappingProxyType({})


class CompensatorError(WakelineError):
    """Base of the compensator's failures."""


class HandlerLoadError(ConfigError):
    """A handler module cannot be imported, or declares handlers that contradict each other."""


class MissingCompensations(ConfigError):
    """Registered tools name compensating actions no loaded module provides."""

    def __init__(self, missing: Mapping[str, list[str]]) -> None:
        self.missing = {name: sorted(tools) for name, tools in sorted(missing.items())}
        lines = [f"{name} (for {', '.join(tools)})" for name, tools in self.missing.items()]
        super().__init__(
            f"{len(lines)} compensating action(s) named by registered tools are provided by no "
            f"handler module: {'; '.join(lines)}"
        )


# -- outcomes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Done:
    """The effect is undone. `external_ids`: ids the undo obtained (refund id, ...)."""

    detail: str = ""
    external_ids: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NothingToUndo:
    """There was nothing to undo (the original never took effect, or was undone already)."""

    detail: str = ""


@dataclass(frozen=True)
class Failed:
    """The undo did not happen. `transient`: worth retrying; otherwise a human must act."""

    reason: str
    transient: bool = False


Outcome = Done | NothingToUndo | Failed


# -- the request -------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """Who acted, in which workflow and run (the original intent's envelope)."""

    workflow_id: str
    run_id: str
    agent_id: str
    principal: str
    source: str = ""
    step_id: str | None = None
    tenant: str | None = None
    boundary: str | None = None
    correlation_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None

    @classmethod
    def of(cls, event: Mapping[str, Any]) -> Envelope:
        return cls(
            workflow_id=event["workflow_id"],
            run_id=event["run_id"],
            agent_id=event.get("agent_id", ""),
            principal=event.get("principal", ""),
            source=event.get("source", ""),
            step_id=event.get("step_id"),
            tenant=event.get("tenant"),
            boundary=event.get("boundary"),
            correlation_id=event.get("correlation_id"),
            trace_id=event.get("trace_id"),
            span_id=event.get("span_id"),
        )


@dataclass(frozen=True)
class CompensationRequest:
    """Everything a handler gets: the original call as logged, its result, the envelope.

    `args` are the arguments as the intent logged them: redacted fields are absent and
    digest-only fields hold a digest, so a handler must find what it needs in
    `external_ids` (what the result recorded) instead. `status` is None when no result was
    recorded (only handlers declared `safe_if_unknown` are called then).
    """

    compensation: str
    idempotency_key: str
    attempt: int
    intent_id: str
    tool: str
    args: Mapping[str, Any]
    redacted_fields: tuple[str, ...]
    resources_written: tuple[str, ...]
    reversibility: str
    intent_time_us: int
    envelope: Envelope
    result_id: str | None = None
    status: str | None = None
    result_summary: str | None = None
    external_ids: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    error_type: str | None = None
    error_message: str | None = None
    quarantine_id: str | None = None

    @classmethod
    def of(
        cls,
        compensation: str,
        intent: Mapping[str, Any],
        result: Mapping[str, Any] | None = None,
        *,
        attempt: int = 1,
        quarantine_id: str | None = None,
    ) -> CompensationRequest:
        """The request for one attempt at compensating `intent` (decoded events)."""
        result = result or {}
        return cls(
            compensation=compensation,
            idempotency_key=idempotency_key(intent["event_id"], compensation),
            attempt=attempt,
            intent_id=intent["event_id"],
            tool=intent["tool"],
            args=_frozen_args(intent.get("args", "{}")),
            redacted_fields=tuple(intent.get("redacted_fields", ())),
            resources_written=tuple(intent.get("resources_written", ())),
            reversibility=intent.get("reversibility", "irreversible"),
            intent_time_us=intent["time"],
            envelope=Envelope.of(intent),
            result_id=result.get("event_id"),
            status=result.get("status"),
            result_summary=result.get("result_summary"),
            external_ids=MappingProxyType(dict(result.get("external_ids") or {})),
            error_type=result.get("error_type"),
            error_message=result.get("error_message"),
            quarantine_id=quarantine_id,
        )


def _frozen_args(text: str) -> Mapping[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return MappingProxyType({})
    return MappingProxyType(value) if isinstance(value, dict) else MappingProxyType({})


def idempotency_key(intent_event_id: str, compensation: str) -> str:
    """`wl-` + 32 hex digits of BLAKE3(domain || event id || NUL || compensation name).

    Stable: the same intent and compensation always give the same key, on every attempt,
    in every process; two compensations of one intent (or one of two intents) never share
    one. 35 ASCII characters: short enough for every payment API's idempotency header.
    """
    h = blake3.blake3(_KEY_DOMAIN)
    h.update(intent_event_id.encode())
    h.update(b"\x00")
    h.update(compensation.encode())
    return "wl-" + h.hexdigest(length=16)


# -- handlers and the registry -----------------------------------------------------------

HandlerFn = Callable[[CompensationRequest], Outcome]


@dataclass(frozen=True)
class Handler:
    name: str
    fn: HandlerFn = field(compare=False)
    #: safe to call when the original call may not have happened (outcome unknown)
    safe_if_unknown: bool = False

    @property
    def where(self) -> str:
        fn = self.fn
        return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"

    def invoke(self, request: CompensationRequest) -> Outcome:
        """Run the handler; an exception or a value that is not an Outcome is a `Failed`.

        Timeouts and connection errors (`TimeoutError`, `ConnectionError`) are transient;
        any other exception is permanent (retrying a bug does not fix it).
        """
        try:
            got = self.fn(request)
        except (TimeoutError, ConnectionError) as e:
            return Failed(f"{type(e).__name__}: {e}", transient=True)
        except Exception as e:  # noqa: BLE001 - a handler's bug is its outcome, not ours
            where = traceback.extract_tb(e.__traceback__)[-1]
            return Failed(f"{type(e).__name__}: {e} (at {where.filename}:{where.lineno})")
        if isinstance(got, Done | NothingToUndo | Failed):
            return got
        return Failed(
            f"compensation {self.name} ({self.where}) returned {type(got).__name__}, "
            "not Done, NothingToUndo or Failed"
        )


class CompensationRegistry:
    """Compensation name -> `Handler`. Thread-safe."""

    def __init__(self, handlers: Iterable[Handler] = ()) -> None:
        self._handlers: dict[str, Handler] = {}
        self._lock = threading.Lock()
        for h in handlers:
            self.add(h)

    def register(self, name: str, fn: HandlerFn, *, safe_if_unknown: bool = False) -> HandlerFn:
        self.add(Handler(_name(name), fn, safe_if_unknown))
        return fn

    def compensation(
        self, name: str, *, safe_if_unknown: bool = False
    ) -> Callable[[HandlerFn], HandlerFn]:
        """Decorator: `@registry.compensation("stripe.refund")`."""
        return lambda fn: self.register(name, fn, safe_if_unknown=safe_if_unknown)

    def add(self, handler: Handler) -> None:
        if not callable(handler.fn):
            raise HandlerLoadError(f"compensation {handler.name}: {handler.fn!r} is not callable")
        with self._lock:
            old = self._handlers.get(handler.name)
            if old is not None and (old.fn is not handler.fn or old != handler):
                raise HandlerLoadError(
                    f"compensation {handler.name} is provided twice: by {old.where} and by "
                    f"{handler.where}"
                )
            self._handlers[handler.name] = handler

    def get(self, name: str | None) -> Handler | None:
        return None if name is None else self._handlers.get(name)

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __iter__(self) -> Iterator[Handler]:
        return iter(list(self._handlers.values()))

    def __len__(self) -> int:
        return len(self._handlers)


def _name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise HandlerLoadError(f"a compensation needs a non-empty name, got {name!r}")
    return name


def compensation(name: str, *, safe_if_unknown: bool = False) -> Callable[[HandlerFn], HandlerFn]:
    """Declare the decorated function as the compensating action `name`.

    It only marks the function; `load_handlers` finds it in its module. `safe_if_unknown`:
    the handler may be called when the original call's outcome is unknown (no result, an
    abort, a timeout), because it checks the outside world first or undoing nothing is
    harmless; without it such calls are escalated.
    """
    _name(name)

    def mark(fn: HandlerFn) -> HandlerFn:
        if not callable(fn):
            raise HandlerLoadError(f"@compensation({name!r}) decorates {fn!r}, not a callable")
        setattr(fn, _MARK, Handler(name, fn, safe_if_unknown))
        return fn

    return mark


# -- loading modules and checking tools --------------------------------------------------


@dataclass
class Loaded:
    """What the handler modules declare."""

    handlers: CompensationRegistry
    #: the union of the tool registries the modules declare; None if none declares one
    tools: ToolRegistry | None
    modules: list[str]


def load_handlers(modules: Iterable[str]) -> Loaded:
    """Import each module by name and collect its handlers and tool registries.

    A module provides handlers as functions marked with `@compensation` or as a
    `CompensationRegistry` attribute, and may declare its tools as a `ToolRegistry`
    attribute. A module that cannot be imported, raises on import or declares nothing
    is a `HandlerLoadError` naming it.
    """
    handlers = CompensationRegistry()
    tools: ToolRegistry | None = None
    names: list[str] = []
    for raw in modules:
        name = raw.strip()
        if not name or name in names:
            continue
        module = _import(name)
        found = _collect(module, handlers)
        registries = [v for v in vars(module).values() if isinstance(v, ToolRegistry)]
        if not found and not registries:
            raise HandlerLoadError(
                f"handler module {name} declares no compensating action (@compensation or a "
                "CompensationRegistry) and no ToolRegistry"
            )
        for reg in registries:
            tools = tools or ToolRegistry()
            for spec in reg:
                try:
                    tools.register(spec)
                except WakelineError as e:
                    raise HandlerLoadError(f"handler module {name}: {e}") from e
        names.append(name)
    return Loaded(handlers, tools, names)


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            raise HandlerLoadError(
                f"handler module {name} not found (is it installed, or on PYTHONPATH?)"
            ) from e
        raise HandlerLoadError(f"handler module {name} raised on import: {_oneline(e)}") from e
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # SystemExit and friends too: say which module
        raise HandlerLoadError(f"handler module {name} raised on import: {_oneline(e)}") from e


def _oneline(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    at = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    return f"{type(e).__name__}: {e}{at}"


def _collect(module: ModuleType, into: CompensationRegistry) -> int:
    found = 0
    for value in list(vars(module).values()):
        if isinstance(value, CompensationRegistry):
            for h in value:
                into.add(h)
                found += 1
            continue
        mark = getattr(value, _MARK, None) if callable(value) else None
        if isinstance(mark, Handler):
            into.add(mark)
            found += 1
    return found


def missing_compensations(
    handlers: CompensationRegistry, tools: ToolRegistry
) -> dict[str, list[str]]:
    """Compensation name -> the registered tools naming it, for names no handler provides."""
    missing: dict[str, list[str]] = {}
    for spec in tools:
        if spec.compensation is not None and spec.compensation not in handlers:
            missing.setdefault(spec.compensation, []).append(spec.name)
    return missing


def check_tools(handlers: CompensationRegistry, tools: ToolRegistry | None) -> None:
    """The start-up check: every `ToolSpec.compensation` has a handler, or
    `MissingCompensations` lists the missing ones (with the tools naming them)."""
    if tools is None:
        return
    missing = missing_compensations(handlers, tools)
    if missing:
        raise MissingCompensations(missing)
