"""The approvals tests' world (their fixtures are in conftest.py): an approver group of freshly
generated keys, a plain policy hook that asks it for approval of every write, and helpers that
find an ApprovalRequested and answer it the way `wakeline approvals` does (signed with
tests/approvalkit.py, the home of the approval signing helpers)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.approvalkit import POLICY_VERSION, now_us, sign_decision
from wakeline.infra.settings import KafkaSettings
from wakeline.policy.approvals import generate_key, public_bytes, publish_decision
from wakeline.producers import Emitter, ToolRegistry
from wakeline.producers.approvals import Approvals
from wakeline.producers.gates import ApproverGroup, PolicyDecision, PolicyRequest
from wakeline.schemas import decode_event


@dataclass
class Approver:
    name: str
    key: Ed25519PrivateKey = field(default_factory=generate_key)

    @property
    def public(self) -> bytes:
        return public_bytes(self.key)

    def decide(
        self,
        kafka: KafkaSettings,
        request: dict[str, Any],
        decision: str = "approve",
        *,
        binding: bytes | None = None,
        expires_in_s: float = 300.0,
        key: Ed25519PrivateKey | None = None,
        public_key: bytes | None = None,
        comment: str | None = None,
    ) -> dict[str, Any]:
        """Sign and publish a decision on `request` (a decoded ApprovalRequested)."""
        event = sign_decision(
            request, self.name, key or self.key, decision, binding=binding, comment=comment,
            expires_at=now_us() + int(expires_in_s * 1_000_000),
            public_key=self.public if public_key is None else public_key,
        )  # fmt: skip
        publish_decision(kafka, event)
        return event


@dataclass
class World:
    kafka: KafkaSettings
    approvals: Approvals
    alice: Approver
    bob: Approver
    mallory: Approver
    quorum: int = 1
    timeout_s: float = 30.0
    ran: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def group(self) -> ApproverGroup:
        return ApproverGroup("finance", {a.name: a.public for a in (self.alice, self.bob)})

    def policy(self, request: PolicyRequest) -> PolicyDecision:
        if request.spec.reversibility == "read":
            return PolicyDecision("allow", "reads never wait", "test", rule="reads")
        return PolicyDecision(
            "require_approval",
            "charges need a person",
            "test",
            rule="charges",
            version=POLICY_VERSION,
            approvers=self.group,
            quorum=self.quorum,
            timeout_s=self.timeout_s,
        )

    def charge(self, customer: str, amount: int) -> str:
        self.ran.append(("charge", {"customer": customer, "amount": amount}))
        return f"ch-{customer}-{amount}"


def registry() -> ToolRegistry:
    reg = ToolRegistry()
    reg.declare("crm.read", reversibility="read", impact="low")
    reg.declare("stripe.charge", reversibility="compensable", impact="high", compensation="x")
    reg.declare("stripe.refund", reversibility="compensable", impact="high", compensation="x")
    return reg


def make_emitter(world: World, spool: Path) -> Emitter:
    return Emitter(
        world.kafka,
        spool_dir=spool,
        registry=registry(),
        policy=world.policy,
        authorizer=world.approvals,
        quarantine_gate=False,
        loop_guard=False,
        publish_schemas=False,
    )


def new_wf() -> str:
    return f"wf-{uuid.uuid4()}"


class Events:
    """Follows `<prefix>events` from the start for one workflow's events, in order."""

    def __init__(self, kafka: KafkaSettings, workflow_id: str) -> None:
        self.kafka = kafka
        self.key = workflow_id.encode()
        self.events: list[dict[str, Any]] = []
        self.consumer = Consumer(
            kafka.client_config(
                **{
                    "group.id": f"test-{uuid.uuid4()}",
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                }
            )
        )
        topic = kafka.topics.events
        parts = sorted(self.consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])

    def until(self, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 20.0) -> list:
        deadline = time.monotonic() + timeout
        while not done(self.events):
            if time.monotonic() > deadline:
                raise AssertionError(f"not there within {timeout}s; got {self.types()}")
            for msg in self.consumer.consume(100, 0.1):
                err = msg.error()
                if err is None and msg.key() == self.key:
                    self.events.append(decode_event(msg.value()))
                elif err is not None and err.code() != KafkaError._PARTITION_EOF:
                    raise AssertionError(f"consumer error: {err}")
        return self.events

    def of_type(self, type_name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_name]

    def requests(self, n: int = 1, timeout: float = 20.0) -> list[dict[str, Any]]:
        self.until(lambda ev: len([e for e in ev if e["type"] == "ApprovalRequested"]) >= n,
                   timeout)  # fmt: skip
        return self.of_type("ApprovalRequested")

    def result_of(self, intent_id: str, timeout: float = 20.0) -> dict[str, Any]:
        def has(ev: list[dict[str, Any]]) -> bool:
            return any(e["type"] == "ToolResult" and e["intent_id"] == intent_id for e in ev)

        self.until(has, timeout)
        return next(
            e for e in self.events if e["type"] == "ToolResult" and e["intent_id"] == intent_id
        )

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def close(self) -> None:
        self.consumer.close()


class InThread:
    """Runs `fn` in a thread; `join()` returns what it returned or raises what it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.value = fn()
            except BaseException as e:  # noqa: BLE001 - handed to join()
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 30.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the call is still waiting"
        if self.error is not None:
            raise self.error
        return self.value

    @property
    def waiting(self) -> bool:
        return self.thread.is_alive()


def seen(approvals: Approvals, request_id: str, approver: str, timeout: float = 15.0) -> None:
    """Wait until the SDK's approvals reader holds `approver`'s decision on `request_id`."""
    deadline = time.monotonic() + timeout
    while approver not in approvals._by_request.get(request_id, {}):
        if time.monotonic() > deadline:
            raise AssertionError(f"the decision of {approver} on {request_id} never arrived")
        time.sleep(0.01)
