"""Human approvals and standing grants in the SDK: the `Authorizer` a `PolicyGate` uses.

    approvals = Approvals(kafka)
    emitter = Emitter(kafka, spool_dir=..., policy=my_policy, authorizer=approvals)

A `require_approval` decision goes through `Approvals.grant_for` first: a standing grant that
covers the call (signed by a member of the decision's approver group with the key the group
lists, agent and tool patterns matching, every argument limit holding, unexpired, not revoked
by a member) allows it, and the intent records the grant's id. Otherwise `request` gives the
call a request id (recorded in the intent as `approval_id`) and an `ApprovalWait`: once the
intent is sent it emits `ApprovalRequested` on the workflow's partition (parent: the intent)
with the binding of that exact call (`wakeline.policy.approvals.binding_digest`), and the call
blocks (sync or async) until the signed decisions on the compacted approvals topic add up
(`tally`): the quorum of distinct members approved (the call runs), or one member denied
(`ApprovalDenied` is raised after the `denied` result). Decisions that do not count are logged
with why and ignored. No answer within the decision's `timeout_s`: the SDK emits an
`ApprovalDenied` of its own (`timed_out`, approver `wakeline-sdk`, unsigned) and the call is
refused (fail closed). An approval only lets a call run while the approvals reader is live
(caught up): a denial it has not read yet could be waiting behind it.

Both topics are followed by `StateReader`s (producers/state.py), so decisions and grants
published before a call started waiting count as well. Grants are keyed by grant id, each
revocation by `<grant id>/revoked/<revoker>` (policy/approvals.py says why).

`WaitJournal` (producers/spool.py) keeps, in the emitter's spool directory, one entry per
call waiting on a gate; the `Emitter` writes it before the call waits and clears it on the
call's result. A process that dies meanwhile leaves its entries behind, and reopening the run
(`emitter.workflow(WF, run_id=R)`) emits an `aborted` result for each, so the intent is never
left without a result. docs/approvals.md has the whole story.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from wakeline.infra.settings import KafkaSettings
from wakeline.policy.approvals import (
    Signed,
    grant_of_event,
    grant_why_not,
    public_key_text,
    revocation_why_not,
    statement_of_event,
    tally,
)
from wakeline.policy.approvals import binding_digest as _binding_digest
from wakeline.producers.errors import ApprovalDenied, WaitTimedOut
from wakeline.producers.gates import GateCall, Pending, PolicyDecision, Verdict
from wakeline.producers.state import StateReader
from wakeline.schemas import decode_event, new_event_id

if TYPE_CHECKING:
    from wakeline.producers.workflow import ToolCall

log = logging.getLogger(__name__)

#: the approver named on the ApprovalDenied the SDK writes when a request times out
SDK_APPROVER = "wakeline-sdk"


def _now_us() -> int:
    return time.time_ns() // 1000


# -- records of the two topics -----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Received:
    """A signed decision as the approvals topic holds it."""

    signed: Signed
    event_id: str
    reason: str | None


def parse_decision_record(_key: bytes, value: bytes | None) -> Received | None:
    """An approvals-topic record: None for a tombstone or anything that is not a decision
    with a statement (logged by the reader when it does not decode)."""
    if value is None:
        return None
    event = decode_event(value)
    statement = statement_of_event(event)
    if statement is None:
        log.info("approvals: record %s is not a signed decision; ignored", event.get("event_id"))
        return None
    signed = Signed(statement, event.get("signature"), event.get("public_key"))
    return Received(signed, str(event.get("event_id")), event.get("reason") or event.get("comment"))


def parse_grant_record(_key: bytes, value: bytes | None) -> dict[str, Any] | None:
    """A grants-topic record: the decoded Grant or GrantRevoked (None for anything else)."""
    if value is None:
        return None
    event = decode_event(value)
    if event.get("type") not in ("Grant", "GrantRevoked"):
        log.info("grants: record %s is a %s; ignored", event.get("event_id"), event.get("type"))
        return None
    return event


# -- the waiter --------------------------------------------------------------------------
class ApprovalWait(Pending):
    """One call's wait for its approval; resolved by `Approvals` as decisions arrive."""

    def __init__(self, owner: Approvals, request_id: str, decision: PolicyDecision) -> None:
        super().__init__(f"approval {request_id}")
        self.owner = owner
        self.request_id = request_id
        self.decision = decision
        group = decision.approvers
        self.members: Mapping[str, bytes] = dict(group.members) if group is not None else {}
        self.binding: bytes | None = None
        self.call: ToolCall | None = None
        #: (event id, why) of decisions already logged as not counting
        self._logged: set[tuple[str, str]] = set()

    def started(self, call: ToolCall) -> None:
        """The intent is sent: bind this exact call, ask, then count what is there."""
        ctx = call.ctx
        d = self.decision
        self.call = call
        self.binding = _binding_digest(
            intent_id=call.intent_id,
            tool=call.spec.name,
            args_digest=call.canonical.digest,
            workflow_id=ctx.workflow_id,
            run_id=ctx.run_id,
            agent_id=ctx.agent_id,
            principal=ctx.principal,
            policy_version=d.version or None,
        )
        event = ctx.envelope("ApprovalRequested", step_id=call.step_id, parents=[call.intent_id])
        group = d.approvers
        event.update(
            event_id=self.request_id,
            intent_id=call.intent_id,
            intent_digest=self.binding,
            tool=call.spec.name,
            args=call.canonical.text,
            reason=call.scrub(d.reason) or None,
            approvers=[group.name] if group is not None else [],
            approver_keys={p: public_key_text(bytes(k)) for p, k in self.members.items()},
            quorum=max(1, int(d.quorum)),
            expires_at=_now_us() + int(d.timeout_s * 1_000_000),
            policy_version=d.version or None,
        )
        ctx.emit(event)
        self.owner._register(self)

    def wait(self, timeout: float) -> Verdict | None:
        got = super().wait(timeout)
        return got if got is not None else self._time_out()

    async def wait_async(self, timeout: float) -> Verdict | None:
        got = await super().wait_async(timeout)
        return got if got is not None else self._time_out()

    def _time_out(self) -> Verdict | None:
        """Nobody decided in time: refuse, unless a decision won the race to resolve."""
        call = self.call
        tool = call.spec.name if call is not None else "the call"
        why = (
            f"{tool} waited {self.decision.timeout_s:g}s for approval {self.request_id}; "
            "no decision arrived, so it is refused"
        )
        mine = Verdict.refuse(WaitTimedOut(why), self.decision)
        self.resolve(mine)
        self.owner._unregister(self)
        got = self._verdict
        if got is mine and call is not None and self.binding is not None:
            ctx = call.ctx
            event = ctx.envelope("ApprovalDenied", step_id=call.step_id, parents=[self.request_id])
            event.update(
                request_id=self.request_id,
                intent_digest=self.binding,
                approver=SDK_APPROVER,
                reason=f"no decision within {self.decision.timeout_s:g}s",
                timed_out=True,
                signature=None,
                public_key=None,
            )
            ctx.emit(event)
        return got

    def count(self, decisions: Iterable[Received], now_us: int, live: bool) -> None:
        """Tally the decisions received for this request; resolve when they decide."""
        if self.binding is None or self.resolved:
            return
        received = list(decisions)
        t = tally(
            (r.signed for r in received),
            request_id=self.request_id,
            binding=self.binding,
            members=self.members,
            quorum=self.decision.quorum,
            now_us=now_us,
        )
        by_approver = {r.signed.statement.approver: r for r in received}
        for approver, why in t.rejected:
            r = by_approver.get(approver)
            key = (r.event_id if r is not None else approver, why)
            if key not in self._logged:
                self._logged.add(key)
                log.warning(
                    "approval %s: the decision %s by %s does not count: %s",
                    self.request_id,
                    key[0],
                    approver,
                    why,
                )
        tool = self.call.spec.name if self.call is not None else "the call"
        if t.denied:
            r = by_approver.get(t.denied_by or "")
            said = f": {r.reason}" if r is not None and r.reason else ""
            why = f"{tool} was denied by {t.denied_by} (approval {self.request_id}){said}"
            if self.call is not None:
                why = self.call.scrub(why)
            self.resolve(Verdict.refuse(ApprovalDenied(why), self.decision))
        elif t.approved and live:
            log.info(
                "approval %s: approved by %s", self.request_id, ", ".join(sorted(t.approved_by))
            )
            self.resolve(Verdict.allow(self.decision))
        else:
            return
        self.owner._unregister(self)


# -- the authorizer ----------------------------------------------------------------------
class Approvals:
    """The SDK's `Authorizer`: standing grants first, else a signed approval of the exact
    call. Follows `<prefix>approvals` and `<prefix>grants` (compacted) from `start()` on."""

    name = "approvals"

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        poll_interval_s: float = 0.05,
        startup_timeout_s: float = 5.0,
        start: bool = True,
        clock_us: Callable[[], int] = _now_us,
        consumer_factory: Callable[[Mapping[str, Any]], Any] | None = None,
    ) -> None:
        self.kafka = kafka
        self.startup_timeout_s = startup_timeout_s
        self.clock_us = clock_us
        self._lock = threading.Lock()
        #: request id -> approver -> the latest decision received
        self._by_request: dict[str, dict[str, Received]] = {}
        self._waiting: dict[str, ApprovalWait] = {}
        self._conditions: dict[str, Callable[[Mapping[str, Any]], bool] | str] = {}
        self._logged_grants: set[tuple[str, str]] = set()
        self.decisions: StateReader[Received] = StateReader(
            kafka,
            kafka.topics.approvals,
            parse_decision_record,
            name="approvals",
            poll_interval_s=poll_interval_s,
            consumer_factory=consumer_factory,
            on_apply=self._on_decision,
            on_live=self._recount,
        )
        self.grants: StateReader[dict[str, Any]] = StateReader(
            kafka,
            kafka.topics.grants,
            parse_grant_record,
            name="grants",
            poll_interval_s=poll_interval_s,
            consumer_factory=consumer_factory,
        )
        self._waited_for_grants = False
        if start:
            self.start()

    @classmethod
    def offline(cls, **kwargs: Any) -> Approvals:
        """No consumers: the state is only what `apply_decision` / `apply_grant` feed it."""
        self = cls(KafkaSettings(bootstrap=""), start=False, **kwargs)
        self.decisions.start_offline()
        self.grants.start_offline()
        return self

    def start(self) -> Approvals:
        self.decisions.start()
        self.grants.start()
        return self

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until both readers caught up once."""
        return self.decisions.wait_live(timeout) and self.grants.wait_live(timeout)

    def close(self) -> None:
        self.decisions.close()
        self.grants.close()

    def apply_decision(self, key: bytes, value: bytes | None) -> None:
        self.decisions.apply(key, value)

    def apply_grant(self, key: bytes, value: bytes | None) -> None:
        self.grants.apply(key, value)

    # -- the Authorizer protocol ----------------------------------------------------------
    def request(
        self, call: GateCall, decision: PolicyDecision
    ) -> tuple[ApprovalWait, PolicyDecision]:
        request_id = new_event_id()
        decision = replace(decision, approval_id=request_id)
        return ApprovalWait(self, request_id, decision), decision

    def grant_for(self, call: GateCall, decision: PolicyDecision) -> str | None:
        group = decision.approvers
        if group is None or not group.members:
            return None
        reader = self.grants
        if not reader.live and not self._waited_for_grants:
            self._waited_for_grants = True
            reader.wait_live(self.startup_timeout_s)
        state = reader.snapshot()
        if not state:
            return None
        members = group.members
        revocations: dict[str, list[dict[str, Any]]] = {}
        grants = []
        for event in state.values():
            if event.get("type") == "GrantRevoked":
                revocations.setdefault(str(event["grant_id"]), []).append(event)
            else:
                grants.append(event)
        now = self.clock_us()
        for event in grants:
            st = grant_of_event(event)
            if st is None:
                continue
            if not fnmatchcase(call.agent_id, st.agent) or not fnmatchcase(call.spec.name, st.tool):
                continue  # not about this call: nothing to say
            revoked: set[str] = set()
            for rev in revocations.get(st.grant_id, ()):
                bad = revocation_why_not(rev, members)
                if bad is None:
                    revoked.add(st.grant_id)
                else:
                    self._log_grant(st.grant_id, f"has a revocation that does not count: {bad}")
            why = grant_why_not(
                event,
                agent_id=call.agent_id,
                tool=call.spec.name,
                args=call.args,
                members=members,
                quorum=decision.quorum,
                revoked=revoked,
                now_us=now,
                condition=self._condition,
            )
            if why is None:
                log.info("grant %s by %s covers %s", st.grant_id, st.grantor, call.spec.name)
                return st.grant_id
            self._log_grant(st.grant_id, f"does not cover {call.spec.name}: {why}")
        return None

    # -- grants ---------------------------------------------------------------------------
    def _condition(self, text: str) -> Callable[[Mapping[str, Any]], bool] | str:
        """The compiled limit, or why it does not compile (cached either way)."""
        hit = self._conditions.get(text)
        if hit is None:
            from wakeline.policy.predicates import PolicyError, compile_condition

            try:
                hit = compile_condition(text)
            except PolicyError as e:
                hit = str(e)
            if len(self._conditions) >= 4096:
                self._conditions.clear()
            self._conditions[text] = hit
        return hit

    def _log_grant(self, grant_id: str, why: str) -> None:
        if (grant_id, why) not in self._logged_grants:
            self._logged_grants.add((grant_id, why))
            log.warning("grant %s %s", grant_id, why)

    # -- decisions ------------------------------------------------------------------------
    def _register(self, wait: ApprovalWait) -> None:
        with self._lock:
            self._waiting[wait.request_id] = wait
            got = list(self._by_request.get(wait.request_id, {}).values())
        wait.count(got, self.clock_us(), self.decisions.live)

    def _unregister(self, wait: ApprovalWait) -> None:
        with self._lock:
            self._waiting.pop(wait.request_id, None)

    def _on_decision(self, key: bytes, received: Received | None) -> None:
        request_id, _, approver = key.decode("utf-8", "replace").partition("/")
        with self._lock:
            held = self._by_request.get(request_id)
            if received is not None:
                if held is None:
                    held = self._by_request[request_id] = {}
                held[approver] = received
            elif held is not None:
                held.pop(approver, None)
                if not held:
                    del self._by_request[request_id]
            wait = self._waiting.get(request_id)
            got = list(held.values()) if held else []
        if wait is not None:
            wait.count(got, self.clock_us(), self.decisions.live)

    def _recount(self) -> None:
        with self._lock:
            pending = [
                (w, list(self._by_request.get(r, {}).values())) for r, w in self._waiting.items()
            ]
        for wait, got in pending:
            wait.count(got, self.clock_us(), True)
