"""The approval binding, statements and tally: what counts and what never does."""

from __future__ import annotations

import pytest

from wakeline.policy.approvals import (
    ApprovalError,
    Signed,
    Statement,
    binding_digest,
    generate_key,
    parse_public_key,
    public_bytes,
    public_key_text,
    tally,
)

CALL = dict(
    intent_id="i1", tool="stripe.charge", args_digest=b"\x01" * 32, workflow_id="wf",
    run_id="r1", agent_id="billing-bot", principal="ops@example.com", policy_version="v1",
)  # fmt: skip


def test_every_part_of_the_call_changes_the_binding() -> None:
    base = binding_digest(**CALL)  # type: ignore[arg-type]
    for k, v in CALL.items():
        other = dict(CALL, **{k: (b"\x02" * 32 if isinstance(v, bytes) else v + "x")})
        assert binding_digest(**other) != base, k  # type: ignore[arg-type]


def test_public_keys_round_trip_and_bad_ones_are_refused() -> None:
    k = generate_key()
    assert parse_public_key(public_key_text(k)) == public_bytes(k)
    for bad in ("", "ed25519:", "ed25519:!!", "rsa:AAAA", "ed25519:" + "A" * 8):
        with pytest.raises(ApprovalError):
            parse_public_key(bad)


def test_only_a_members_signature_over_this_binding_counts() -> None:
    alice, bob, mallory = generate_key(), generate_key(), generate_key()
    members = {"alice@example.com": public_bytes(alice), "bob@example.com": public_bytes(bob)}
    binding = binding_digest(**CALL)  # type: ignore[arg-type]
    other = binding_digest(**dict(CALL, args_digest=b"\x09" * 32))  # type: ignore[arg-type]

    def signed(who: str, key, b: bytes = binding, req: str = "q1", exp: int = 10**18, pub=None):  # type: ignore[no-untyped-def]
        st = Statement("approve", req, b, who, exp)
        return Signed(st, st.sign(key), public_bytes(pub or key))

    decisions = [
        signed("alice@example.com", alice, other),  # another call
        signed("alice@example.com", alice, req="q2"),  # another request
        signed("mallory@example.com", mallory),  # not a member
        signed("bob@example.com", mallory, pub=mallory),  # a key not the group's
        signed("bob@example.com", alice, pub=bob),  # signed by another key than it names
        signed("alice@example.com", alice, exp=5),  # expired
        signed("alice@example.com", alice),
        signed("alice@example.com", alice),  # the same approver twice: one
    ]
    t = tally(decisions, request_id="q1", binding=binding, members=members, quorum=2, now_us=10)
    assert t.approved_by == {"alice@example.com"} and not t.approved
    assert len(t.rejected) == 6
    t2 = tally(
        [*decisions, signed("bob@example.com", bob)],
        request_id="q1", binding=binding, members=members, quorum=2, now_us=10,
    )  # fmt: skip
    assert t2.approved
    st = Statement("deny", "q1", binding, "bob@example.com", 0)
    t3 = tally(
        [*decisions, signed("bob@example.com", bob), Signed(st, st.sign(bob), public_bytes(bob))],
        request_id="q1", binding=binding, members=members, quorum=1, now_us=10,
    )  # fmt: skip
    assert t3.denied and not t3.approved
