"""ledger-verify's approval checks (docs/ledger-format.md §9) on built segments: each forged
case has its check and verdict; what the SDK and the CLI write honestly is sound."""

from __future__ import annotations

import io

import pytest

from tests.approvalkit import Approvers, result_of, signed, waiting_call
from wakeline.ledger.sources import verify_bundle

from .ledgerkit import build_ledger

ALICE, BOB = "alice@example.com", "bob@example.com"
GROUP = Approvers.of(ALICE, BOB)
T0 = 1_780_000_000_000_000


def verify(events: list[dict]):
    led = build_ledger(events, partitions=1)
    return verify_bundle(io.BytesIO(led.bundle()), trusted_keys=[led.vkey])


def first(events: list[dict]) -> tuple[str, str | None]:
    r = verify(events)
    return r.verdict, r.first.check if r.first else None


def call(quorum: int = 2, **kw):
    return waiting_call("wf-1", GROUP, quorum=quorum, at=T0, **kw)


def ok(intent: dict, status: str = "ok") -> dict:
    return result_of(intent, status, at=T0 + 5_000_000)


def yes(request: dict, who: str, **kw) -> dict:
    return signed(request, GROUP, who, at=T0 + 1_000_000, **kw)


def test_a_call_approved_by_its_quorum_is_sound() -> None:
    intent, request = call()
    r = verify([intent, request, yes(request, ALICE), yes(request, BOB), ok(intent)])
    assert (r.verdict, r.first) == ("sound", None)
    assert (r.stats["approval_requests"], r.stats["approval_decisions"]) == (1, 2)
    assert r.stats["approved_calls"] == 1


def test_calls_that_did_not_run_need_no_approval() -> None:
    intent, request = call(quorum=1)
    no = signed(request, GROUP, BOB, "deny", at=T0 + 1)
    timeout = dict(no, timed_out=True, signature=None, public_key=None, approver="wakeline-sdk")
    for status in ("denied", "aborted"):
        assert first([intent, request, no, ok(intent, status)]) == ("sound", None)
        assert first([intent, request, timeout, ok(intent, status)]) == ("sound", None)


def test_a_signature_that_does_not_verify_is_tampered() -> None:
    intent, request = call(quorum=1)
    forged = yes(request, ALICE)
    forged["signature"] = bytes([forged["signature"][0] ^ 1]) + forged["signature"][1:]
    r = verify([intent, request, forged, ok(intent)])
    assert (r.verdict, r.first.check) == ("tampered", "approval.bad_signature")
    assert r.first.event_id == forged["event_id"] and r.first.leaf_index == 2
    # and the call had no valid approval either
    assert "approval.quorum_missing" in r.checks()


def test_a_key_the_request_does_not_list_is_tampered() -> None:
    intent, request = call(quorum=1)
    mallory = Approvers.of(ALICE).keys[ALICE]  # a valid signature, by another key
    assert first([intent, request, yes(request, ALICE, key=mallory), ok(intent)]) == (
        "tampered", "approval.wrong_key",
    )  # fmt: skip
    outsider = signed(request, Approvers.of("eve@example.com"), "eve@example.com", at=T0 + 1)
    assert first([intent, request, outsider, ok(intent, "denied")]) == (
        "tampered", "approval.wrong_key",
    )  # fmt: skip


def test_a_decision_over_another_binding_or_a_request_binding_another_call() -> None:
    intent, request = call(quorum=1)
    other = bytes(32)
    assert first([intent, request, yes(request, ALICE, binding=other), ok(intent)]) == (
        "tampered", "approval.unbound",
    )  # fmt: skip
    # a request whose binding is another call's: approvals of it approve that other call
    _, elsewhere = call(quorum=1, amount=5)
    lying = dict(request, intent_digest=elsewhere["intent_digest"])
    r = verify([intent, lying, yes(lying, ALICE), ok(intent)])
    assert (r.verdict, r.first.check) == ("tampered", "approval.unbound")
    assert r.first.event_id == lying["event_id"]
    assert r.checks() == ["approval.unbound", "approval.quorum_missing"]


def test_requests_and_decisions_with_nothing_before_them_are_orphans() -> None:
    intent, request = call(quorum=1)
    assert first([request]) == ("tampered", "approval.orphan")
    assert first([yes(request, ALICE)]) == ("tampered", "approval.orphan")
    # an intent that did not require approval cannot be approved
    allowed = dict(intent, policy_decision="allow")
    assert first([allowed, request, ok(allowed)]) == ("tampered", "approval.orphan")


@pytest.mark.parametrize(
    "case",
    ["none", "one_of_two", "same_approver_twice", "expired", "denied", "after_result",
     "other_request"],
)  # fmt: skip
def test_a_call_that_ran_without_a_quorum_is_tampered(case: str) -> None:
    intent, request = call()
    a, b = yes(request, ALICE), yes(request, BOB)
    events = {
        "none": [intent, request, ok(intent)],
        "one_of_two": [intent, request, a, ok(intent)],
        "same_approver_twice": [intent, request, a, yes(request, ALICE), ok(intent)],
        # valid until before the call started (its result's time minus its duration)
        "expired": [intent, request, a, yes(request, BOB, expires_at=T0 + 2_000_000),
                    ok(intent)],
        "denied": [intent, request, a, b, signed(request, GROUP, BOB, "deny", at=T0 + 2),
                   ok(intent)],
        "after_result": [intent, request, a, ok(intent), b],
        # approvals of another call's request do not authorize this one
        "other_request": [intent, *_approved_elsewhere(), ok(intent)],
    }[case]  # fmt: skip
    r = verify(events)
    assert (r.verdict, r.first.check) == ("tampered", "approval.quorum_missing"), r.checks()
    assert r.first.event_id == events[-1 if case != "after_result" else -2]["event_id"]


def _approved_elsewhere() -> list[dict]:
    other, req = waiting_call("wf-1", GROUP, quorum=2, at=T0, amount=7)
    return [other, req, yes(req, ALICE), yes(req, BOB), ok(other)]


def test_an_error_result_ran_too_and_a_redelivered_approval_counts_once() -> None:
    intent, request = call()
    a = yes(request, ALICE)
    assert first([intent, request, a, a, ok(intent, "error")]) == (
        "tampered", "approval.quorum_missing",
    )  # fmt: skip
    assert first([intent, request, a, a, yes(request, BOB), ok(intent, "error")]) == (
        "sound", None,
    )  # fmt: skip


def test_a_request_id_reused_in_another_run_cannot_replace_the_group() -> None:
    intent, request = call(quorum=1)
    mallory = Approvers.of(ALICE)  # "alice", with a key of mallory's
    takeover = dict(request, run_id="wf-1-other", approver_keys=mallory.texts())
    approval = signed(request, mallory, ALICE, at=T0 + 1)
    r = verify([intent, request, takeover, approval, ok(intent)])
    assert r.checks() == [
        "approval.duplicate_request", "approval.wrong_key", "approval.quorum_missing",
    ]  # fmt: skip


def _checked(events: list[dict]) -> list[str]:
    """The approval checks over decoded events directly: for ToolIntent fields the packaged
    schema does not have yet (`grant_id`, `policy_version`, being added with the policy)."""
    from wakeline.ledger.pairing import ApprovalChecker, Position

    checker = ApprovalChecker()
    found = []
    for i, e in enumerate(events):
        issue = checker.add(0, e, Position(0, i, i, e["event_id"]))
        if issue is not None:
            found.append(issue.check)
    return found


def test_a_standing_grant_stands_in_for_the_quorum() -> None:
    intent, request = call()
    assert _checked([intent, ok(intent)]) == ["approval.quorum_missing"]
    assert _checked([dict(intent, grant_id="grant-1"), ok(intent)]) == []


def test_an_intent_decided_by_another_policy_version_is_not_bound() -> None:
    intent, request = call(quorum=1)
    approval = yes(request, ALICE)
    assert _checked([intent, request, approval, ok(intent)]) == []
    other = dict(intent, policy_version="cd" * 32)
    assert _checked([other, request, approval, ok(other)]) == [
        "approval.unbound", "approval.quorum_missing",
    ]  # fmt: skip
    same = dict(intent, policy_version=request["policy_version"])
    assert _checked([same, request, approval, ok(same)]) == []
