"""The approval queue against the real stack: requests produced with the codec as the SDK
would (the intent first, then its ApprovalRequested, on the workflow's key), read by the
approvals processor on the Kafka runner into PostgreSQL (policy/queue.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.approvalkit import (
    Approvers,
    now_us,
    produce,
    queued_decisions,
    queued_request,
    result_of,
    signed,
    waiting_call,
)
from wakeline.infra import db
from wakeline.infra.settings import KafkaSettings
from wakeline.policy import queue
from wakeline.processors.approvals import approval_runner
from wakeline.schemas import encode_event, new_event_id
from wakeline.testkit.harness import read_topic, wait_until
from wakeline.testkit.samples import intent, result

pytestmark = pytest.mark.integration

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"


@pytest.fixture
def runner(fresh_kafka: KafkaSettings, fresh_dsn: str) -> Iterator[Any]:
    r = approval_runner(fresh_kafka, fresh_dsn)
    r.start()
    yield r
    r.stop()


def test_the_queue_follows_a_request_to_its_result_and_survives_a_replay(
    fresh_kafka: KafkaSettings, fresh_dsn: str, runner: Any
) -> None:
    group = Approvers.of(ALICE, BOB)
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    call, request = waiting_call(wf, group, quorum=2)
    other, other_request = waiting_call(wf, group, quorum=1, amount=501)
    noise = intent(wf, 1)
    produce(fresh_kafka, [noise, result(noise), call, request, other, other_request],
            raw=[(wf.encode(), b"not an event")])  # fmt: skip
    wait_until(
        lambda: queued_request(fresh_dsn, other_request["event_id"]) is not None, 60, "the requests"
    )
    got = queued_request(fresh_dsn, request["event_id"])
    assert got is not None and got.state == "pending" and got.bound and got.quorum == 2
    assert got.intent_id == call["event_id"] and got.tool == "payments.transfer"
    assert sorted(got.approver_keys) == [ALICE, BOB]
    # two requests of one workflow: each its own id and its own binding
    assert got.binding != queued_request(fresh_dsn, other_request["event_id"]).binding  # type: ignore[union-attr]

    forged = signed(request, group, BOB, key=Approvers.of(BOB).keys[BOB])  # not Bob's key
    produce(fresh_kafka, [signed(request, group, ALICE), forged])
    wait_until(lambda: len(queued_decisions(fresh_dsn, request["event_id"])) == 2, 60, "decisions")
    counts = {
        d.event_id: (d.counts, d.why) for d in queued_decisions(fresh_dsn, request["event_id"])
    }
    why = f"not signed with the key the policy lists for {BOB}"
    assert counts[forged["event_id"]] == (False, why)
    assert queued_request(fresh_dsn, request["event_id"]).state == "pending"  # type: ignore[union-attr]

    produce(fresh_kafka, [signed(request, group, BOB)])
    wait_until(
        lambda: queued_request(fresh_dsn, request["event_id"]).state == "approved", 60, "quorum"
    )  # type: ignore[union-attr]

    produce(fresh_kafka, [signed(other_request, group, ALICE, "deny"), result_of(call)])
    wait_until(
        lambda: queued_request(fresh_dsn, request["event_id"]).state == "closed", 60, "closed"
    )  # type: ignore[union-attr]
    wait_until(
        lambda: queued_request(fresh_dsn, other_request["event_id"]).state == "denied", 60, "denied"
    )  # type: ignore[union-attr]
    closed = queued_request(fresh_dsn, request["event_id"])
    assert closed is not None and closed.result_status == "ok"
    assert runner.processor.skipped == 0  # the bytes that are no event were skipped cheaply

    # a second process of another group re-reads everything: nothing changes
    again = approval_runner(fresh_kafka, fresh_dsn)
    again.settings = type(again.settings)(group_id=f"{fresh_kafka.topics.prefix}replay")
    again.start()
    try:
        wait_until(lambda: again.records_in >= 12, 60, "the replay")
    finally:
        again.stop()
    assert again.processor.requests == 0 and again.processor.decisions == 0
    assert queued_request(fresh_dsn, request["event_id"]) == closed
    assert len(queued_decisions(fresh_dsn, request["event_id"])) == 3
    with db.connect(fresh_dsn, autocommit=True) as conn, conn.cursor() as cur:
        listed = [r.request_id for r in queue.list_requests(cur, now_us=now_us())]
        assert listed == []  # one closed, one denied
        every = queue.list_requests(cur, every=True, now_us=now_us())
        assert {r.request_id for r in every} == {request["event_id"], other_request["event_id"]}


def test_a_request_whose_binding_is_not_its_intents_is_stored_unbound(
    fresh_kafka: KafkaSettings, fresh_dsn: str, runner: Any
) -> None:
    group = Approvers.of(ALICE)
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    call, request = waiting_call(wf, group)
    _, lying = waiting_call(wf, group, amount=5)  # its binding is another call's
    lying = dict(lying, intent_id=call["event_id"])
    orphan = waiting_call(wf, group)[1]  # its intent was never sent
    late_call, late = waiting_call(wf, group, timeout_s=1)
    # what the SDK writes when nobody answered in time: a denial nobody signed
    timeout = dict(signed(late, group, ALICE, "deny", at=late["expires_at"]),
                   approver="wakeline-sdk", timed_out=True, signature=None, public_key=None,
                   reason="timed out")  # fmt: skip
    early = dict(timeout, event_id=new_event_id(), time=late["time"])  # not a timeout yet
    poison = dict(signed(late, group, ALICE), request_id="a\x00b")  # no text column takes it
    produce(fresh_kafka, [poison, call, lying, orphan, late_call, late, early, timeout])
    wait_until(lambda: queued_request(fresh_dsn, late["event_id"]) is not None, 60, "the requests")
    wait_until(
        lambda: queued_request(fresh_dsn, late["event_id"]).state == "denied", 60, "the timeout"
    )  # type: ignore[union-attr]
    d_early, d = queued_decisions(fresh_dsn, late["event_id"])
    assert d.timed_out and d.counts and d.signature is None
    assert (d_early.counts, d_early.why) == (False, "a timeout written before the request expired")
    # the poison went to the DLQ with the reason; the events after it were stored
    assert runner.processor.skipped == 1
    (dlq,) = read_topic(fresh_kafka, fresh_kafka.topics.dlq)
    headers = dict(dlq.headers())
    assert headers["wakeline_dlq_component"] == b"approval-queue"
    assert b"cannot store this ApprovalGranted" in headers["wakeline_dlq_reason"]
    assert dlq.value() == encode_event(poison)
    got = queued_request(fresh_dsn, lying["event_id"])
    assert got is not None and not got.bound and got.intent is not None
    got = queued_request(fresh_dsn, orphan["event_id"])
    assert got is not None and not got.bound and got.intent is None
    assert encode_event(call) == queued_request(fresh_dsn, lying["event_id"]).intent  # type: ignore[union-attr]
