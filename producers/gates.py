"""Gates that run before a tool does: quarantine, loop guard, policy (DESIGN §7, §8).

- `QuarantineGate` keeps the current state of the compacted `<prefix>quarantines` topic
  (key = workflow id; value = a `Quarantine` event, or a `Release` event / tombstone that lifts
  it) with a background consumer, so a quarantined workflow is refused within a poll interval.
- `LoopGuard` refuses the same (agent, tool, args digest) once it has run `max_repeats - 1`
  times within `window_s` seconds, locally, before the loop detector downstream would notice.
- `PolicyHook` is any callable `PolicyRequest -> PolicyDecision`; `allow_all` is the default.
  The full policy engine (a later issue) plugs in here. The decision goes into the intent.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from wakeline.infra.settings import KafkaSettings
from wakeline.producers.registry import ToolSpec

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
class PolicyDecision:
    outcome: Outcome
    reason: str = ""
    policy: str = "default"

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"policy outcome {self.outcome!r} is not one of {OUTCOMES}")


PolicyHook = Callable[[PolicyRequest], PolicyDecision]

ALLOW_ALL = PolicyDecision("allow", "no policy configured", "allow-all")


def allow_all(_request: PolicyRequest) -> PolicyDecision:
    """The default policy: everything is allowed (and recorded as such in the intent)."""
    return ALLOW_ALL


# -- loop guard --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LoopVerdict:
    allowed: bool
    count: int = 0
    alert: bool = False  # first refusal of this key in a window: emit an Alert


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


@dataclass
class LoopGuard:
    """Refuse the `max_repeats`-th identical call within `window_s` seconds."""

    max_repeats: int = 5
    window_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    max_keys: int = 100_000
    _seen: dict[tuple[str, str, bytes], deque[float]] = field(default_factory=dict)
    _alerted: dict[tuple[str, str, bytes], float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.max_repeats < 2:
            raise ValueError("max_repeats must be at least 2 (1 would refuse every call)")
        if self.window_s <= 0:
            raise ValueError("window_s must be positive")

    def check(self, agent_id: str, tool: str, args_digest: bytes) -> LoopVerdict:
        now = self.clock()
        key = (agent_id, tool, args_digest)
        with self._lock:
            seen = self._seen
            # Re-inserted below, so the dict runs from least to most recently seen.
            times = seen.pop(key, None)
            if times is None:
                if len(seen) >= self.max_keys:
                    self._prune(now)
                times = deque()
            seen[key] = times
            horizon = now - self.window_s
            while times and times[0] <= horizon:
                times.popleft()
            if len(times) + 1 >= self.max_repeats:
                last = self._alerted.get(key)
                alert = last is None or last <= horizon
                if alert:
                    self._alerted[key] = now
                return LoopVerdict(False, len(times) + 1, alert)
            times.append(now)
            return _allowed(len(times))

    def _prune(self, now: float) -> None:
        """Make room: drop keys idle past the window, then, if every key is recent (more
        than `max_keys` distinct calls within one window), the least recently seen tenth.
        Amortised O(1) per call: the next prune is `max_keys // 10` new keys away."""
        horizon = now - self.window_s
        seen = self._seen
        stale = []
        for k, t in seen.items():  # least recently seen first
            if t and t[-1] > horizon:
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
    """Current quarantine state, from a background consumer of the compacted topic."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        poll_interval_s: float = 0.05,
        startup_timeout_s: float = 5.0,
        fail_closed: bool = False,
    ) -> None:
        self.kafka = kafka
        self.topic = kafka.topics.quarantines
        self.poll_interval_s = poll_interval_s
        self.startup_timeout_s = startup_timeout_s
        self.fail_closed = fail_closed
        self._state: dict[str, QuarantineState] = {}
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._warned = False
        self._thread: threading.Thread | None = None
        if kafka.bootstrap:
            self._thread = threading.Thread(
                target=self._run, name="wakeline-quarantine", daemon=True
            )
            self._thread.start()
        else:
            self._ready.set()

    @classmethod
    def offline(cls, *, fail_closed: bool = False) -> QuarantineGate:
        """A gate with no consumer: its state is only what `apply` feeds it (tests)."""
        return cls(KafkaSettings(bootstrap=""), fail_closed=fail_closed)

    def check(self, workflow_id: str, run_id: str | None = None) -> QuarantineState | None:
        """The quarantine on `workflow_id` (and `run_id`), if any. Waits for the first
        catch-up once."""
        if not self._ready.is_set() and not self._ready.wait(self.startup_timeout_s):
            if self.fail_closed:
                return QuarantineState(workflow_id, "quarantine state unknown", "gate", None)
            if not self._warned:
                self._warned = True
                log.warning("quarantine gate not caught up on %s; allowing calls", self.topic)
        state = self._state.get(workflow_id)
        return state if state is not None and state.applies_to(run_id) else None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one record of the topic (also used by tests without a broker)."""
        if key is None:
            return
        workflow_id = key.decode("utf-8", "replace")
        state = parse_quarantine_value(workflow_id, value)
        if state is None:
            self._state.pop(workflow_id, None)
        else:
            self._state[workflow_id] = state

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

        consumer = Consumer(
            self.kafka.client_config(
                **{
                    "group.id": f"wakeline-gate-{uuid.uuid4()}",
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                    "fetch.wait.max.ms": max(10, int(self.poll_interval_s * 1000)),
                    "auto.offset.reset": "earliest",
                }
            )
        )
        try:
            partitions: list[int] = []
            while not partitions and not self._stop.is_set():
                try:
                    meta = consumer.list_topics(self.topic, timeout=0.5)
                    tmeta = meta.topics.get(self.topic)
                    if tmeta is not None and tmeta.error is None:
                        partitions = sorted(tmeta.partitions)
                except Exception as e:  # noqa: BLE001 - broker down: keep trying
                    log.debug("quarantine gate: metadata for %s failed: %s", self.topic, e)
                if not partitions:
                    self._stop.wait(0.5)
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
            at_eof: set[int] = set()
            while not self._stop.is_set():
                for msg in consumer.consume(1000, self.poll_interval_s):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            at_eof.add(msg.partition())
                            if len(at_eof) >= len(partitions):
                                self._ready.set()
                        else:
                            log.warning("quarantine gate: %s", err)
                        continue
                    self.apply(msg.key(), msg.value())
        except Exception:  # noqa: BLE001
            log.exception("quarantine gate consumer stopped")
        finally:
            consumer.close()
