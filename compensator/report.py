"""The incident report: what an escalation tells a human, in plain language and as JSON.

Pure: it reads the decoded events, the plan (`build_plan`'s steps) and what happened to the
compensated calls, and writes a `Report`; nothing here touches a database or the network.
Two kinds, as the compensator files them (docs/compensation.md, "Escalations and incident
reports"): `plan_report`, once per plan (the whole story of a quarantine), and
`call_report`, once per escalated call.

A report never shows a redacted value: it quotes only what the topic holds (the logged
arguments, in which redacted fields are absent and digest-only fields hold a digest, the
result's summary and external ids, which the SDK scrubbed), and a `ToolSpec.advice`
template is filled only from fields the intent did not record as redacted.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wakeline.compensator.plan import Scope, Step
from wakeline.producers.canonical import DIGEST_PREFIX, REDACTED
from wakeline.producers.registry import ToolRegistry
from wakeline.schemas import rfc3339_micros

#: the command that proves an event is in the ledger
PROOF_COMMAND = "wakeline ledger proof EVENT_ID"
_TIMEOUT = re.compile(r"time[_ ]?out", re.IGNORECASE)
_MAX_QUOTE = 300


@dataclass(frozen=True)
class Position:
    """Where an event sits, so an auditor can ask for an inclusion proof."""

    partition: int
    offset: int
    #: None: not known to whoever made the report (the compensator reads the events topic,
    #: not the ledger); `wakeline ledger proof EVENT_ID` finds the leaf by the event id
    leaf_index: int | None = None

    @classmethod
    def of(cls, value: Any) -> Position:
        """A Position from a Position, a (partition, offset[, leaf_index]) tuple, or a mapping
        with those keys (`wakeline workflow plan --json`'s `ledger`)."""
        if isinstance(value, Position):
            return value
        if isinstance(value, Mapping):
            return cls(int(value["partition"]), int(value["offset"]), value.get("leaf_index"))
        partition, offset, *leaf = value
        return cls(int(partition), int(offset), leaf[0] if leaf else None)

    def describe(self) -> str:
        at = f"partition {self.partition} offset {self.offset}"
        return at if self.leaf_index is None else f"{at}, leaf {self.leaf_index}"

    def to_json(self) -> dict[str, Any]:
        return {"partition": self.partition, "offset": self.offset, "leaf_index": self.leaf_index}


@dataclass(frozen=True)
class ActionOutcome:
    """What happened to a compensated call (a `compensator_actions` row)."""

    #: pending | running | done | nothing | failed | cancelled
    state: str
    detail: str | None = None
    attempts: int = 0
    external_ids: Mapping[str, str] = field(default_factory=dict)
    compensation: str | None = None

    @classmethod
    def of(cls, action: Any) -> ActionOutcome:
        """The outcome of a `compensator_actions` row (any object with its fields)."""
        return cls(
            state=action.state,
            detail=action.detail,
            attempts=int(action.attempts or 0),
            external_ids=dict(action.external_ids or {}),
            compensation=action.compensation,
        )


@dataclass(frozen=True)
class Report:
    title: str
    #: plain language, multi-line, for a human
    text: str
    #: JSON-able, the same content for machines
    data: dict[str, Any]
    #: one line per call undone (and how)
    undone: list[str]
    #: one line per call not undone (and why)
    not_undone: list[str]
    #: recommended actions for a human
    recommended: list[str]
    related_event_ids: list[str]


# -- what became of one call ---------------------------------------------------------------


@dataclass(frozen=True)
class _Fate:
    """A step and its outcome, said once for the text and the data."""

    bucket: str  # undone | not_undone | skipped
    reason: str  # the step's reason, or failed_for_good / cancelled / in_progress
    line: str
    advice: str | None


def _fate(step: Step, outcome: ActionOutcome | None, tools: ToolRegistry | None) -> _Fate:
    call = _call_name(step)
    name = (outcome.compensation if outcome else None) or step.compensation or "its undo"
    if step.action == "skip":
        if step.reason == "already_compensated":
            by = f" (event {step.compensated_by})" if step.compensated_by else ""
            return _Fate("undone", step.reason, f"{call}: undone earlier by {name}{by}", None)
        return _Fate("skipped", step.reason, f"{call}: nothing to undo: {step.why}", None)
    if step.action == "escalate":
        line = f"{call}: {step.why}"
        return _Fate("not_undone", step.reason, line, _advice(step, step.reason, tools, None))
    state = outcome.state if outcome is not None else "pending"
    detail = f": {_quote(outcome.detail)}" if outcome is not None and outcome.detail else ""
    if state == "done":
        ids = _ids(outcome.external_ids if outcome else {})
        return _Fate("undone", "done", f"{call}: undone by {name}{detail}{ids}", None)
    if state == "nothing":
        return _Fate("undone", "nothing", f"{call}: nothing to undo, said {name}{detail}", None)
    if state == "failed":
        tries = outcome.attempts if outcome is not None else 0
        line = f"{call}: {name} failed for good after {tries} attempt(s){detail}"
        return _Fate("not_undone", "failed_for_good", line, _advice(step, "failed", tools, name))
    if state == "cancelled":
        line = f"{call}: not undone: the quarantine was released before {name} ran"
        return _Fate("not_undone", "cancelled", line, _advice(step, "cancelled", tools, name))
    line = f"{call}: not undone yet: {name} is {state}"
    return _Fate("not_undone", "in_progress", line, _advice(step, "in_progress", tools, name))


def _call_name(step: Step) -> str:
    when = rfc3339_micros(step.intent["time"]) if "time" in step.intent else "?"
    return f"{step.tool} (run {step.run_id}, {when}, intent {step.intent_id})"


_GENERIC = {
    "outcome_unknown": "check whether {call} took effect before undoing it",
    "irreversible": "decide what to do about {call}: it cannot be undone automatically",
    "no_compensation": "undo {call} by hand: its tool declares no compensating action",
    "unknown_compensation": (
        "undo {call} by hand, or load the handler module that provides {name} and run the "
        "plan again"
    ),
    "undo_window": "undo {call} by hand: its undo window has closed",
    "failed_for_good": "undo {call} by hand: its compensating action failed for good",
    "failed": "undo {call} by hand: {name} failed for good (the detail above says why)",
    "cancelled": (
        "confirm that {call} should stay in place: the quarantine was released before {name} ran"
    ),
    "in_progress": "wait for {name} to finish on {call}, or check that a compensator is running",
}


def _advice(step: Step, reason: str, tools: ToolRegistry | None, name: str | None) -> str:
    """The recommended action for a call not undone: the tool's advice filled in, or generic
    advice for the reason; an unknown outcome always says to check first, a cancelled one
    to confirm the release first, and one in progress only to wait."""
    call = f"{step.tool} (run {step.run_id}, intent {step.intent_id})"
    name = name or step.compensation or "its compensating action"
    generic = _GENERIC.get(reason, "look at {call} and decide what to do").format(
        call=call, name=name
    )
    if reason == "in_progress":
        return generic  # undoing it by hand now could undo it twice
    specific = _filled(step, tools)
    if reason == "cancelled":
        return f"{generic}; if not: {specific}" if specific else generic
    if _outcome_unknown(step) and reason != "failed":
        check = _GENERIC["outcome_unknown"].format(call=call)
        then = specific or ("undo it by hand" if reason == "outcome_unknown" else generic)
        return f"{check}; if it did: {then}"
    return specific or generic


def _filled(step: Step, tools: ToolRegistry | None) -> str | None:
    """`ToolSpec.advice` formatted with the logged arguments and the result's external ids,
    or None when there is none or a field it names is missing or secret."""
    if tools is None or step.tool not in tools:
        return None
    template = tools.get(step.tool).advice
    if not template:
        return None
    secret = [p.split(".") for p in step.intent.get("redacted_fields") or ()]
    values = dict(_logged_args(step.intent))
    values.update((step.result or {}).get("external_ids") or {})
    try:
        return _quote(_Template(values, secret).format(template))
    except (KeyError, ValueError, TypeError, IndexError, AttributeError):
        return None


class _Template(string.Formatter):
    """`str.format` over nested mappings by dotted path (`{card.last4}`, `{card[last4]}`),
    refusing any field the intent recorded as redacted or digest-only, or a value that is a
    redaction marker or a digest."""

    def __init__(self, values: Mapping[str, Any], secret: list[list[str]]) -> None:
        self.values = values
        self.secret = secret

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, str]:
        parts = re.split(r"\.|\[|\]", field_name)
        parts = [p for p in parts if p]
        for path in self.secret:
            n = min(len(path), len(parts))
            if path[:n] == parts[:n]:
                raise KeyError(field_name)
        value: Any = self.values
        for part in parts:
            if not isinstance(value, Mapping) or part not in value:
                raise KeyError(field_name)
            value = value[part]
        if isinstance(value, Mapping | list) or value is None:
            raise KeyError(field_name)  # a structure or nothing is no advice
        if isinstance(value, str) and (value == REDACTED or value.startswith(DIGEST_PREFIX)):
            raise KeyError(field_name)
        return value, field_name


def _logged_args(intent: Mapping[str, Any]) -> Mapping[str, Any]:
    try:
        value = json.loads(intent.get("args") or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _outcome_unknown(step: Step) -> bool:
    status = step.status
    if status is None or status == "aborted":
        return True
    error = (step.result or {}).get("error_type") or ""
    return status == "error" and bool(_TIMEOUT.search(error))


# -- the reports ---------------------------------------------------------------------------


def call_report(
    *,
    workflow_id: str,
    quarantine: Mapping[str, Any],
    step: Step,
    positions: Mapping[str, Position],
    tools: ToolRegistry | None = None,
    outcome: ActionOutcome | None = None,
) -> Report:
    """The report of one escalated call (or one whose compensation failed for good)."""
    fate = _fate(step, outcome, tools)
    title = f"{step.tool} in workflow {workflow_id} needs a human: {_label(fate.reason)}"
    related = [step.intent_id]
    if step.result is not None and step.result.get("event_id"):
        related.append(step.result["event_id"])
    related += [quarantine["event_id"]] if quarantine.get("event_id") else []
    recommended = [fate.advice] if fate.advice else []
    recommended.append(_proof_advice())
    shown = _event_list([step.intent, step.result, quarantine], positions)
    lines = [title, "", _quarantine_line(workflow_id, quarantine), "", "The call:"]
    lines.append(f"  {_timeline_line(step.intent, step.result)}")
    lines += ["", "Undone:" if fate.bucket == "undone" else "Not undone, and why:"]
    lines.append(f"  - {fate.line}")
    lines += _section("Recommended actions:", recommended)
    lines += _positions_section(shown)
    data = {
        "kind": "call",
        "workflow_id": workflow_id,
        "title": title,
        "quarantine": _quarantine_json(quarantine),
        "call": _call_json(step, outcome, fate),
        "recommended": recommended,
        "positions": {eid: pos.to_json() if pos else None for eid, _kind, pos in shown},
        "proof_command": PROOF_COMMAND,
    }
    undone = [fate.line] if fate.bucket == "undone" else []
    not_undone = [fate.line] if fate.bucket == "not_undone" else []
    return Report(title, "\n".join(lines), data, undone, not_undone, recommended, related)


def plan_report(
    *,
    workflow_id: str,
    quarantine: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    steps: Sequence[Step],
    outcomes: Mapping[str, ActionOutcome],
    positions: Mapping[str, Position],
    tools: ToolRegistry | None = None,
) -> Report:
    """The whole story of one quarantine: what the agent did, what was undone and how, what
    was not and why, what a human should do, and where each event sits in the ledger."""
    index = {e.get("event_id"): i for i, e in reversed(list(enumerate(events)))}
    ordered = sorted(steps, key=lambda s: index.get(s.intent_id, len(events)))  # oldest first
    fates = [(s, _fate(s, outcomes.get(s.intent_id), tools)) for s in ordered]
    undone = [f.line for _s, f in fates if f.bucket == "undone"]
    not_undone = [f.line for _s, f in fates if f.bucket == "not_undone"]
    skipped = [f.line for _s, f in fates if f.bucket == "skipped"]
    recommended = list(dict.fromkeys(f.advice for _s, f in fates if f.advice))
    recommended.append(_proof_advice())
    verdict = (
        f"{len(not_undone)} call(s) need a human"
        if not_undone
        else "everything that could be undone was"
    )
    title = f"Workflow {workflow_id} quarantined: {len(undone)} call(s) undone, {verdict}"
    calls = _calls(events)
    in_plan = {s.intent_id: f for s, f in fates}
    lines = [title, "", _quarantine_line(workflow_id, quarantine)]
    release = _release(quarantine, events)
    if release is not None:
        when = rfc3339_micros(release["time"]) if release.get("time") is not None else "?"
        lines.append(
            f"It was released at {when} by {release.get('by') or 'someone'}: "
            f"{_quote(release.get('reason') or 'no reason given')} (event "
            f"{release.get('event_id')}); what was undone before stays undone."
        )
    lines.append("")
    lines.append(f"What the agent did, oldest first ({len(calls)} call(s)):")
    for i, (intent, result) in enumerate(calls, 1):
        lines.append(f"  {i}. {_timeline_line(intent, result)}")
        if intent["event_id"] not in in_plan:
            lines.append("     (outside the quarantine's scope)")
    lines += _section("Undone, and how:", undone, empty="nothing was undone")
    lines += _section("Not undone, and why:", not_undone, empty="nothing: every call is settled")
    if skipped:
        lines += _section("Nothing to undo:", skipped)
    lines += _section("Recommended actions:", recommended)
    shown = _event_list(_plan_events(quarantine, events, ordered, release), positions)
    lines += _positions_section(shown)
    related = [quarantine["event_id"]] if quarantine.get("event_id") else []
    for s, f in fates:
        if f.bucket == "not_undone":
            related.append(s.intent_id)
    data = {
        "kind": "plan",
        "workflow_id": workflow_id,
        "title": title,
        "quarantine": _quarantine_json(quarantine),
        "release": None
        if release is None
        else {k: release.get(k) for k in ("event_id", "time", "reason", "by")},
        "calls": [_timeline_json(i, r, i["event_id"] in in_plan) for i, r in calls],
        "steps": [_call_json(s, outcomes.get(s.intent_id), f) for s, f in fates],
        "recommended": recommended,
        "positions": {eid: pos.to_json() if pos else None for eid, _kind, pos in shown},
        "proof_command": PROOF_COMMAND,
        "counts": {
            "calls": len(calls),
            "undone": len(undone),
            "not_undone": len(not_undone),
            "nothing_to_undo": len(skipped),
        },
    }
    return Report(title, "\n".join(lines), data, undone, not_undone, recommended, related)


def _label(reason: str) -> str:
    return {
        "outcome_unknown": "outcome unknown, check before undoing",
        "irreversible": "it cannot be undone automatically",
        "no_compensation": "no compensating action declared",
        "unknown_compensation": "no handler for its compensating action",
        "undo_window": "past its undo window",
        "failed_for_good": "its compensating action failed for good",
        "cancelled": "released before it was undone",
        "in_progress": "its compensation is in progress",
    }.get(reason, reason.replace("_", " "))


def _proof_advice() -> str:
    return (
        "to prove what happened, ask the ledger for an inclusion proof of any event this "
        "report lists: "
        f"`{PROOF_COMMAND}`"
    )


def _release(
    quarantine: Mapping[str, Any], events: Sequence[Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    """The Release that lifted `quarantine`, if one is among the events after it."""
    seen = False
    for e in events:
        if e.get("event_id") == quarantine.get("event_id"):
            seen = True
        elif seen and e.get("type") == "Release":
            if e.get("quarantine_id") in (None, quarantine.get("event_id")):
                return e
        elif seen and e.get("type") == "Quarantine":
            return None  # a later quarantine took over; its Release is not ours
    return None


def _calls(
    events: Sequence[Mapping[str, Any]],
) -> list[tuple[Mapping[str, Any], Mapping[str, Any] | None]]:
    """Every tool call in partition order with its result (the one saying it took effect,
    when duplicates disagree)."""
    intents: dict[str, Mapping[str, Any]] = {}
    results: dict[str, Mapping[str, Any]] = {}
    for e in events:
        if e.get("type") == "ToolIntent":
            intents.setdefault(e["event_id"], e)
        elif e.get("type") == "ToolResult":
            old = results.get(e.get("intent_id", ""))
            if old is None or (e.get("status") == "ok" and old.get("status") != "ok"):
                results[e.get("intent_id", "")] = e
    return [(i, results.get(eid)) for eid, i in intents.items()]


def _plan_events(
    quarantine: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    steps: Sequence[Step],
    release: Mapping[str, Any] | None,
) -> list[Mapping[str, Any] | None]:
    """The events the report is about, in partition order: the quarantine (and its
    release), the plan's intents and results, and the compensator's events about them."""
    ids = {quarantine.get("event_id"), None if release is None else release.get("event_id")}
    ids.discard(None)
    for s in steps:
        ids.add(s.intent_id)
    chosen = []
    for e in events:
        kind = e.get("type")
        if (
            e.get("event_id") in ids
            or (kind == "ToolResult" and e.get("intent_id") in ids)
            or e.get("original_event_id") in ids
            or (kind == "Escalation" and ids.intersection(e.get("related_event_ids") or ()))
        ):
            chosen.append(e)
    if quarantine.get("event_id") not in {e.get("event_id") for e in chosen}:
        chosen.insert(0, quarantine)
    return chosen


def _event_list(
    events: Sequence[Mapping[str, Any] | None], positions: Mapping[str, Position]
) -> list[tuple[str, str, Position | None]]:
    """(event id, what it is, where it sits) of each event, in ledger order where known."""
    tools = {e["event_id"]: e["tool"] for e in events if e and e.get("type") == "ToolIntent"}
    out: dict[str, tuple[str, str, Position | None]] = {}
    for e in events:
        if e is None or not e.get("event_id"):
            continue
        kind = str(e.get("type") or "event")
        tool = e.get("tool") or tools.get(e.get("intent_id") or e.get("original_event_id") or "")
        what = f"{kind} {tool}" if tool else kind
        out.setdefault(e["event_id"], (e["event_id"], what, positions.get(e["event_id"])))
    unknown = (1 << 62, 0)
    return sorted(
        out.values(), key=lambda x: unknown if x[2] is None else (x[2].partition, x[2].offset)
    )


def _positions_section(shown: list[tuple[str, str, Position | None]]) -> list[str]:
    lines = ["", f"Where each event sits in the ledger (inclusion proof: `{PROOF_COMMAND}`):"]
    for event_id, what, pos in shown:
        where = pos.describe() if pos is not None else "position unknown"
        lines.append(f"  {event_id}  {what}: {where}")
    return lines


def _section(heading: str, items: Sequence[str], *, empty: str | None = None) -> list[str]:
    lines = ["", heading]
    if not items and empty is not None:
        return [*lines, f"  {empty}"]
    return [*lines, *(f"  - {item}" for item in items)]


def _quarantine_line(workflow_id: str, q: Mapping[str, Any]) -> str:
    when = rfc3339_micros(q["time"]) if q.get("time") is not None else "an unknown time"
    return (
        f"Workflow {workflow_id} was quarantined at {when} by {q.get('by') or 'someone'}: "
        f"{_quote(q.get('reason') or 'no reason given')} (event {q.get('event_id')}; "
        f"{Scope.of(q).describe()})."
    )


def _quarantine_json(q: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("event_id", "time", "scope", "run_id", "reason", "by", "alert_id")
    return {k: q.get(k) for k in keys}


def _timeline_line(intent: Mapping[str, Any], result: Mapping[str, Any] | None) -> str:
    when = rfc3339_micros(intent["time"]) if "time" in intent else "?"
    status = "no result recorded" if result is None else str(result.get("status"))
    said = ""
    if result is not None:
        summary = result.get("result_summary")
        error = ": ".join(x for x in (result.get("error_type"), result.get("error_message")) if x)
        said = f": {_quote(summary)}" if summary else (f": {_quote(error)}" if error else "")
    return f"{when} {intent.get('tool')} (run {intent.get('run_id')}): {status}{said}"


def _timeline_json(
    intent: Mapping[str, Any], result: Mapping[str, Any] | None, in_scope: bool
) -> dict[str, Any]:
    result = result or {}
    return {
        "intent_id": intent["event_id"],
        "result_id": result.get("event_id"),
        "tool": intent.get("tool"),
        "run_id": intent.get("run_id"),
        "time": intent.get("time"),
        "status": result.get("status"),
        "summary": result.get("result_summary"),
        "error": result.get("error_type"),
        "in_scope": in_scope,
    }


def _call_json(step: Step, outcome: ActionOutcome | None, fate: _Fate) -> dict[str, Any]:
    return {
        **step.to_json(),
        "time": step.intent.get("time"),
        "summary": (step.result or {}).get("result_summary"),
        "external_ids": dict((step.result or {}).get("external_ids") or {}),
        "fate": fate.bucket,
        "fate_reason": fate.reason,
        "line": fate.line,
        "advice": fate.advice,
        "outcome": None
        if outcome is None
        else {
            "state": outcome.state,
            "detail": outcome.detail,
            "attempts": outcome.attempts,
            "external_ids": dict(outcome.external_ids),
            "compensation": outcome.compensation,
        },
    }


def _ids(ids: Mapping[str, str]) -> str:
    if not ids:
        return ""
    return f" (obtained {', '.join(f'{k}={v}' for k, v in sorted(ids.items()))})"


def _quote(text: Any) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_QUOTE else text[: _MAX_QUOTE - 1] + "…"
