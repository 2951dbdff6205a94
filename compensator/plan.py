"""The compensation plan of a quarantine: what is undone, what is skipped, what is escalated.

`build_plan` reads one workflow's decoded events in partition order (intents, results, the
compensator's own CompensationStarted / CompensationResult / Escalation events, quarantines)
and returns one `Step` per tool call of the quarantine's scope, newest first: within a
workflow the partition order is the causal order, so undoing in reverse undoes a call before
the calls it built on. It is pure: the same events give the same plan, so a compensator
restarted mid-plan, or a dry run (`wakeline workflow plan`), computes the plan again.

The rules, first match wins (docs/compensation.md has them as a table):

| call                                                   | step       | reason               |
| ------------------------------------------------------ | ---------- | -------------------- |
| read-only tool                                         | skip       | read_only            |
| a CompensationResult ok/skipped for it, or `compensated` | skip     | already_compensated  |
| result `denied`, or a `deny` in the intent (a gate refused it) | skip     | denied               |
| result `error` that is not a timeout                   | skip       | failed               |
| declared irreversible                                  | escalate   | irreversible         |
| no compensation declared                               | escalate   | no_compensation      |
| compensation named, no handler loaded                  | escalate   | unknown_compensation |
| its compensation failed for good earlier               | escalate   | failed_for_good      |
| now past intent time + undo window                     | escalate   | undo_window          |
| outcome unknown, handler not `safe_if_unknown`         | escalate   | outcome_unknown      |
| outcome unknown, handler `safe_if_unknown`             | compensate | outcome_unknown_safe |
| result `ok`                                            | compensate | ok                   |

Outcome unknown: an intent without a result, a result `aborted`, or an `error` whose type
is a timeout. A result that arrives after the quarantine is paired like any other (it joins
the plan); the compensation recorded in each intent is the one used, not today's registry.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from wakeline.compensator.registry import CompensationRegistry, CompensationRequest
from wakeline.schemas import rfc3339_micros

Action = Literal["compensate", "skip", "escalate"]
ScopeKind = Literal["workflow", "run", "tainted", "agent", "boundary"]

_TIMEOUT = re.compile(r"time[_ ]?out", re.IGNORECASE)
_DONE = ("ok", "skipped")  # CompensationResult statuses meaning "undone"
_MAX_QUOTE = 200


@dataclass(frozen=True)
class Scope:
    """Which calls a quarantine covers: every run, one run, what descends from events, the
    calls of one agent since a time, or the calls in one boundary."""

    kind: ScopeKind = "workflow"
    run_id: str | None = None
    tainted: frozenset[str] = frozenset()
    quarantine_id: str | None = None
    #: a rollback: only calls after this event (a WorkflowSnapshot) count (`after_checkpoint`)
    after_event_id: str | None = None
    #: scope agent: the agent id; scope boundary: the boundary
    target: str | None = None
    #: scope agent: calls from this time on (microseconds), None: all of them
    since: int | None = None

    def __post_init__(self) -> None:
        if self.kind == "run" and not self.run_id:
            raise ValueError("a run scope needs a run_id")
        if self.kind in ("agent", "boundary") and not self.target:
            raise ValueError(f"an {self.kind} scope needs a target")

    @classmethod
    def of(cls, quarantine: Mapping[str, Any]) -> Scope:
        """The scope of a decoded `Quarantine` event (an agent or boundary scope without a
        target reads as `workflow`: it stops more, never less)."""
        kind = quarantine.get("scope", "workflow")
        target = quarantine.get("target")
        if kind not in ("run", "tainted", "agent", "boundary") or (
            kind in ("agent", "boundary") and not target
        ):
            kind = "workflow"
        return cls(
            kind=kind,
            run_id=quarantine.get("run_id") if kind == "run" else None,
            tainted=frozenset(quarantine.get("tainted_event_ids") or ()),
            quarantine_id=quarantine.get("event_id"),
            after_event_id=quarantine.get("after_event_id"),
            target=target if kind in ("agent", "boundary") else None,
            since=quarantine.get("since") if kind == "agent" else None,
        )

    def describe(self) -> str:
        if self.after_event_id is not None:
            return f"run {self.run_id} after checkpoint {self.after_event_id} (a rollback)"
        if self.kind == "run":
            return f"run {self.run_id}"
        if self.kind == "tainted":
            return f"calls descending from {len(self.tainted)} tainted event(s)"
        if self.kind == "agent":
            since = "" if self.since is None else f" since {rfc3339_micros(self.since)}"
            return f"calls of agent {self.target}{since}"
        if self.kind == "boundary":
            return f"calls in boundary {self.target}"
        return "every run of the workflow"


@dataclass(frozen=True)
class Step:
    """One call of the plan and what to do about it."""

    action: Action
    #: a stable code (the table above); `why` says it in plain language
    reason: str
    why: str
    intent: Mapping[str, Any] = field(repr=False)
    result: Mapping[str, Any] | None = field(default=None, repr=False)
    #: for `compensate`: what the handler gets
    request: CompensationRequest | None = None
    #: an earlier Escalation naming this call (the daemon does not file it twice)
    escalated_by: str | None = None
    #: the CompensationResult that undid it (skip already_compensated)
    compensated_by: str | None = None

    @property
    def intent_id(self) -> str:
        return self.intent["event_id"]

    @property
    def tool(self) -> str:
        return self.intent["tool"]

    @property
    def compensation(self) -> str | None:
        return self.intent.get("compensation")

    @property
    def run_id(self) -> str:
        return self.intent["run_id"]

    @property
    def status(self) -> str | None:
        return None if self.result is None else self.result.get("status")

    def to_json(self) -> dict[str, Any]:
        req = self.request
        return {
            "action": self.action,
            "reason": self.reason,
            "why": self.why,
            "intent_id": self.intent_id,
            "result_id": None if self.result is None else self.result.get("event_id"),
            "run_id": self.run_id,
            "tool": self.tool,
            "compensation": self.compensation,
            "status": self.status,
            "idempotency_key": None if req is None else req.idempotency_key,
            "attempt": None if req is None else req.attempt,
            "escalated_by": self.escalated_by,
            "compensated_by": self.compensated_by,
        }


@dataclass
class _Call:
    index: int
    intent: Mapping[str, Any]
    result: Mapping[str, Any] | None = None
    attempts: int = 0
    done_by: str | None = None
    failed_for_good: str | None = None
    escalated_by: str | None = None


def build_plan(
    events: Iterable[Mapping[str, Any]],
    registry: CompensationRegistry,
    *,
    scope: Scope,
    now_us: int,
    compensated: Collection[str] = (),
) -> list[Step]:
    """The plan for `scope` over one workflow's decoded events in partition order, newest
    call first. `now_us`: the time undo windows are measured against; `compensated`: intent
    ids known to be undone already (beyond the CompensationResult events given)."""
    calls: dict[str, _Call] = {}
    tainted = set(scope.tainted)
    compensator: list[Mapping[str, Any]] = []
    if scope.after_event_id is not None:
        events = after_checkpoint(events, scope.after_event_id)
    for index, event in enumerate(events):
        kind = event.get("type")
        if kind == "ToolIntent":
            if event["event_id"] in calls:
                continue  # a redelivered duplicate: one call
            if _in_scope(event, scope, tainted):
                calls[event["event_id"]] = _Call(index, event)
        elif kind == "ToolResult":
            call = calls.get(event.get("intent_id", ""))
            if call is None:
                continue  # a result of a call out of scope (or never seen)
            tainted.add(event["event_id"])
            if supersedes(event, call.result):
                call.result = event
        elif kind in ("CompensationStarted", "CompensationResult", "Escalation"):
            compensator.append(event)
        elif scope.kind == "tainted":
            _in_scope(event, scope, tainted)  # other events pass taint on to their children
    for event in compensator:
        _note(event, calls)
    steps = [
        _step(call, registry, scope, now_us, compensated)
        for call in sorted(calls.values(), key=lambda c: c.index, reverse=True)
    ]
    return steps


def after_checkpoint(
    events: Iterable[Mapping[str, Any]], snapshot_id: str
) -> Iterable[Mapping[str, Any]]:
    """The events after the WorkflowSnapshot `snapshot_id`, in partition order: what a
    rollback to it undoes. Calls before it (and their late results) stay as they are; the
    compensator's events come after the calls they are about, so none is lost. When the
    snapshot is not among the events, nothing is: a rollback to a checkpoint the compensator
    never saw undoes nothing rather than the whole run."""
    seen = False
    for event in events:
        if seen:
            yield event
        elif event.get("event_id") == snapshot_id and event.get("type") == "WorkflowSnapshot":
            seen = True


def supersedes(result: Mapping[str, Any], prior: Mapping[str, Any] | None) -> bool:
    """Whether `result` replaces `prior` as a call's result: the first one counts, and of
    duplicates the one that says the call took effect (`ok`)."""
    return prior is None or (result.get("status") == "ok" and prior.get("status") != "ok")


def active_quarantine(events: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The latest Quarantine no later Release lifted (a Release without `quarantine_id`
    lifts whatever was in force), or None."""
    active: Mapping[str, Any] | None = None
    for event in events:
        kind = event.get("type")
        if kind == "Quarantine":
            active = event
        elif kind == "Release" and active is not None:
            lifted = event.get("quarantine_id")
            if lifted is None or lifted == active.get("event_id"):
                active = None
    return active


def _in_scope(event: Mapping[str, Any], scope: Scope, tainted: set[str]) -> bool:
    if scope.kind == "workflow":
        return True
    if scope.kind == "run":
        return event.get("run_id") == scope.run_id
    if scope.kind == "agent":
        return event.get("agent_id") == scope.target and int(event.get("time") or 0) >= (
            scope.since or 0
        )
    if scope.kind == "boundary":
        return event.get("boundary") == scope.target
    if event["event_id"] in tainted or tainted.intersection(event.get("parent_event_ids") or ()):
        tainted.add(event["event_id"])
        return True
    return False


def _note(event: Mapping[str, Any], calls: dict[str, _Call]) -> None:
    """What the compensator's own events say about the calls."""
    kind = event["type"]
    if kind == "Escalation":
        for related in event.get("related_event_ids") or ():
            call = calls.get(related)
            if call is not None and call.escalated_by is None:
                call.escalated_by = event["event_id"]
        return
    call = calls.get(event.get("original_event_id", ""))
    if call is None or event.get("compensation") != call.intent.get("compensation"):
        return
    call.attempts = max(call.attempts, int(event.get("attempt") or 1))
    if kind != "CompensationResult":
        return
    if event.get("status") in _DONE:
        call.done_by = call.done_by or event["event_id"]
    elif event.get("final"):
        why = event.get("error_message") or event.get("error_type") or "no reason recorded"
        call.failed_for_good = _quote(why)


def _step(
    call: _Call,
    registry: CompensationRegistry,
    scope: Scope,
    now_us: int,
    compensated: Collection[str],
) -> Step:
    intent, result = call.intent, call.result
    tool = intent["tool"]
    name = intent.get("compensation")

    def step(action: Action, reason: str, why: str, **extra: Any) -> Step:
        if action == "escalate":
            extra.setdefault("escalated_by", call.escalated_by)
        return Step(action, reason, why, intent, result, **extra)

    if intent.get("reversibility") == "read":
        return step("skip", "read_only", f"read-only: {tool} changed nothing")
    if call.done_by is not None or intent["event_id"] in compensated:
        by = f" (event {call.done_by})" if call.done_by else ""
        return step(
            "skip",
            "already_compensated",
            f"already compensated: {name or 'its compensating action'} succeeded{by}",
            compensated_by=call.done_by,
        )
    status = None if result is None else result.get("status")
    error = _error(result)
    if intent.get("policy_decision") == "deny" and status in (None, "denied"):
        why = intent.get("policy_reason") or "a gate refused it"
        return step("skip", "denied", f"refused before it ran ({_quote(why)}): nothing happened")
    if status == "denied":
        return step("skip", "denied", f"refused before it ran ({error}): nothing happened")
    timed_out = status == "error" and bool(_TIMEOUT.search(result.get("error_type") or ""))
    if status == "error" and not timed_out:
        return step("skip", "failed", f"failed without effect: {tool} raised {error}")
    unknown = None
    if status is None:
        unknown = (
            f"outcome unknown: no result of {tool} was recorded (the agent may have crashed "
            "mid-call, or the call is still running); check before undoing"
        )
    elif status != "ok":
        verb = "timed out" if timed_out else "was aborted before it completed"
        unknown = f"outcome unknown: {tool} {verb} ({error}); check before undoing"
    handler = registry.get(name)
    blocker = None
    if intent.get("reversibility") == "irreversible":
        blocker = (
            "irreversible",
            f"{tool} is declared irreversible: it cannot be undone automatically; a human "
            "must decide what to do",
        )
    elif name is None:
        blocker = (
            "no_compensation",
            f"{tool} declares no compensating action: a human must undo it",
        )
    elif handler is None:
        blocker = (
            "unknown_compensation",
            f"{tool} names the compensating action {name}, which no loaded handler module "
            "provides: escalated, never guessed at",
        )
    elif call.failed_for_good is not None:
        blocker = (
            "failed_for_good",
            f"the compensating action {name} failed for good ({call.failed_for_good}): "
            "undo it by hand",
        )
    else:
        window = intent.get("undo_window_us")
        if window is not None and now_us > intent["time"] + window:
            blocker = (
                "undo_window",
                f"past its undo window: {tool} could be undone until "
                f"{rfc3339_micros(intent['time'] + window)} ({_seconds(window)} after the "
                f"call), it is now {rfc3339_micros(now_us)}",
            )
    if blocker is not None:
        reason, why = blocker
        return step("escalate", reason, why if unknown is None else f"{why}; {unknown}")
    assert handler is not None and name is not None
    if unknown is not None and not handler.safe_if_unknown:
        return step("escalate", "outcome_unknown", unknown)
    request = CompensationRequest.of(
        name, intent, result, attempt=call.attempts + 1, quarantine_id=scope.quarantine_id
    )
    if unknown is not None:
        why = f"{unknown.split(';')[0]}; {name} is declared safe to call even so"
        return step("compensate", "outcome_unknown_safe", why, request=request)
    return step("compensate", "ok", _succeeded(tool, name, result), request=request)


def _succeeded(tool: str, name: str, result: Mapping[str, Any] | None) -> str:
    result = result or {}
    summary = result.get("result_summary")
    ids = result.get("external_ids") or {}
    said = f" ({_quote(summary)})" if summary else ""
    using = f" using {', '.join(f'{k}={v}' for k, v in sorted(ids.items()))}" if ids else ""
    return f"{tool} succeeded{said}; {name} will undo it{using}"


def _error(result: Mapping[str, Any] | None) -> str:
    if result is None:
        return "no result"
    kind, message = result.get("error_type"), result.get("error_message")
    if kind and message:
        return _quote(f"{kind}: {message}")
    return _quote(kind or message or "no reason recorded")


def _quote(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_QUOTE else text[: _MAX_QUOTE - 1] + "…"


def _seconds(us: int) -> str:
    s = us / 1_000_000
    return f"{s:g} s"
