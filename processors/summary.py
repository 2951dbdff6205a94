"""Plain-language one-line summaries of events, for the audit topic and `wakeline tail`.

"agent billing-bot called stripe.charge for customer 123, USD 12.99: ok". A result names
its tool and arguments only through its intent, so callers pass what they remember of the
intent (`IntentMemo`); without it the summary says which intent it answers instead.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_MAX_VALUE = 40
_MAX_PAIRS = 3
_CUSTOMER_KEYS = ("customer", "customer_id", "customerId", "user", "user_id", "account_id")
_AMOUNT_KEYS = ("amount", "total", "price")


@dataclass(frozen=True)
class IntentMemo:
    """What a result's summary needs from its intent."""

    tool: str
    phrase: str  # "stripe.charge for customer 123, USD 12.99"
    #: what allowed the call (`authorized_by`), for the audit record of its result
    authorized_by: str | None = None


class IntentCache:
    """A bounded LRU of intent event id -> IntentMemo."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, IntentMemo] = OrderedDict()

    def put(self, event_id: str, memo: IntentMemo) -> None:
        items = self._items
        items[event_id] = memo
        if len(items) > self.size:
            items.popitem(last=False)

    def get(self, event_id: str) -> IntentMemo | None:
        return self._items.get(event_id)

    def __len__(self) -> int:
        return len(self._items)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 1] + "…"


def describe_args(args_json: str) -> str:
    """Say "for customer 123, USD 12.99" from canonical JSON arguments; "" if nothing fits."""
    try:
        args = json.loads(args_json) if args_json else {}
    except (ValueError, TypeError):
        return ""
    if not isinstance(args, Mapping) or not args:
        return ""
    parts: list[str] = []
    used: set[str] = set()
    for key in _CUSTOMER_KEYS:
        if key in args and not isinstance(args[key], (dict, list)):
            parts.append(f"customer {_short(args[key])}")
            used.add(key)
            break
    currency = args.get("currency")
    if isinstance(currency, str):
        if isinstance(args.get("amount_cents"), int):
            parts.append(f"{currency.upper()} {args['amount_cents'] / 100:.2f}")
            used.update(("amount_cents", "currency"))
        else:
            for key in _AMOUNT_KEYS:
                if isinstance(args.get(key), (int, float, str)):
                    parts.append(f"{currency.upper()} {_short(args[key])}")
                    used.update((key, "currency"))
                    break
    if not parts:
        for key, value in args.items():
            if len(parts) == _MAX_PAIRS:
                break
            if key not in used and not isinstance(value, (dict, list)):
                parts.append(f"{key}={_short(value)}")
    return ("for " if used else "with ") + ", ".join(parts) if parts else ""


def intent_memo(event: Mapping[str, Any]) -> IntentMemo:
    tool = str(event.get("tool", "?"))
    detail = describe_args(event.get("args") or "")
    return IntentMemo(tool, f"{tool} {detail}" if detail else tool, authorized_by(event))


def authorized_by(intent: Mapping[str, Any]) -> str | None:
    """What allowed an intent's call, as the audit record names it: `grant <id>`,
    `approval <id>` or `rule <name> of policy <version[:12]>`; None for a denied call and
    for one no policy engine decided (the SDK's allow-all default, older intents)."""
    if intent.get("policy_decision") == "deny":
        return None
    if intent.get("grant_id"):
        return f"grant {intent['grant_id']}"
    if intent.get("approval_id"):
        return f"approval {intent['approval_id']}"
    rule, version = intent.get("policy_rule"), intent.get("policy_version")
    if rule:
        return f"rule {rule} of policy {str(version or '?')[:12]}"
    return None


def _agent(event: Mapping[str, Any]) -> str:
    return f"agent {event.get('agent_id', '?')}"


def intent_summary(e: Mapping[str, Any], memo: IntentMemo) -> str:
    decision = e.get("policy_decision", "allow")
    tail = "" if decision == "allow" else f" (policy: {decision})"
    return f"{_agent(e)} is about to call {memo.phrase}{tail}"


def _intent(e: Mapping[str, Any], _: Callable[[str], IntentMemo | None]) -> str:
    return intent_summary(e, intent_memo(e))


def _result(e: Mapping[str, Any], lookup: Callable[[str], IntentMemo | None]) -> str:
    return result_summary(e, lookup(e.get("intent_id") or ""))


def result_summary(e: Mapping[str, Any], memo: IntentMemo | None) -> str:
    what = memo.phrase if memo else f"a tool (intent {e.get('intent_id')})"
    status = e.get("status", "?")
    verb = {"denied": "was denied", "aborted": "aborted"}.get(status, "called")
    line = f"{_agent(e)} {verb} {what}"
    if status == "error":
        err = ": ".join(x for x in (e.get("error_type"), e.get("error_message")) if x)
        return f"{line}: error" + (f" ({_short(err)})" if err else "")
    if status in ("denied", "aborted"):
        return line
    extra = f" ({_short(e['result_summary'])})" if e.get("result_summary") else ""
    return f"{line}: {status}{extra}"


def _simple(fmt: str) -> Callable[[Mapping[str, Any], Any], str]:
    def render(e: Mapping[str, Any], _: Any) -> str:
        return fmt.format_map(_Defaulting(e))

    return render


class _Defaulting(dict):  # type: ignore[type-arg]
    def __missing__(self, key: str) -> str:
        return "?"


_RENDERERS: dict[str, Callable[[Mapping[str, Any], Callable[[str], IntentMemo | None]], str]] = {
    "ToolIntent": _intent,
    "ToolResult": _result,
    "PolicyDecision": _simple("policy {decision} for agent {agent_id} calling {tool}"),
    "ApprovalRequested": _simple("agent {agent_id} asks approval to call {tool}"),
    "ApprovalGranted": _simple("{approver} approved request {request_id}"),
    "ApprovalDenied": _simple("{approver} denied request {request_id}"),
    "Alert": _simple("{severity} alert {kind} on workflow {workflow_id}: {detail}"),
    "Quarantine": _simple("workflow {workflow_id} quarantined ({scope}) by {by}: {reason}"),
    "Release": _simple("workflow {workflow_id} released by {by}: {reason}"),
    "CompensationStarted": _simple(
        "compensating event {original_event_id} with {compensation} (attempt {attempt})"
    ),
    "CompensationResult": _simple(
        "compensation {compensation} of event {original_event_id}: {status}"
    ),
    "Escalation": _simple("escalated to a human: {summary}"),
    "Checkpoint": _simple("ledger checkpoint signed by {agent_id}"),
    "WorkflowCompleted": _simple(
        "workflow {workflow_id} run {run_id} sealed after {event_count} events"
    ),
    "WorkflowSnapshot": _simple(
        "agent {agent_id} saved checkpoint {name} of workflow {workflow_id} run {run_id}"
    ),
    "Grant": _simple("{grantor} granted {agent} calls of {tool} (grant {grant_id})"),
    "GrantRevoked": _simple("{revoked_by} revoked grant {grant_id}"),
}


def summarize(
    event: Mapping[str, Any], lookup: Callable[[str], IntentMemo | None] = lambda _: None
) -> str:
    """One line saying what the event means."""
    render = _RENDERERS.get(str(event.get("type")))
    if render is None:
        return f"{_agent(event)} emitted {event.get('type', 'an event')}"
    return render(event, lookup)


def summarize_undecodable(partition: int, offset: int, reason: str) -> str:
    return f"undecodable record at partition {partition} offset {offset}: {_short(reason)}"
