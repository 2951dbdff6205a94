"""Approvals against the real broker: only a quorum of valid signatures over the binding of
exactly this call lets it run; anything else is ignored (and logged), and nobody answering
denies it (fail closed)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from wakeline.policy.approvals import Statement, decision_event, generate_key, publish_decision
from wakeline.producers.errors import ApprovalDenied, WaitTimedOut
from wakeline.schemas import new_event_id

from .kit import InThread, new_wf, seen

pytestmark = pytest.mark.integration


def test_a_valid_approval_lets_exactly_that_call_run(world, emitter, follow):
    wf = new_wf()
    events = follow(wf)
    ctx = emitter.workflow(wf, agent_id="billing-bot", principal="carol@example.com")
    call = InThread(
        lambda: ctx.call("stripe.charge", world.charge, {"customer": "c1", "amount": 900})
    )
    (request,) = events.requests()
    intent = events.of_type("ToolIntent")[0]
    assert request["parent_event_ids"] == [intent["event_id"]]
    assert request["intent_id"] == intent["event_id"]
    assert intent["approval_id"] == request["event_id"]
    assert intent["policy_rule"] == "charges" and intent["policy_version"] == "ab" * 32
    assert request["approver_keys"].keys() == {"alice@example.com", "bob@example.com"}
    assert request["quorum"] == 1 and request["policy_version"] == "ab" * 32
    assert request["approvers"] == ["finance"] and '"amount":900' in request["args"]
    world.alice.decide(world.kafka, request)
    assert call.join() == "ch-c1-900"
    assert world.ran == [("charge", {"customer": "c1", "amount": 900})]
    result = events.result_of(intent["event_id"])
    assert result["status"] == "ok"
    assert events.types()[:4] == [
        "ToolIntent",
        "ApprovalRequested",
        "ApprovalGranted",
        "ToolResult",
    ]
    assert not list(emitter.waiting.directory.glob("*.json"))  # the journal entry is cleared


def test_an_async_call_waits_and_runs_once_approved(world, emitter, follow):
    wf = new_wf()
    events = follow(wf)
    ctx = emitter.workflow(wf, agent_id="billing-bot", principal="carol@example.com")

    async def charge(customer: str, amount: int) -> str:
        return world.charge(customer, amount)

    async def main() -> str:
        task = asyncio.ensure_future(
            ctx.acall("stripe.charge", charge, {"customer": "c2", "amount": 50})
        )
        loop = asyncio.get_running_loop()
        (request,) = await loop.run_in_executor(None, events.requests)
        assert not task.done()
        await loop.run_in_executor(None, world.bob.decide, world.kafka, request)
        return await asyncio.wait_for(task, 30)

    assert asyncio.run(main()) == "ch-c2-50"
    assert world.ran == [("charge", {"customer": "c2", "amount": 50})]


def test_approving_x_never_runs_y_of_the_same_tool_with_other_arguments(world, emitter, follow):
    world.timeout_s = 4.0
    wf = new_wf()
    events = follow(wf)
    ctx = emitter.workflow(wf, agent_id="billing-bot", principal="carol@example.com")
    x = InThread(lambda: ctx.call("stripe.charge", world.charge, {"customer": "c3", "amount": 10}))
    events.requests(1)
    y = InThread(
        lambda: ctx.call("stripe.charge", world.charge, {"customer": "c3", "amount": 9999})
    )
    rx, ry = events.requests(2)
    assert rx["event_id"] != ry["event_id"]  # each pending call has its own request
    assert rx["intent_digest"] != ry["intent_digest"]
    world.alice.decide(world.kafka, rx)
    assert x.join() == "ch-c3-10"
    with pytest.raises(WaitTimedOut):
        y.join()
    assert world.ran == [("charge", {"customer": "c3", "amount": 10})]


def test_an_approval_replayed_for_another_call_does_not_count(world, emitter, follow, caplog):
    caplog.set_level(logging.WARNING, "wakeline.producers.approvals")
    world.timeout_s = 4.0
    wf = new_wf()
    events = follow(wf)
    ctx = emitter.workflow(wf, agent_id="billing-bot", principal="carol@example.com")
    x = InThread(lambda: ctx.call("stripe.charge", world.charge, {"customer": "c4", "amount": 1}))
    (rx,) = events.requests(1)
    granted = world.alice.decide(world.kafka, rx)
    assert x.join() == "ch-c4-1"
    y = InThread(lambda: ctx.call("stripe.charge", world.charge, {"customer": "c4", "amount": 1}))
    ry = events.requests(2)[1]
    # X's signed approval, as is, under Y's key; and re-addressed to Y's request (its
    # signature then no longer verifies, and its binding is X's)
    replay = dict(granted)
    publish_as = {**granted, "request_id": ry["event_id"], "event_id": new_event_id()}
    from wakeline.policy.approvals import _publish, approvals_key

    _publish(world.kafka, replay, world.kafka.topics.approvals,
             approvals_key(ry["event_id"], "alice@example.com"), "replay", 15)  # fmt: skip
    seen(world.approvals, ry["event_id"], "alice@example.com")
    publish_decision(world.kafka, {**publish_as, "approver": "bob@example.com"})
    seen(world.approvals, ry["event_id"], "bob@example.com")
    assert y.waiting
    with pytest.raises(WaitTimedOut):
        y.join()
    assert len(world.ran) == 1
    text = caplog.text
    assert "for another request" in text
    assert "bound to another call" in text or "signature does not verify" in text


@pytest.mark.parametrize(
    "forgery",
    ["key not in the group", "member's name, another key", "member's key named, not signed by it",
     "expired", "wrong binding"],
)  # fmt: skip
def test_an_approval_that_does_not_hold_is_ignored(world, emitter, follow, caplog, forgery):
    caplog.set_level(logging.WARNING, "wakeline.producers.approvals")
    world.timeout_s = 3.0
    wf = new_wf()
    events = follow(wf)
    ctx = emitter.workflow(wf, agent_id="billing-bot", principal="carol@example.com")
    call = InThread(
        lambda: ctx.call("stripe.charge", world.charge, {"customer": "c5", "amount": 7})
    )
    (request,) = events.requests()
    alice, kafka = world.alice, world.kafka
    other = generate_key()
    if forgery == "key not in the group":
        approver = world.mallory.name
        world.mallory.decide(kafka, request)
        why = "not in the approver group"
    elif forgery == "member's name, another key":
        approver = alice.name
        from wakeline.policy.approvals import public_bytes

        alice.decide(kafka, request, key=other, public_key=public_bytes(other))
        why = "not signed with the key the policy lists"
    elif forgery == "member's key named, not signed by it":
        approver = alice.name
        alice.decide(kafka, request, key=other)
        why = "the signature does not verify"
    elif forgery == "expired":
        approver = alice.name
        alice.decide(kafka, request, expires_in_s=-1)
        why = "expired"
    else:
        approver = alice.name
        alice.decide(kafka, request, binding=b"\x00" * 32)
        why = "bound to another call"
    seen(world.approvals, request["event_id"], approver)
    assert call.waiting
    with pytest.raises(WaitTimedOut):
        call.join()
    assert world.ran == []
    assert why in caplog.text


def test_a_quorum_of_two_is_not_met_by_one_approver_twice(world, emitter, follow):
    world.quorum = 2
    world.timeout_s = 3.0
    wf = new_wf()
    events = follow(wf)
    ctx = emitter.workflow(wf, agent_id="billing-bot", principal="carol@example.com")
    call = InThread(
        lambda: ctx.call("stripe.charge", world.charge, {"customer": "c6", "amount": 7})
    )
    (request,) = events.requests()
    assert request["quorum"] == 2
    world.alice.decide(world.kafka, request)
    world.alice.decide(world.kafka, request, comment="again")
    seen(world.approvals, request["event_id"], world.alice.name)
    with pytest.raises(WaitTimedOut):
        call.join()
    assert world.ran == []


def test_a_quorum_of_two_distinct_members_runs_the_call(world, emitter, follow):
    world.quorum = 2
    wf = new_wf()
    events = follow(wf)
    ctx = emitter.workflow(wf, agent_id="billing-bot", principal="carol@example.com")
    call = InThread(
        lambda: ctx.call("stripe.charge", world.charge, {"customer": "c7", "amount": 7})
    )
    (request,) = events.requests()
    world.alice.decide(world.kafka, request)
    seen(world.approvals, request["event_id"], world.alice.name)
    assert call.waiting
    world.bob.decide(world.kafka, request)
    assert call.join() == "ch-c7-7"


def test_nobody_answering_denies_with_the_sdks_own_denial(world, emitter, follow):
    world.timeout_s = 1.0
    wf = new_wf()
    events = follow(wf)
    ctx = emitter.workflow(wf, agent_id="billing-bot", principal="carol@example.com")
    with pytest.raises(WaitTimedOut) as refused:
        ctx.call("stripe.charge", world.charge, {"customer": "c8", "amount": 7})
    assert world.ran == []
    intent_id = refused.value.intent_id
    result = events.result_of(intent_id)
    assert result["status"] == "denied" and result["error_type"] == "WaitTimedOut"
    (denial,) = events.of_type("ApprovalDenied")
    (request,) = events.of_type("ApprovalRequested")
    assert denial["timed_out"] is True and denial["approver"] == "wakeline-sdk"
    assert denial["signature"] is None and denial["request_id"] == request["event_id"]
    assert denial["intent_digest"] == request["intent_digest"]
    assert events.types()[:4] == ["ToolIntent", "ApprovalRequested", "ApprovalDenied", "ToolResult"]


def test_a_denial_while_waiting_refuses_the_call(world, emitter, follow):
    wf = new_wf()
    events = follow(wf)
    ctx = emitter.workflow(wf, agent_id="billing-bot", principal="carol@example.com")
    call = InThread(
        lambda: ctx.call("stripe.charge", world.charge, {"customer": "c9", "amount": 7})
    )
    (request,) = events.requests()
    world.bob.decide(world.kafka, request, "deny", comment="not this customer")
    with pytest.raises(ApprovalDenied, match="denied by bob@example.com.*not this customer"):
        call.join()
    # ApprovalDenied, not WaitTimedOut: the denial ended the wait, not the timeout
    assert world.ran == []
    (intent,) = events.of_type("ToolIntent")
    assert events.result_of(intent["event_id"])["status"] == "denied"


def test_a_decision_published_before_the_call_waits_still_counts(world, emitter, follow):
    """The reader holds the topic's state: an approval that is there before the waiter
    registers (here: published for a request id the SDK is about to use) counts."""
    wf = new_wf()
    events = follow(wf)
    ctx = emitter.workflow(wf, agent_id="billing-bot", principal="carol@example.com")
    approvals = world.approvals
    orig = approvals._register
    published = []

    def late_register(wait):  # the decision lands between ApprovalRequested and the wait
        (request,) = events.requests()
        world.alice.decide(world.kafka, request)
        seen(approvals, request["event_id"], world.alice.name)
        published.append(request["event_id"])
        orig(wait)

    approvals._register = late_register
    try:
        assert ctx.call("stripe.charge", world.charge, {"customer": "c10", "amount": 7}) == (
            "ch-c10-7"
        )
    finally:
        approvals._register = orig
    assert published


def test_statement_events_keep_their_request():
    # decision_event puts the request's id in the event; the statement's must match it
    st = Statement("approve", "r-1", b"\x01" * 32, "alice", 1)
    key = generate_key()
    event = decision_event(
        {"event_id": "r-1", "workflow_id": "w", "run_id": "r", "agent_id": "a",
         "principal": "p"},
        st, st.sign(key), b"\x02" * 32, event_id="e", time_us=1,
    )  # fmt: skip
    assert event["request_id"] == "r-1"
