"""The approval queue in PostgreSQL (tables of infra/migrations/0008_approvals.sql).

One writer, the approvals processor (processors/approvals.py), records from the events topic
what a person deciding needs: the ToolIntents that wait (`record_intent`), each
ApprovalRequested with its intent (`record_request`), every ApprovalGranted / ApprovalDenied
as received with whether it counts (`record_decision`), and the ToolResult that closes a
request (`close`). Every write is keyed by an event id and ignores a row already there, so
re-reading the topic after a restart changes nothing. Readers (`wakeline approvals`) use
`list_requests`, `get_request` and `decisions_of`; `Request.tally` says where one stands now.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg.types.json import Jsonb

from wakeline.errors import WakelineError
from wakeline.policy.approvals import (
    ApprovalError,
    Signed,
    Statement,
    Tally,
    binding_of_intent,
    decision_event,
    members_of,
    parse_public_key,
    public_bytes,
    public_key_text,
    statement_of_event,
    tally,
    why_not,
)
from wakeline.schemas import new_event_id

#: the states a request is stored in
STATES = ("pending", "approved", "denied", "closed")


def pg_text(value: object, limit: int = 100_000) -> str | None:
    """`value` as text PostgreSQL accepts (NUL replaced, bounded); None stays None."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    text = text.replace("\x00", "\ufffd")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.encode("utf-8", "replace").decode("utf-8")


@dataclass(frozen=True)
class Decision:
    """One signed decision as stored."""

    event_id: str
    request_id: str
    decision: str
    approver: str
    time_us: int
    expires_at_us: int | None
    binding: bytes | None
    signature: bytes | None
    public_key: bytes | None
    comment: str | None
    timed_out: bool
    counts: bool
    why: str | None

    def signed(self) -> Signed | None:
        """The decision as `tally` reads it; None when it cannot be a statement (no binding
        of 32 bytes)."""
        try:
            st = Statement(
                self.decision,  # type: ignore[arg-type]
                self.request_id,
                bytes(self.binding or b""),
                self.approver,
                int(self.expires_at_us or 0),
            )
        except ApprovalError:
            return None
        return Signed(st, self.signature, self.public_key)

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "decision": self.decision,
            "approver": self.approver,
            "time_us": self.time_us,
            "expires_at_us": self.expires_at_us,
            "comment": self.comment,
            "timed_out": self.timed_out,
            "counts_when_received": self.counts,
            "why_not": self.why,
        }


@dataclass(frozen=True)
class Request:
    """One ApprovalRequested as stored, with its intent's frame and how it was closed."""

    request_id: str
    partition: int
    offset: int
    workflow_id: str
    run_id: str
    agent_id: str
    principal: str
    tenant: str | None
    intent_id: str | None
    tool: str
    args: str | None
    reason: str | None
    binding: bytes
    quorum: int
    approver_keys: dict[str, str]
    policy_version: str | None
    requested_at_us: int
    expires_at_us: int
    value: bytes
    intent: bytes | None
    bound: bool
    state: str
    result_id: str | None
    result_status: str | None

    def shown_state(self, now_us: int) -> str:
        """The state, with a pending request past its expiry shown as expired."""
        if self.state == "pending" and self.expires_at_us <= now_us:
            return "expired"
        return self.state

    def tally(self, decisions: Iterable[Decision], now_us: int) -> Tally:
        signed = [s for s in (d.signed() for d in decisions if not d.timed_out) if s]
        return tally(
            signed,
            request_id=self.request_id,
            binding=self.binding,
            members=members_of(self.approver_keys),
            quorum=self.quorum,
            now_us=now_us,
        )

    def to_json(self, now_us: int) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "state": self.shown_state(now_us),
            "workflow_id": self.workflow_id,
            "run_id": self.run_id,
            "agent_id": self.agent_id,
            "principal": self.principal,
            "tenant": self.tenant,
            "intent_id": self.intent_id,
            "tool": self.tool,
            "args": self.args,
            "reason": self.reason,
            "quorum": self.quorum,
            "approvers": sorted(self.approver_keys),
            "policy_version": self.policy_version,
            "requested_at_us": self.requested_at_us,
            "expires_at_us": self.expires_at_us,
            "binding": self.binding.hex(),
            "bound_to_intent": self.bound,
            "result_id": self.result_id,
            "result_status": self.result_status,
        }


_REQUEST_COLUMNS = (
    'request_id, partition, "offset", workflow_id, run_id, agent_id, principal, tenant, '
    "intent_id, tool, args, reason, binding, quorum, approver_keys, policy_version, "
    "requested_at, expires_at, value, intent, bound, state, result_id, result_status"
)
_DECISION_COLUMNS = (
    "event_id, request_id, decision, approver, time, expires_at, binding, signature, "
    "public_key, comment, timed_out, counts, why"
)


def _request(row: Sequence[Any]) -> Request:
    r = list(row)
    for i in (12, 18, 19):  # bytea columns
        if r[i] is not None:
            r[i] = bytes(r[i])
    keys = r[14] if isinstance(r[14], dict) else json.loads(r[14] or "{}")
    r[14] = {str(k): str(v) for k, v in keys.items()}
    return Request(*r)


def _decision(row: Sequence[Any]) -> Decision:
    r = list(row)
    for i in (6, 7, 8):
        if r[i] is not None:
            r[i] = bytes(r[i])
    return Decision(*r)


# -- writing (the processor) ---------------------------------------------------------------
def record_intent(
    cur: Any, intent: Mapping[str, Any], partition: int, offset: int, value: bytes
) -> None:
    cur.execute(
        "INSERT INTO approval_intents (intent_id, approval_id, partition, \"offset\", value)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (intent_id) DO NOTHING",
        (pg_text(intent["event_id"]), pg_text(intent.get("approval_id")), partition, offset,
         value),
    )  # fmt: skip


def record_request(
    cur: Any, request: Mapping[str, Any], partition: int, offset: int, value: bytes,
    workflow_key: bytes, decode: Any,
) -> bool:  # fmt: skip
    """Store an ApprovalRequested with the frame of its intent (an earlier ToolIntent of the
    same partition whose id it names); True when it was new. `bound` says whether the
    request's binding is the binding of that intent."""
    intent_value = None
    bound = False
    intent_id = request.get("intent_id")
    if intent_id:
        cur.execute(
            "SELECT value, partition FROM approval_intents WHERE intent_id = %s", (intent_id,)
        )
        row = cur.fetchone()
        if row is not None and row[1] == partition:
            intent_value = bytes(row[0])
            try:
                intent = decode(intent_value)
                bound = mismatch(request, intent) is None
            except Exception:  # noqa: BLE001 - an intent we cannot read binds nothing
                bound = False
    keys = {str(k): str(v) for k, v in (request.get("approver_keys") or {}).items()}
    cur.execute(
        f"INSERT INTO approval_requests ({_REQUEST_COLUMNS}, workflow_key) VALUES "
        "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
        " 'pending', NULL, NULL, %s) ON CONFLICT (request_id) DO NOTHING",
        (
            pg_text(request["event_id"]), partition, offset, pg_text(request["workflow_id"]),
            pg_text(request["run_id"]), pg_text(request["agent_id"]),
            pg_text(request["principal"]), pg_text(request.get("tenant")), pg_text(intent_id),
            pg_text(request["tool"]), pg_text(request.get("args")),
            pg_text(request.get("reason")), bytes(request["intent_digest"]),
            int(request.get("quorum") or 1), Jsonb(keys), pg_text(request.get("policy_version")),
            int(request["time"]), int(request["expires_at"]), value, intent_value, bound,
            workflow_key,
        ),
    )  # fmt: skip
    return bool(cur.rowcount)


def record_decision(
    cur: Any, event: Mapping[str, Any], partition: int, offset: int
) -> Decision | None:
    """Store an ApprovalGranted / ApprovalDenied as received, judged against its request
    (with the event's own time as now); then settle the request's state. None: already
    stored (a redelivery)."""
    request = get_request(cur, event["request_id"])
    timed_out = bool(event.get("timed_out"))
    st = statement_of_event(event)
    if request is None:
        why: str | None = "no such request before it"
    elif timed_out:  # the SDK's own, unsigned: it can only deny, and only once expired
        if event.get("intent_digest") != request.binding:
            why = "bound to another call"
        elif int(event["time"]) < request.expires_at_us:
            why = "a timeout written before the request expired"
        else:
            why = None
    elif st is None:
        why = "its binding is not 32 bytes"
    else:
        why = why_not(
            Signed(st, event.get("signature"), event.get("public_key")),
            request_id=request.request_id,
            binding=request.binding,
            members=members_of(request.approver_keys),
            now_us=int(event["time"]),
        )
    kind = "approve" if event["type"] == "ApprovalGranted" else "deny"
    comment = event.get("comment") if kind == "approve" else event.get("reason")
    cur.execute(
        f"INSERT INTO approval_decisions ({_DECISION_COLUMNS}, partition, \"offset\") VALUES"
        " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (event_id) DO NOTHING",
        (
            pg_text(event["event_id"]), pg_text(event["request_id"]), kind,
            pg_text(event["approver"]), int(event["time"]), event.get("expires_at"),
            event.get("intent_digest"), event.get("signature"), event.get("public_key"),
            pg_text(comment), timed_out, why is None, why, partition, offset,
        ),
    )  # fmt: skip
    if not cur.rowcount:
        return None
    if request is not None:
        settle(cur, request, int(event["time"]))
    return Decision(
        event["event_id"], event["request_id"], kind, event["approver"], int(event["time"]),
        event.get("expires_at"), event.get("intent_digest"), event.get("signature"),
        event.get("public_key"), comment, timed_out, why is None, why,
    )  # fmt: skip


def settle(cur: Any, request: Request, now_us: int) -> str:
    """Set an open request's state from its decisions: denied (a valid denial or the SDK's
    timeout), approved (a quorum), else pending. A closed request stays closed."""
    if request.state == "closed":
        return "closed"
    decisions = decisions_of(cur, request.request_id)
    t = request.tally(decisions, now_us)
    timed_out = any(d.timed_out and d.counts for d in decisions)
    state = "denied" if t.denied or timed_out else "approved" if t.approved else "pending"
    cur.execute(
        "UPDATE approval_requests SET state = %s WHERE request_id = %s AND state <> 'closed'",
        (state, request.request_id),
    )
    return state


def close(cur: Any, results: Sequence[tuple[str, str, str, int]]) -> int:
    """Close the requests of these calls: (intent id, result event id, status, time)."""
    if not results:
        return 0
    cur.execute(
        "UPDATE approval_requests AS r SET state = 'closed', result_id = x.result_id,"
        " result_status = x.status, closed_at = x.time"
        " FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[])"
        " AS x(intent_id, result_id, status, time)"
        " WHERE r.intent_id = x.intent_id AND r.result_id IS NULL",
        (
            [pg_text(r[0]) for r in results], [pg_text(r[1]) for r in results],
            [pg_text(r[2]) for r in results], [int(r[3]) for r in results],
        ),
    )  # fmt: skip
    return int(cur.rowcount)


# -- reading -------------------------------------------------------------------------------
def get_request(cur: Any, request_id: str) -> Request | None:
    cur.execute(
        f"SELECT {_REQUEST_COLUMNS} FROM approval_requests WHERE request_id = %s",
        (request_id,),
    )
    row = cur.fetchone()
    return _request(row) if row is not None else None


def decisions_of(cur: Any, request_id: str) -> list[Decision]:
    cur.execute(
        f"SELECT {_DECISION_COLUMNS} FROM approval_decisions WHERE request_id = %s"
        " ORDER BY time, event_id",
        (request_id,),
    )
    return [_decision(r) for r in cur.fetchall()]


def list_requests(cur: Any, *, every: bool = False, now_us: int) -> list[Request]:
    """Open requests (pending or approved, not expired, no result), oldest first; with
    `every`, all of them."""
    where = "" if every else " WHERE state IN ('pending', 'approved') AND expires_at > %s"
    cur.execute(
        f"SELECT {_REQUEST_COLUMNS} FROM approval_requests{where} ORDER BY requested_at,"
        " request_id",
        () if every else (now_us,),
    )
    return [_request(r) for r in cur.fetchall()]


# -- deciding (the approvals CLI) ----------------------------------------------------------
class QueueError(WakelineError):
    """A request that cannot be decided on (unknown, closed, expired, forged) or a key that
    cannot sign it; the message says which."""


def check_decidable(
    request: Request | None, request_id: str, decision: str, approver: str, now_us: int,
    decode: Callable[[bytes], dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    """The decoded ApprovalRequested to sign a decision about, once every check passed:
    the request is known, open (no result), not expired, not denied (to approve), `approver`
    is in its group, and its binding is the binding of its intent (the stored intent frame:
    `binding_of_intent(intent, policy_version)`), so a forged request is never signed."""
    if request is None:
        raise QueueError(f"no approval request {request_id!r} (`wakeline approvals list --all`)")
    rid = request.request_id
    if request.state == "closed":
        raise QueueError(f"request {rid} is closed: its call already has a result "
                         f"({request.result_status}, event {request.result_id})")  # fmt: skip
    if request.expires_at_us <= now_us:
        raise QueueError(f"request {rid} expired at {_when(request.expires_at_us)}: the call "
                         "was denied (fail closed); it can no longer be decided")  # fmt: skip
    if request.state == "denied" and decision == "approve":
        raise QueueError(f"request {rid} is denied already: an approval cannot undo a denial")
    if approver not in request.approver_keys:
        group = ", ".join(sorted(request.approver_keys)) or "empty"
        raise QueueError(f"{approver} is not in the approver group of request {rid} (it is: "
                         f"{group})")  # fmt: skip
    if request.intent is None:
        raise QueueError(f"request {rid} names intent {request.intent_id}, which is not on its "
                         "workflow's partition before it: refusing to sign a request whose call "
                         "cannot be checked")  # fmt: skip
    try:
        event = decode(request.value)
        intent = decode(request.intent)
    except Exception as e:  # noqa: BLE001 - anything unreadable is refused, with why
        raise QueueError(f"request {rid} or its intent does not decode: {e}") from e
    wrong = mismatch(event, intent)
    if wrong is None and not (
        bytes(event["intent_digest"]) == request.binding
        and event["event_id"] == rid
        and intent["event_id"] == request.intent_id
    ):
        wrong = "the queue's copy differs from the request's frame"
    if wrong is not None:
        raise QueueError(f"request {rid} does not match its intent {request.intent_id}: "
                         f"{wrong}; refusing to sign a forged request")  # fmt: skip
    return event


#: what a request shows the approver, which must be what its intent says
_SHOWN = ("tool", "workflow_id", "run_id", "agent_id", "principal")


def mismatch(request: Mapping[str, Any], intent: Mapping[str, Any]) -> str | None:
    """Why the decoded ApprovalRequested `request` is not about the decoded ToolIntent
    `intent` (None: it is): it must name the intent, the intent must name it (or nothing),
    its binding must be `binding_of_intent(intent, request's policy_version)`, and what it
    shows a person (tool, arguments, workflow, run, agent, principal) must be the intent's,
    so nobody approves one call while reading about another."""
    if request.get("intent_id") != intent.get("event_id"):
        return f"it names intent {request.get('intent_id')}"
    if intent.get("approval_id") not in (None, request.get("event_id")):
        return f"the intent names another request ({intent.get('approval_id')})"
    if intent.get("policy_version") not in (None, request.get("policy_version")):
        return f"the intent was decided by policy {intent.get('policy_version')}"
    try:
        bound = binding_of_intent(intent, request.get("policy_version"))
    except (KeyError, TypeError, ValueError) as e:
        return f"the intent's binding cannot be computed: {e}"
    if bytes(request.get("intent_digest") or b"") != bound:
        return "its binding is not the binding of its intent"
    for name in _SHOWN:
        if request.get(name) != intent.get(name):
            return f"it shows {name} {request.get(name)!r}, the intent has {intent.get(name)!r}"
    if request.get("args") is not None and request.get("args") != intent.get("args"):
        return "the arguments it shows are not the intent's"
    return None


def sign_decision(
    event: Mapping[str, Any], decision: str, approver: str, key: Ed25519PrivateKey, *,
    now_us: int, comment: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The ApprovalGranted / ApprovalDenied of `approver` about the decoded request `event`,
    signed with `key`, which must be the key the request's group lists for them. An approval
    is valid until the request expires; a denial never lapses."""
    listed = (event.get("approver_keys") or {}).get(approver)
    try:
        want = parse_public_key(listed) if listed is not None else None
    except ApprovalError as e:
        raise QueueError(f"the group lists an unreadable key for {approver}: {e}") from e
    if want != public_bytes(key):
        raise QueueError(f"this key ({public_key_text(key)}) is not the one the policy lists "
                         f"for {approver} ({listed})")  # fmt: skip
    expires = int(event["expires_at"]) if decision == "approve" else 0
    st = Statement(decision, event["event_id"], bytes(event["intent_digest"]), approver, expires)  # type: ignore[arg-type]
    return decision_event(event, st, st.sign(key), public_bytes(key), event_id=new_event_id(),
                          time_us=now_us, comment=comment)  # fmt: skip


def _when(us: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
