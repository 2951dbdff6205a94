"""One valid sample event per type, shared by the schema tests (as fixtures)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from wakeline.schemas import EVENT_TYPES, new_event_id

T0 = 1_795_851_564_123_456  # 2026-11-28T07:39:24.123456Z


def envelope(type_name: str, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": new_event_id(),
        "type": type_name,
        "time": T0,
        "source": "wakeline-sdk/test",
        "workflow_id": "wf-7",
        "run_id": "run-1",
        "step_id": "step-3",
        "agent_id": "billing-bot",
        "tenant": "acme",
        "boundary": "prod",
        "parent_event_ids": [new_event_id()],
        "correlation_id": "req-42",
        "principal": "user:alice@example.com",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7",
    }
    event.update(overrides)
    return event


PAYLOADS: dict[str, dict[str, Any]] = {
    "ToolIntent": {
        "tool": "stripe.charge",
        "args": '{"amount":1299,"currency":"USD","customer":"cus_123"}',
        "args_digest": bytes(range(32)),
        "resources_read": ["stripe:customer/cus_123"],
        "resources_written": ["stripe:charges/cus_123"],
        "reversibility": "compensable",
        "impact": "high",
        "compensation": "stripe.refund",
        "policy_decision": "allow",
        "policy_reason": "rule billing.small-charges",
        "durability": "strict",
        "redacted_fields": ["card.number"],
        "approval_id": None,
        "undo_window_us": None,
        "volatile_fields": ["request_id"],
        "expected_version": "7",
        "policy_rule": "small-charges",
        "policy_version": "9f" * 32,
        "policy_shadow": ["gbp-block=deny"],
        "grant_id": None,
    },
    "ToolResult": {
        "intent_id": "01939b6e-0000-7000-8000-000000000001",
        "status": "ok",
        "result_digest": b"\xaa" * 32,
        "result_summary": "charged USD 12.99",
        "error_type": None,
        "error_message": None,
        "external_ids": {"charge_id": "ch_1", "idempotency": "k-1"},
        "duration_us": 83_211,
    },
    "PolicyDecision": {
        "intent_id": None,
        "tool": "fs.delete",
        "args_digest": b"\x01" * 32,
        "decision": "require_approval",
        "reason": "destructive tool",
        "policy_id": "policy.toml#destructive",
        "policy_digest": b"\x02" * 32,
    },
    "ApprovalRequested": {
        "intent_id": "01939b6e-0000-7000-8000-000000000002",
        "intent_digest": b"\x03" * 32,
        "tool": "fs.delete",
        "args": '{"path":"/data"}',
        "reason": "destructive tool",
        "approvers": ["group:sre"],
        "expires_at": T0 + 900_000_000,
        "quorum": 2,
        "approver_keys": {"alice@example.com": "ed25519:" + "B" * 43 + "="},
        "policy_version": "ab" * 32,
    },
    "ApprovalGranted": {
        "request_id": "01939b6e-0000-7000-8000-000000000003",
        "intent_digest": b"\x03" * 32,
        "approver": "user:bob@example.com",
        "expires_at": T0 + 300_000_000,
        "comment": "ok once",
        "signature": b"\x09" * 64,
        "public_key": b"\x07" * 32,
    },
    "ApprovalDenied": {
        "request_id": "01939b6e-0000-7000-8000-000000000003",
        "intent_digest": b"\x03" * 32,
        "approver": "wakeline-approvals",
        "reason": "no answer within 15 minutes",
        "timed_out": True,
        "signature": None,
        "public_key": None,
    },
    "Alert": {
        "kind": "runaway_loop",
        "severity": "critical",
        "detail": "search.query called 50 times in 10 s with the same arguments",
        "detector": "loop.identical-calls",
        "resource": None,
        "related_event_ids": ["01939b6e-0000-7000-8000-000000000004"],
        "attributes": {"count": "50", "window_s": "10"},
    },
    "Quarantine": {
        "scope": "tainted",
        "reason": "runaway loop",
        "by": "detector:loop",
        "alert_id": "01939b6e-0000-7000-8000-000000000005",
        "tainted_event_ids": ["01939b6e-0000-7000-8000-000000000006"],
        "target": None,
        "since": None,
        "origin_id": "01939b6e-0000-7000-8000-000000000008",
        "after_event_id": None,
    },
    "Release": {
        "reason": "false positive",
        "by": "user:carol@example.com",
        "quarantine_id": "01939b6e-0000-7000-8000-000000000007",
    },
    "CompensationStarted": {
        "original_event_id": "01939b6e-0000-7000-8000-000000000008",
        "compensation": "stripe.refund",
        "idempotency_key": "comp-01939b6e-0000-7000-8000-000000000008",
        "attempt": 2,
        "quarantine_id": "01939b6e-0000-7000-8000-000000000007",
    },
    "CompensationResult": {
        "original_event_id": "01939b6e-0000-7000-8000-000000000008",
        "compensation": "stripe.refund",
        "idempotency_key": "comp-01939b6e-0000-7000-8000-000000000008",
        "attempt": 2,
        "status": "failed",
        "error_type": "StripeTimeout",
        "error_message": "read timed out",
        "final": True,
        "duration_us": 5_000_000,
        "external_ids": {},
    },
    "Escalation": {
        "summary": "billing-bot charged cus_123 USD 12.99; the refund failed 5 times",
        "undone": ["deleted draft invoice inv_9"],
        "not_undone": ["charge ch_1 of USD 12.99"],
        "recommended_actions": ["refund ch_1 by hand in the Stripe dashboard"],
        "related_event_ids": ["01939b6e-0000-7000-8000-000000000008"],
        "quarantine_id": "01939b6e-0000-7000-8000-000000000007",
        "task_id": "TASK-17",
    },
    "Checkpoint": {
        "note": "wakeline.dev/ledger\n3\nQUJD\n\n\u2014 wakeline-1 AAAA\n",
    },
    "WorkflowCompleted": {
        "event_count": 12,
        "last_event_id": "01939b6e-0000-7000-8000-000000000009",
        "outcome": "succeeded",
    },
    "WorkflowSnapshot": {
        "name": "after-lookup",
        "state": '{"customer":"cus_123","step":2,"token":"[REDACTED]"}',
        "state_digest": b"\x5b" * 32,
        "redacted_fields": ["token"],
    },
    "Grant": {
        "grant_id": "01939b6e-0000-7000-8000-00000000000a",
        "grantor": "alice@example.com",
        "agent": "billing-*",
        "tool": "stripe.refund",
        "limits": ["amount <= 500", 'currency in ["USD","EUR"]'],
        "expires_at": T0 + 86_400_000_000,
        "reason": "refunds under 500 for the quarter",
        "signature": b"\x0a" * 64,
        "public_key": b"\x0b" * 32,
    },
    "GrantRevoked": {
        "grant_id": "01939b6e-0000-7000-8000-00000000000a",
        "revoked_by": "bob@example.com",
        "reason": "quarter closed",
        "signature": b"\x0c" * 64,
        "public_key": b"\x0d" * 32,
    },
}

assert set(PAYLOADS) == set(EVENT_TYPES)


def sample(type_name: str, **overrides: Any) -> dict[str, Any]:
    """A complete event (every field present) of the given type."""
    event = envelope(type_name)
    event.update(PAYLOADS[type_name])
    event.update(overrides)
    return event


@pytest.fixture
def make_event() -> Callable[..., dict[str, Any]]:
    """sample(type_name, **overrides): a complete event of that type."""
    return sample


@pytest.fixture
def make_envelope() -> Callable[..., dict[str, Any]]:
    """envelope(type_name, **overrides): only the envelope of an event."""
    return envelope
