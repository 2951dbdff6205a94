"""Gates that run before a tool does, as one ordered pipeline in the `Emitter`.

A `Gate` sees the call about to run (`GateCall`) and returns None (allow, the cheap case) or
a `Verdict`: allow with a decision to record, refuse with an error (and maybe an `AlertSpec`),
or wait for something (an approval) on a `Waiter`, such as `Pending`: the call blocks, sync or
async, until it resolves to allow or refuse, or times out (refused: fail closed). The
default pipeline is `QuarantineGate`, `LoopGuard`, `PolicyGate`; anything later (approvals,
grants) is one more gate in `Emitter.gates`, with no change to the call path.

- `QuarantineGate` follows the compacted `<prefix>quarantines` topic through a `StateReader`
  (key = workflow id; value = a `Quarantine` event, or a `Release` event / tombstone that lifts
  it), so a quarantined workflow is refused within a poll interval.
- `LoopGuard` refuses a repeated call by the `repeat` rule of the detection rules (the same
  agent, tool and arguments `count` times within `window_s`, per workflow unless the rule
  says per agent; retries of failed calls within a budget do not count), locally, before the
  loop detector downstream would notice; read-only tools are never refused, only alerted.
- `PolicyHook` is any callable `PolicyRequest -> PolicyDecision`; `allow_all` is the default.
  The decision goes into the intent.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from wakeline.infra.detection import DetectionRules, Rule
from wakeline.infra.settings import KafkaSettings
from wakeline.producers.canonical import loop_digest
from wakeline.producers.errors import (
    ApprovalRequired,
    GateRefused,
    LoopRefused,
    PolicyDenied,
    WaitTimedOut,
    WorkflowQuarantined,
)
from wakeline.producers.registry import ToolSpec
from wakeline.producers.state import StateReader

log = logging.getLogger(__name__)

Outcome = Literal["allow", "deny", "require_approval"]
OUTCOMES: tuple[str, ...] = ("allow", "deny", "require_approval")


# -- policy ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """What a policy sees: the tool's spec, the raw and canonical arguments, who asks."""

    spec: ToolSpec
    args: Mapping[str, Any]
    canonical_args: str
    args_digest: bytes
    workflow_id: str
    agent_id: str
    principal: str
    tenant: str | None
    boundary: str | None


@dataclass(frozen=True, slots=True)
class ApproverGroup:
    """Who may approve: a named group of principals, each with its Ed25519 public key (32 raw
    bytes), as a policy file lists them. An approval counts only when signed by a member's key."""

    name: str
    members: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """What a policy decided about one call, and what the intent records of it.

    `rule` names the rule that decided and `version` is the policy's digest (hex), so every
    decision says which policy version made it; `shadow` lists what shadow-mode rules would
    have decided (recorded, never enforced). For `require_approval`: the `approvers` group, the
    `quorum` of distinct approvers needed and the `timeout_s` after which the call is denied.
    An approvals gate fills `approval_id` (the ApprovalRequested's event id, known before the
    intent is framed) or `grant_id` (the standing grant that authorized the call instead)."""

    outcome: Outcome
    reason: str = ""
    policy: str = "default"
    rule: str = ""
    version: str = ""
    shadow: tuple[str, ...] = ()
    approvers: ApproverGroup | None = None
    quorum: int = 1
    timeout_s: float = 300.0
    approval_id: str | None = None
    grant_id: str | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"policy outcome {self.outcome!r} is not one of {OUTCOMES}")


PolicyHook = Callable[[PolicyRequest], PolicyDecision]


class Authorizer(Protocol):
    """What turns a `require_approval` decision into a wait (or an allow) in `PolicyGate`:
    `grant_for` names a standing grant that covers the call (None: none does), `request`
    starts an approval request and returns the waiter the call blocks on, with the decision
    to record (its `approval_id` set)."""

    def grant_for(self, call: GateCall, decision: PolicyDecision) -> str | None: ...

    def request(
        self, call: GateCall, decision: PolicyDecision
    ) -> tuple[Waiter, PolicyDecision]: ...


ALLOW_ALL = PolicyDecision("allow", "no policy configured", "allow-all")


def allow_all(_request: PolicyRequest) -> PolicyDecision:
    """The default policy: everything is allowed (and recorded as such in the intent)."""
    return ALLOW_ALL


# -- the gate protocol -------------------------------------------------------------------
@dataclass(slots=True)  # not frozen: one is built per call, and frozen init costs ~2 µs
class GateCall:
    """What a gate sees: the call about to run. `args` are the raw arguments (a gate must
    not record them: `scrub` removes the call's redacted values from any text it writes)."""

    spec: ToolSpec
    args: Mapping[str, Any]
    canonical_args: str
    args_digest: bytes
    workflow_id: str
    run_id: str
    agent_id: str
    principal: str
    tenant: str | None
    boundary: str | None
    scrub: Callable[[str], str]
    #: the loop guard's state of this call's key: told the call's result (retries)
    loop_state: Any = None


@dataclass(frozen=True, slots=True)
class AlertSpec:
    """An Alert a refusing gate asks for; the SDK adds the envelope and the intent's id."""

    kind: Literal["runaway_loop", "race", "policy_violation", "other"]
    detail: str
    detector: str
    severity: Literal["info", "warning", "error", "critical"] = "warning"
    attributes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:  # checked here: at emit time the refusal is recorded
        if self.kind not in ALERT_KINDS:
            raise ValueError(f"alert kind {self.kind!r} is not one of {ALERT_KINDS}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"alert severity {self.severity!r} is not one of {SEVERITIES}")


#: the Alert schema's enums (schemas/Alert.avsc)
ALERT_KINDS = ("runaway_loop", "race", "policy_violation", "other")
SEVERITIES = ("info", "warning", "error", "critical")


@dataclass(frozen=True, slots=True)
class Verdict:
    """allow (the decision recorded in the intent), refuse (an error to raise after the
    denied result; maybe an alert), or wait (for `waiter`; the call blocks until it resolves
    to allow or refuse, or `timeout_s` passes: then it is refused, fail closed)."""

    outcome: Literal["allow", "refuse", "wait"]
    decision: PolicyDecision
    error: GateRefused | None = None
    alert: AlertSpec | None = None
    waiter: Waiter | None = None
    timeout_s: float = 0.0

    @staticmethod
    def allow(decision: PolicyDecision) -> Verdict:
        return Verdict("allow", decision)

    @staticmethod
    def refuse(
        error: GateRefused, decision: PolicyDecision, alert: AlertSpec | None = None
    ) -> Verdict:
        if decision.outcome == "allow":
            raise ValueError("a refusal must record a deny or require_approval decision")
        return Verdict("refuse", decision, error, alert)

    @staticmethod
    def wait(waiter: Waiter, decision: PolicyDecision, timeout_s: float) -> Verdict:
        return Verdict("wait", decision, waiter=waiter, timeout_s=timeout_s)


class Gate(Protocol):
    """One step of the Emitter's gate pipeline (`Emitter.gates`, run in order before every
    call's intent). `decide` returns None (allow, nothing to record: the cheap common case),
    or a `Verdict`; the first refuse or wait stops the pipeline. `name` names the gate in
    refusals; a gate with `recheck_after_wait = True` is asked again after another gate's
    wait resolved to allow (a quarantine may have started while a human was approving)."""

    name: str

    def decide(self, call: GateCall) -> Verdict | None: ...


class Waiter(Protocol):
    """What a waiting call blocks on; `Pending` is the ready-made one. A waiter that also has
    `started(call)` is told once the call's intent is sent (the `ToolCall`, with its
    `intent_id` and frame), before the call blocks: an approvals waiter emits its
    ApprovalRequested there, bound to that exact intent."""

    def wait(self, timeout: float) -> Verdict | None: ...

    async def wait_async(self, timeout: float) -> Verdict | None: ...


class Pending:
    """A verdict that arrives later, from any thread: `resolve(verdict)` wakes every call
    blocked in `wait` (threads) or `wait_async` (any event loop). None = timed out."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._done = threading.Event()
        self._verdict: Verdict | None = None
        self._lock = threading.Lock()
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[Verdict]]] = []

    def resolve(self, verdict: Verdict) -> None:
        if verdict.outcome == "wait":
            raise ValueError("a wait resolves to allow or refuse")
        with self._lock:
            if self._done.is_set():
                return
            self._verdict = verdict
            self._done.set()
            futures, self._futures = self._futures, []
        for loop, fut in futures:
            loop.call_soon_threadsafe(_set_result, fut, verdict)

    @property
    def resolved(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float) -> Verdict | None:
        return self._verdict if self._done.wait(timeout) else None

    async def wait_async(self, timeout: float) -> Verdict | None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._done.is_set():
                return self._verdict
            fut: asyncio.Future[Verdict] = loop.create_future()
            self._futures.append((loop, fut))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None


def _set_result(fut: asyncio.Future[Verdict], verdict: Verdict) -> None:
    if not fut.done():
        fut.set_result(verdict)


def timed_out(gate: str, verdict: Verdict, tool: str) -> Verdict:
    """The refusal of a call whose wait ran out."""
    what = getattr(verdict.waiter, "what", "a decision")
    why = f"{tool} waited {verdict.timeout_s:g}s for {what} ({gate}); refused"
    return Verdict.refuse(WaitTimedOut(why), PolicyDecision("deny", why, gate))


class PolicyGate:
    """The policy hook as a gate: deny refuses; require_approval waits for an approval when
    an `Authorizer` is installed (or is allowed by a standing grant it finds), and is refused
    without one (fail closed)."""

    name = "policy"

    def __init__(self, policy: PolicyHook, authorizer: Authorizer | None = None) -> None:
        self.policy = policy
        self.authorizer = authorizer
        #: id(decision) -> its allow verdict: a policy engine returns the same decision
        #: object for every call its rule allows, and a frozen Verdict costs ~1 µs to build
        self._allowed: dict[int, Verdict] = {}

    def decide(self, call: GateCall) -> Verdict | None:
        if self.policy is allow_all:  # the default: no request object to build
            return None
        decision = self.policy(
            PolicyRequest(
                call.spec,
                call.args,
                call.canonical_args,
                call.args_digest,
                call.workflow_id,
                call.agent_id,
                call.principal,
                call.tenant,
                call.boundary,
            )
        )
        # a policy sees the raw arguments; what it says is recorded, so it is scrubbed (a
        # copy only when that changed something: `replace` costs ~6 µs, a whole decision less)
        reason, policy = call.scrub(decision.reason), call.scrub(decision.policy)
        if reason != decision.reason or policy != decision.policy:
            decision = replace(decision, reason=reason, policy=policy)
        name = call.spec.name
        if decision.outcome == "deny":
            why = f"policy {decision.policy} denied {name}: {decision.reason}"
            return Verdict.refuse(PolicyDenied(why), decision)
        if decision.outcome == "require_approval":
            if self.authorizer is not None:
                grant = self.authorizer.grant_for(call, decision)
                if grant is not None:
                    return Verdict.allow(replace(decision, grant_id=grant))
                waiter, decision = self.authorizer.request(call, decision)
                return Verdict.wait(waiter, decision, decision.timeout_s)
            why = (
                f"policy {decision.policy} requires approval for {name} ({decision.reason}); "
                "no approvals are configured, so the call is refused"
            )
            return Verdict.refuse(ApprovalRequired(why), decision)
        verdict = self._allowed.get(id(decision))
        if verdict is None or verdict.decision is not decision:
            verdict = Verdict.allow(decision)
            if len(self._allowed) >= 256:
                self._allowed.clear()
            self._allowed[id(decision)] = verdict
        return verdict


# -- loop guard --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LoopVerdict:
    allowed: bool
    count: int = 0
    alert: bool = False  # first time over the rule's count in a window: emit an Alert
    rule: str = "repeat"
    #: seconds from the first counted call of the window to this one
    span_s: float = 0.0


_ALLOWED: dict[int, LoopVerdict] = {}


def _allowed(count: int) -> LoopVerdict:
    """The (immutable, so shared) verdict allowing a call seen `count` times: one per call
    of every tool, so not built anew each time."""
    verdict = _ALLOWED.get(count)
    if verdict is None:
        verdict = LoopVerdict(True, count)
        if count < 64:
            _ALLOWED[count] = verdict
    return verdict


#: results that make the next identical call a retry (within the rule's `retry_budget`)
_FAILED = frozenset(("error", "aborted"))


class _Seen:
    """One key's recent calls, and whether its last call failed (the next one is a retry)."""

    __slots__ = ("times", "window_s", "failed", "retries")

    def __init__(self, window_s: float) -> None:
        self.times: deque[float] = deque()
        self.window_s = window_s
        self.failed = False
        self.retries = 0

    def result(self, status: str) -> None:
        """The outcome of the call counted last (a denied call did not run: nothing)."""
        if status == "ok":
            self.failed = False
            self.retries = 0
        elif status in _FAILED:
            self.failed = True


@dataclass
class LoopGuard:
    """The SDK's local loop guard, by the detection rules the worker's detector follows
    (`wakeline.infra.detection`, `DetectionRules.from_env()` unless `rules` is given):

    - `repeat`: the `count`-th call of a tool by an agent with the same arguments within
      `window_s` is refused, counted per workflow, or across the agent's workflows when the
      rule says `per = "agent"`. Arguments are compared without the tool's volatile fields
      (`loop_digest`). A call made right after a failed one with the same arguments (error
      or aborted) is a retry: up to `retry_budget` of them in a row are not counted.
    - `repeat_read`: the same for read-only tools, which are never refused: past its (high)
      count, one Alert per window, and the call runs.

    Thresholds per tool and per agent come from the rules. `max_repeats` and `window_s`,
    when given, override the `repeat` rule's count and window for every tool and agent (a
    guard of one's own, tests). A refusal names its rule in `LoopRefused`, in the recorded
    decision (`policy`) and as its Alert's `detector`.
    """

    max_repeats: int | None = None
    window_s: float | None = None
    rules: DetectionRules | None = None
    clock: Callable[[], float] = time.monotonic
    max_keys: int = 100_000
    _seen: dict[tuple[str, str, str, bytes], _Seen] = field(default_factory=dict)
    _alerted: dict[tuple[str, str, str, bytes], float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: (read, tool, agent) -> (rule name, settings): `DetectionRules.rule` costs microseconds
    _rule_cache: dict[tuple[bool, str, str], tuple[str, Rule]] = field(default_factory=dict)

    name = "loop-guard"

    def __post_init__(self) -> None:
        if self.max_repeats is not None and self.max_repeats < 2:
            raise ValueError("max_repeats must be at least 2 (1 would refuse every call)")
        if self.window_s is not None and self.window_s <= 0:
            raise ValueError("window_s must be positive")
        if self.rules is None:
            self.rules = DetectionRules.from_env()

    def rule(self, tool: str, agent_id: str, read: bool) -> tuple[str, Rule]:
        """The rule (name, settings) a call of `tool` by `agent_id` is counted by."""
        key = (read, tool, agent_id)
        hit = self._rule_cache.get(key)
        if hit is None:
            name = "repeat_read" if read else "repeat"
            assert self.rules is not None
            rule = self.rules.rule(name, tool=tool, agent=agent_id)
            if not read and (self.max_repeats is not None or self.window_s is not None):
                rule = replace(
                    rule,
                    count=self.max_repeats or rule.count,
                    window_s=self.window_s or rule.window_s,
                )
            if len(self._rule_cache) >= 4096:  # one entry per (tool, agent): rarely reached
                self._rule_cache.clear()
            hit = self._rule_cache[key] = (name, rule)
        return hit

    def check(
        self,
        agent_id: str,
        tool: str,
        args_digest: bytes,
        *,
        workflow_id: str = "",
        read: bool = False,
    ) -> LoopVerdict:
        """Count one call; its verdict (`allowed` False: refuse it)."""
        return self._check(agent_id, tool, args_digest, workflow_id, read)[0]

    def _check(
        self, agent_id: str, tool: str, digest: bytes, workflow_id: str, read: bool
    ) -> tuple[LoopVerdict, _Seen | None]:
        name, rule = self.rule(tool, agent_id, read)
        if not rule.enabled:
            return _allowed(0), None
        now = self.clock()
        key = (workflow_id if rule.per == "workflow" else "", agent_id, tool, digest)
        with self._lock:
            seen = self._seen
            # Re-inserted below, so the dict runs from least to most recently seen.
            state = seen.pop(key, None)
            if state is None:
                if len(seen) >= self.max_keys:
                    self._prune(now)
                state = _Seen(rule.window_s)
            seen[key] = state
            times = state.times
            horizon = now - rule.window_s
            while times and times[0] <= horizon:
                times.popleft()
            if state.failed and state.retries < rule.retry_budget:
                state.failed = False  # a retry of a failed call: not counted
                state.retries += 1
                return _allowed(len(times)), state
            state.failed = False
            count = len(times) + 1
            if count < rule.count:
                times.append(now)
                return _allowed(count), state
            last = self._alerted.get(key)
            alert = last is None or last <= horizon
            if alert:
                self._alerted[key] = now
            span = now - times[0] if times else 0.0
            if read:  # allowed, so counted; at most count - 1 kept: the window stays full
                times.append(now)
                if len(times) >= rule.count:
                    times.popleft()
            return LoopVerdict(read, count, alert, name, span), state

    def decide(self, call: GateCall) -> Verdict | None:
        spec = call.spec
        read = spec.reversibility == "read"
        digest = call.args_digest
        if spec.volatile_list:
            digest = loop_digest(call.canonical_args, spec.volatile_list)
        verdict, state = self._check(call.agent_id, spec.name, digest, call.workflow_id, read)
        call.loop_state = state
        if verdict.allowed and not verdict.alert:
            return None
        name, rule = self.rule(spec.name, call.agent_id, read)
        where = (
            f"in workflow {call.workflow_id}" if rule.per == "workflow" else "across its workflows"
        )
        what = (
            f"{call.agent_id} called {spec.name} with the same arguments {verdict.count} times "
            f"in {verdict.span_s:.1f} s {where}"
        )
        limit = f"rule {name}: {rule.count} within {rule.window_s:g} s"
        if read:
            why = f"{what}; allowed, reads are never refused ({limit})"
        else:
            why = f"{what}; refused by the SDK's loop guard ({limit})"
        alert = None
        if verdict.alert:
            alert = AlertSpec(
                "runaway_loop",
                why,
                name,
                severity="info" if read else "warning",
                attributes={
                    "rule": name,
                    "by": "sdk-loop-guard",
                    "tool": spec.name,
                    "args_digest": call.args_digest.hex(),
                    "loop_digest": digest.hex(),
                    "count": str(verdict.count),
                    "limit": str(rule.count),
                    "window_s": f"{rule.window_s:g}",
                    "span_s": f"{verdict.span_s:.3f}",
                    "per": rule.per,
                },
            )
        if read:
            if alert is None:
                return None
            return Verdict("allow", PolicyDecision("allow", why, name), alert=alert)
        return Verdict.refuse(LoopRefused(why), PolicyDecision("deny", why, name), alert)

    def _prune(self, now: float) -> None:
        """Make room: drop keys idle past their window, then, if every key is recent (more
        than `max_keys` distinct calls within one window), the least recently seen tenth.
        Amortised O(1) per call: the next prune is `max_keys // 10` new keys away."""
        seen = self._seen
        stale = []
        for k, state in seen.items():  # least recently seen first
            t = state.times
            if t and t[-1] > now - state.window_s:
                break
            stale.append(k)
        if len(seen) - len(stale) >= self.max_keys:
            keep = self.max_keys - max(1, self.max_keys // 10)
            stale = list(seen)[: len(seen) - keep]
        for key in stale:
            del seen[key]
            self._alerted.pop(key, None)


# -- quarantine gate ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class QuarantineState:
    workflow_id: str
    reason: str
    by: str
    event_id: str | None
    #: "run" quarantines only `run_id`; "workflow" and "tainted" stop every run (fail closed)
    scope: str = "workflow"
    run_id: str | None = None

    def applies_to(self, run_id: str | None) -> bool:
        return self.scope != "run" or run_id is None or run_id == self.run_id


def parse_quarantine_value(workflow_id: str, value: bytes | None) -> QuarantineState | None:
    """None when the value lifts a quarantine (tombstone or `Release`), else the state.

    A value that does not decode fails closed: the workflow counts as quarantined.
    """
    if value is None:
        return None
    from wakeline.schemas import decode_event  # the codec; pure, no Kafka

    try:
        event = decode_event(value)
    except Exception as e:  # noqa: BLE001 - any bad record must fail closed
        return QuarantineState(workflow_id, f"undecodable quarantine record ({e})", "?", None)
    if event.get("type") == "Release":
        return None
    return QuarantineState(
        workflow_id,
        str(event.get("reason") or "quarantined"),
        str(event.get("by") or event.get("principal") or "?"),
        event.get("event_id"),
        str(event.get("scope") or "workflow"),
        event.get("run_id"),
    )


class QuarantineGate:
    """Refuses calls of quarantined workflows: a thin user of a `StateReader` of the
    compacted `<prefix>quarantines` topic.

    `fail_closed` is the choice for when the reader is not live (still catching up, or its
    consumer broken and restarting): True refuses every call ("quarantine state unknown");
    False (the default, so an agent keeps working on the spool while the broker is away)
    serves the last state it had, and logs a warning each time the reader stops being live.
    The first call waits up to `startup_timeout_s` for the first catch-up either way.
    """

    name = "quarantine"
    #: re-checked after another gate made the call wait: a quarantine may start meanwhile
    recheck_after_wait = True

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        poll_interval_s: float = 0.05,
        startup_timeout_s: float = 5.0,
        fail_closed: bool = False,
        start: bool = True,
        consumer_factory: Callable[[Mapping[str, Any]], Any] | None = None,
    ) -> None:
        self.kafka = kafka
        self.topic = kafka.topics.quarantines
        self.startup_timeout_s = startup_timeout_s
        self.fail_closed = fail_closed
        self.reader: StateReader[QuarantineState] = StateReader(
            kafka,
            self.topic,
            _parse_quarantine_record,
            name="quarantine",
            poll_interval_s=poll_interval_s,
            consumer_factory=consumer_factory,
        )
        self._started_waiting = False
        self._warned_health: str | None = None
        if start:
            self.reader.start()

    @classmethod
    def offline(cls, *, fail_closed: bool = False) -> QuarantineGate:
        """A gate with no consumer: its state is only what `apply` feeds it (tests)."""
        gate = cls(KafkaSettings(bootstrap=""), fail_closed=fail_closed, start=False)
        gate.reader.start_offline()
        return gate

    def start(self) -> QuarantineGate:
        self.reader.start()
        return self

    # -- the Gate protocol ----------------------------------------------------------------
    def decide(self, call: GateCall) -> Verdict | None:
        q = self.check(call.workflow_id, call.run_id)
        what = f"workflow {call.workflow_id}"
        if q is None:
            # an agent or a boundary quarantined everywhere (compensator/scopes.py): the
            # compensator keys them `agent:<id>` / `boundary:<b>` on the same topic
            for kind, value in (("agent", call.agent_id), ("boundary", call.boundary)):
                if value:
                    q = self.reader.get(f"{kind}:{value}".encode("utf-8", "surrogatepass"))
                    if q is not None:
                        what = f"{kind} {value}"
                        break
        if q is None:
            return None
        why = f"{what} is quarantined by {q.by}: {q.reason}"
        return Verdict.refuse(WorkflowQuarantined(why), PolicyDecision("deny", why, self.name))

    # -- state ----------------------------------------------------------------------------
    def check(self, workflow_id: str, run_id: str | None = None) -> QuarantineState | None:
        """The quarantine on `workflow_id` (and `run_id`), if any, by the rule above."""
        reader = self.reader
        if reader.health != "live":
            if not self._started_waiting:
                self._started_waiting = True
                reader.wait_live(self.startup_timeout_s)
            if reader.health != "live":
                if self.fail_closed:
                    why = f"quarantine state unknown (reader {reader.health})"
                    return QuarantineState(workflow_id, why, "gate", None)
                if self._warned_health != reader.health:
                    self._warned_health = reader.health
                    log.warning(
                        "quarantine gate: reader %s on %s; allowing calls on the last state",
                        reader.health,
                        self.topic,
                    )
        state = reader.get(workflow_id.encode())
        return state if state is not None and state.applies_to(run_id) else None

    @property
    def ready(self) -> bool:
        return self.reader.live

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self.reader.wait_live(timeout)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one record of the topic (also used by tests without a broker)."""
        self.reader.apply(key, value)

    def close(self) -> None:
        self.reader.close()


def _parse_quarantine_record(key: bytes, value: bytes | None) -> QuarantineState | None:
    return parse_quarantine_value(key.decode("utf-8", "replace"), value)
