"""The policy engine and the SDK's approvals together: a policy file's approver group, quorum
and version reach the request, the binding and the intent."""

from __future__ import annotations

import pytest

from wakeline.policy.approvals import binding_of_intent, public_key_text
from wakeline.policy.engine import Policy

from .kit import InThread, make_emitter, new_wf

pytestmark = pytest.mark.integration


def test_a_policy_files_approval_rule_waits_for_its_group(world, follow, tmp_path):
    alice, bob = (f'"{a.name}" = "{public_key_text(a.public)}"' for a in (world.alice, world.bob))
    text = f"""
[approvers.finance]
members = {{ {alice}, {bob} }}

[[rule]]
name = "big-charges"
tool = "stripe.charge"
args = ["amount > 500"]
outcome = "require_approval"
approvers = "finance"
quorum = 2
timeout = "30s"
reason = "charges over 500 need two approvers"

[[rule]]
name = "the-rest"
outcome = "allow"
"""
    policy = Policy.parse(text, "billing")
    world.policy = policy  # type: ignore[method-assign]
    emitter = make_emitter(world, tmp_path / "spool")
    try:
        wf = new_wf()
        events = follow(wf)
        ctx = emitter.workflow(wf, agent_id="billing-bot", principal="carol@example.com")
        assert ctx.call("stripe.charge", world.charge, {"customer": "c", "amount": 20}) == "ch-c-20"
        call = InThread(
            lambda: ctx.call("stripe.charge", world.charge, {"customer": "c", "amount": 900})
        )
        (request,) = events.requests()
        intent = next(
            e for e in events.of_type("ToolIntent") if e["event_id"] == request["intent_id"]
        )
        assert (
            intent["policy_rule"] == "big-charges" and intent["approval_id"] == request["event_id"]
        )
        assert request["policy_version"] == intent["policy_version"] == policy.version
        assert request["intent_digest"] == binding_of_intent(intent, policy.version)
        assert request["quorum"] == 2 and request["approvers"] == ["finance"]
        world.alice.decide(world.kafka, request)
        world.bob.decide(world.kafka, request)
        assert call.join() == "ch-c-900"
    finally:
        emitter.close(timeout=10)
