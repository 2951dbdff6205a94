"""The policy engine in the SDK against the real broker: a call its policy file denies is
recorded (its intent, naming the rule and the policy version, then a `denied` result) and
never runs; an allowed call of the same run records the rule that allowed it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from wakeline.infra.settings import KafkaSettings
from wakeline.policy.engine import Policy
from wakeline.producers import Emitter, PolicyDenied, ToolRegistry

from .test_sdk import events_of

pytestmark = pytest.mark.integration

POLICY = """\
# First match wins: rules are read top to bottom.
[policy]
name = "payments"
default = "deny"

[[rule]]
name = "no-large-payouts"
tool = "bank.*"
args = ["amount > 1000"]
outcome = "deny"
reason = "payouts over 1000 are not allowed"

[[rule]]
name = "payouts"
tool = "bank.payout"
outcome = "allow"
"""


def test_a_denied_call_is_on_the_topic_and_never_ran(kafka: KafkaSettings, tmp_path: Path) -> None:
    path = tmp_path / "payments.toml"
    path.write_text(POLICY)
    policy = Policy.load(path)
    registry = ToolRegistry()
    registry.declare("bank.payout", reversibility="irreversible", impact="high")
    wf = f"wf-{uuid.uuid4()}"
    ran: list[int] = []
    with Emitter(kafka, spool_dir=tmp_path / "spool", registry=registry, policy=policy) as em:
        ctx = em.workflow(wf, agent_id="payer", principal="alice@example.com")
        with pytest.raises(PolicyDenied, match="payouts over 1000"):
            ctx.call("bank.payout", lambda amount: ran.append(amount), {"amount": 5000})
        ctx.call("bank.payout", lambda amount: ran.append(amount), {"amount": 10})
        assert em.flush(30) == 0
    assert ran == [10]
    events = events_of(kafka, wf)
    assert [e["type"] for e in events] == ["ToolIntent", "ToolResult"] * 2
    denied, denied_result, allowed, _ = events
    assert denied["policy_decision"] == "deny"
    assert denied["policy_rule"] == "no-large-payouts"
    assert denied["policy_version"] == policy.version
    assert denied_result["intent_id"] == denied["event_id"]
    assert denied_result["status"] == "denied"
    assert (allowed["policy_decision"], allowed["policy_rule"]) == ("allow", "payouts")
    assert allowed["policy_version"] == policy.version
