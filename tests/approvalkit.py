"""Approval traffic as the SDK writes it, for the queue, CLI and verifier tests: a ToolIntent
whose decision is require_approval (its `approval_id` names the request), then its
ApprovalRequested on the same workflow (binding = `binding_of_intent`), then signed
decisions (`sign_decision`, or `signed` by a member of an `Approvers` group) and the call's
ToolResult. For the integration tests: `produce`
them as the SDK does, and read the queue back (`queued_request`, `queued_decisions`)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wakeline.policy.approvals import (
    Statement,
    binding_of_intent,
    decision_event,
    generate_key,
    public_bytes,
    public_key_text,
)
from wakeline.schemas import new_event_id

POLICY_VERSION = "ab" * 32


def now_us() -> int:
    return time.time_ns() // 1000


def _envelope(workflow: str, type_name: str, at: int) -> dict[str, Any]:
    return {
        "event_id": new_event_id(),
        "type": type_name,
        "time": at,
        "source": "wakeline-sdk/billing-bot",
        "workflow_id": workflow,
        "run_id": f"{workflow}-r1",
        "agent_id": "billing-bot",
        "principal": "agent-owner@example.com",
    }


@dataclass
class Approvers:
    """A group of approvers with their private keys."""

    keys: dict[str, Ed25519PrivateKey] = field(default_factory=dict)

    @classmethod
    def of(cls, *names: str) -> Approvers:
        return cls({n: generate_key() for n in names})

    def texts(self) -> dict[str, str]:
        return {n: public_key_text(k) for n, k in self.keys.items()}


def waiting_call(
    workflow: str,
    approvers: Approvers,
    *,
    quorum: int = 1,
    amount: int = 900,
    timeout_s: float = 300,
    at: int | None = None,
    grant_id: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ToolIntent, ApprovalRequested) of one call that waits for approval."""
    at = now_us() if at is None else at
    args = json.dumps({"amount": amount, "currency": "USD", "to": "acct_9"}, sort_keys=True,
                      separators=(",", ":"))  # fmt: skip
    intent = {
        **_envelope(workflow, "ToolIntent", at),
        "tool": "payments.transfer",
        "args": args,
        "args_digest": hashlib.sha256(args.encode()).digest(),
        "reversibility": "irreversible",
        "impact": "high",
        "policy_decision": "require_approval",
        "policy_reason": "transfers over 500 need a person",
        "durability": "strict",
    }
    request = {
        **_envelope(workflow, "ApprovalRequested", at + 1),
        "parent_event_ids": [intent["event_id"]],
        "intent_id": intent["event_id"],
        "tool": intent["tool"],
        "args": args,
        "reason": "transfers over 500 need a person",
        "approvers": sorted(approvers.keys),
        "expires_at": at + int(timeout_s * 1_000_000),
        "quorum": quorum,
        "approver_keys": approvers.texts(),
        "policy_version": POLICY_VERSION,
    }
    intent["approval_id"] = request["event_id"]
    if grant_id is not None:
        intent["grant_id"] = grant_id
    request["intent_digest"] = binding_of_intent(intent, POLICY_VERSION)
    return intent, request


def sign_decision(
    request: dict[str, Any],
    who: str,
    key: Ed25519PrivateKey,
    decision: str = "approve",
    *,
    expires_at: int,
    binding: bytes | None = None,
    public_key: bytes | None = None,
    at: int | None = None,
    comment: str | None = None,
) -> dict[str, Any]:
    """An ApprovalGranted / ApprovalDenied of `who` over `request` (a decoded
    ApprovalRequested), signed with `key`, as the CLI makes it: a deny never expires; the
    binding is the request's unless given, the public key `key`'s unless given."""
    exp = 0 if decision == "deny" else expires_at
    bound = request["intent_digest"] if binding is None else binding
    st = Statement(decision, request["event_id"], bound, who, exp)  # type: ignore[arg-type]
    return decision_event(
        request, st, st.sign(key), public_bytes(key) if public_key is None else public_key,
        event_id=new_event_id(), time_us=now_us() if at is None else at, comment=comment,
    )  # fmt: skip


def signed(
    request: dict[str, Any],
    approvers: Approvers,
    who: str,
    decision: str = "approve",
    *,
    at: int | None = None,
    key: Ed25519PrivateKey | None = None,
    binding: bytes | None = None,
    expires_at: int | None = None,
) -> dict[str, Any]:
    """`who`'s decision with their key in `approvers` (or `key`), valid as long as the request."""
    return sign_decision(
        request, who, key or approvers.keys[who], decision, binding=binding, at=at,
        expires_at=request["expires_at"] if expires_at is None else expires_at,
        comment="looks right",
    )  # fmt: skip


def result_of(
    intent: dict[str, Any], status: str = "ok", *, at: int | None = None
) -> dict[str, Any]:
    e = _envelope(intent["workflow_id"], "ToolResult", now_us() if at is None else at)
    return {**e, "parent_event_ids": [intent["event_id"]], "intent_id": intent["event_id"],
            "status": status, "duration_us": 10}  # fmt: skip


# -- against the real stack ----------------------------------------------------------------
def produce(kafka: Any, events: list[dict[str, Any]], *, raw: list[tuple] = ()) -> None:
    """Produce `events` onto the events topic keyed by workflow, with CloudEvents headers;
    `raw` (key, value) records as they are."""
    from confluent_kafka import Producer

    from wakeline.testkit.samples import frames

    p = Producer(kafka.client_config())
    for e in events:
        key, value, headers = frames(e)
        p.produce(kafka.topics.events, value, key, headers=headers)
    for key, value in raw:
        p.produce(kafka.topics.events, value, key)
    assert p.flush(15) == 0


def queued_request(dsn: str, request_id: str) -> Any:
    from wakeline.infra import db
    from wakeline.policy import queue

    with db.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        return queue.get_request(cur, request_id)


def queued_decisions(dsn: str, request_id: str) -> list[Any]:
    from wakeline.infra import db
    from wakeline.policy import queue

    with db.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        return queue.decisions_of(cur, request_id)
