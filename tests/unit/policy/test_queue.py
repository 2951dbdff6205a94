"""The queue's checks before a person signs (policy/queue.py), without services: what a
request must be for `approve` / `deny` to sign it, and what the signature then holds."""

from __future__ import annotations

import dataclasses

import pytest

from tests.approvalkit import POLICY_VERSION, Approvers, waiting_call
from wakeline.policy.approvals import Signed, members_of, statement_of_event, tally
from wakeline.policy.queue import QueueError, Request, check_decidable, mismatch, sign_decision
from wakeline.schemas import decode_event, encode_event

ALICE, BOB = "alice@example.com", "bob@example.com"
GROUP = Approvers.of(ALICE, BOB)


def stored(intent: dict, request: dict, **kw) -> Request:
    """The queue's row of `request`, as the processor writes it."""
    row = Request(
        request["event_id"], 0, 1, request["workflow_id"], request["run_id"],
        request["agent_id"], request["principal"], None, request["intent_id"],
        request["tool"], request["args"], request["reason"], request["intent_digest"],
        request["quorum"], request["approver_keys"], POLICY_VERSION, request["time"],
        request["expires_at"], encode_event(request), encode_event(intent), True, "pending",
        None, None,
    )  # fmt: skip
    return dataclasses.replace(row, **kw)


def decidable(row: Request | None, who: str = ALICE, decision: str = "approve") -> dict:
    rid = row.request_id if row else "nope"
    return check_decidable(row, rid, decision, who, row.requested_at_us if row else 0,
                           decode_event)  # fmt: skip


def test_a_request_about_its_intent_is_decidable_and_signs_what_the_sdk_counts() -> None:
    intent, request = waiting_call("wf-1", GROUP)
    assert mismatch(request, intent) is None
    event = decidable(stored(intent, request))
    signed = sign_decision(event, "approve", ALICE, GROUP.keys[ALICE], now_us=request["time"])
    back = decode_event(encode_event(signed))
    st = statement_of_event(back)
    assert st is not None and st.expires_at_us == request["expires_at"]
    t = tally([Signed(st, back["signature"], back["public_key"])], request_id=request["event_id"],
              binding=request["intent_digest"], members=members_of(request["approver_keys"]),
              quorum=1, now_us=request["time"])  # fmt: skip
    assert t.approved
    no = sign_decision(event, "deny", BOB, GROUP.keys[BOB], now_us=1, comment="no")
    assert no["type"] == "ApprovalDenied" and no["reason"] == "no"


@pytest.mark.parametrize(
    "change, why",
    [
        ({"tool": "payments.refund"}, "it shows tool"),
        ({"run_id": "other"}, "it shows run_id"),
        ({"args": '{"amount":1}'}, "arguments it shows"),
        ({"intent_digest": bytes(32)}, "its binding is not"),
        ({"policy_version": "cd" * 32}, "its binding is not"),
        ({"intent_id": "someone-else"}, "it names intent"),
    ],
)
def test_a_request_that_is_not_about_its_intent_is_refused(change: dict, why: str) -> None:
    intent, request = waiting_call("wf-1", GROUP)
    forged = dict(request, **change)
    assert why in (mismatch(forged, intent) or "")
    with pytest.raises(QueueError, match="refusing to sign a forged request"):
        decidable(stored(intent, forged))


def test_an_intent_decided_by_another_policy_version_is_not_the_requests() -> None:
    intent, request = waiting_call("wf-1", GROUP)
    assert mismatch(request, dict(intent, policy_version=POLICY_VERSION)) is None
    why = mismatch(request, dict(intent, policy_version="cd" * 32))
    assert why is not None and "decided by policy" in why


def test_closed_expired_denied_unknown_and_outsiders_are_refused() -> None:
    intent, request = waiting_call("wf-1", GROUP)
    row = stored(intent, request)
    cases = [
        (None, ALICE, "approve", "no approval request"),
        (dataclasses.replace(row, state="closed", result_status="ok"), ALICE, "approve",
         "is closed"),
        (dataclasses.replace(row, expires_at_us=row.requested_at_us), ALICE, "deny", "expired"),
        (dataclasses.replace(row, state="denied"), ALICE, "approve", "denied already"),
        (row, "eve@example.com", "approve", "not in the approver group"),
        (dataclasses.replace(row, intent=None), ALICE, "approve", "cannot be checked"),
    ]  # fmt: skip
    for r, who, decision, why in cases:
        with pytest.raises(QueueError, match=why):
            decidable(r, who, decision)
    decidable(dataclasses.replace(row, state="denied"), BOB, "deny")  # a second denial is fine


def test_only_the_key_the_group_lists_signs() -> None:
    intent, request = waiting_call("wf-1", GROUP)
    event = decidable(stored(intent, request))
    with pytest.raises(QueueError, match="is not the one the policy lists"):
        sign_decision(event, "approve", ALICE, GROUP.keys[BOB], now_us=1)
    with pytest.raises(QueueError, match="is not the one the policy lists"):
        sign_decision(event, "approve", ALICE, Approvers.of(ALICE).keys[ALICE], now_us=1)
