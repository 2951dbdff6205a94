"""The loop detector: runaway loops in the whole event stream, across SDK processes.

A processor on the Kafka runner (processors/stream.py), consumer group
`<prefix>loop-detector` on `<prefix>events`. It reads `ToolIntent` and `ToolResult` events
(any other type is skipped by the fingerprint in its frame, without decoding) and applies
the rules of `DetectionRules` (infra/detection.py, `docs/detection.md`), with each call's
thresholds (per tool, per agent). Windows run on the events' own `time`, so a replay gives
the same verdicts as the live run.

- `repeat`: the same (agent, tool, argument digest) `count` times within `window_s`, per
  workflow (or per agent across its workflows with `per = "agent"`). A call that follows a
  failed call (`error`, `aborted`) of the same key is a retry: up to `retry_budget` such
  retries in a row are not counted. Read-only tools follow `repeat_read` instead.
- `no_progress`: a read-only tool returning the same result digest for `count` distinct
  argument digests within `window_s`, per workflow (polling a job that never finishes with
  a moving `since`, paging past the end). Identical re-reads are `repeat_read`'s; writes
  that answer alike (acknowledgements) are not a lack of progress, and a write loop is
  `repeat`'s.
- `ping_pong`: per workflow, the sequence of calls (agent, tool, argument digest), runs of
  the same call collapsed, ends in a cycle of 2 or 3 distinct calls repeated `cycles` times
  within `window_s`, over at least two tools or two agents (one tool alternating between two
  arguments, re-reading two customers, is not a cycle). A cycle whose calls are made by
  different agents is a hand-off loop.
  Calls with new arguments each time (a planner and an executor at work, pagination) are
  not a cycle.
- `rate`: more intents within `window_s` than `per_workflow`, `per_agent` or `per_tool`.

Near-duplicates: an intent listing `volatile_fields` (dotted paths of its arguments the
registry marks volatile: request ids, timestamps) is compared by the digest of its logged
arguments without those paths.

One alert per incident: a key that raised an alert stays quiet until its window empties
(or, for ping_pong, until the cycle breaks). A workflow the detector quarantined is not
quarantined again by a later incident; that incident only alerts.

State is windowed and in memory. On assignment each partition is re-read from the first
record within the longest window (`offsets_for_times`) and replayed without alerting up to
the group's committed offset, so a restarted or moved detector neither forgets a loop in
progress nor alerts twice (docs/decisions.md, "Loop detector").
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import blake3

from wakeline.infra.detection import DetectionRules, Rule
from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.ledger.records import LedgerRecord
from wakeline.schemas import default_codec

from .alerts import incident_outputs
from .stream import (
    COMMITTED,
    Applied,
    Assigned,
    FrameTypes,
    KafkaRunner,
    Output,
    PublishError,
    Rewind,
    RunnerSettings,
)

log = logging.getLogger(__name__)

#: partitions, since (ms since the epoch) -> {partition: (first offset at/after since or
#: None, the group's committed offset or None)}

_FAILED = frozenset({"error", "aborted"})
#: intents remembered for their results (per partition)
MAX_INTENTS = 200_000


@dataclass
class _Work:
    outputs: list[Output]
    commit: dict[int, int]


class _Window:
    """One key's events within its window: (time µs, event id, extra) oldest first."""

    __slots__ = ("alerted", "entries", "failed", "retries")

    def __init__(self) -> None:
        self.entries: deque[tuple[int, str, Any]] = deque()
        self.alerted = False
        self.failed = False
        self.retries = 0

    def add(self, t: int, eid: str, extra: Any, window_us: int) -> int:
        entries = self.entries
        horizon = t - window_us
        while entries and entries[0][0] <= horizon:
            entries.popleft()
        if not entries:
            self.alerted = False
        entries.append((t, eid, extra))
        return len(entries)


@dataclass
class _Partition:
    repeat: dict[tuple, _Window] = field(default_factory=dict)
    no_progress: dict[tuple, _Window] = field(default_factory=dict)
    rate: dict[str, _Window] = field(default_factory=dict)
    #: workflow -> recent calls, runs collapsed: deque of ((agent, tool, digest), t, event id)
    calls: dict[str, deque] = field(default_factory=dict)
    cycling: set[str] = field(default_factory=set)
    #: intent id -> (repeat window or None, tool, agent, workflow, run, digest, read-only)
    intents: dict[str, tuple] = field(default_factory=dict)
    #: replay without alerting below this offset
    quiet_until: int = -1


class LoopDetector:
    """ToolIntent / ToolResult events -> Alert (and Quarantine) outputs, one per incident."""

    name = "loop-detector"
    fatal: tuple[type[BaseException], ...] = ()

    def __init__(
        self,
        rules: DetectionRules,
        topics: Topics,
        *,
        rewind: Callable[[list[int]], dict[int, tuple[int, int]]] | None = None,
    ) -> None:
        self.rules = rules
        self.topics = topics
        #: partitions -> (where to start re-reading, the first offset to act on); see Rewind
        self.rewind = rewind
        self.wait_for_sink: Callable[[], None] = lambda: None
        self._parts: dict[int, _Partition] = {}
        #: per-agent state across workflows (entries carry their partition, see revoke)
        self._agent_repeat: dict[tuple, _Window] = {}
        self._agent_rate: dict[str, _Window] = {}
        self._tool_rate: dict[str, _Window] = {}
        self._rule_cache: dict[tuple[str, str, str], Rule] = {}
        self._types = FrameTypes(("ToolIntent", "ToolResult"))
        self._quarantined: dict[str, None] = {}
        self._swept_at = time.monotonic()
        self._newest_us = 0
        self.max_window_us = int(
            max(r.window_s for n, r in rules.rules.items() if n in _LOOP_RULES) * 1e6
        )
        self.events_seen = 0
        self.undecodable = 0
        self.incidents = 0

    # -- runner protocol -------------------------------------------------------------------
    def assign(self, partitions: list[int]) -> Assigned:
        for p in partitions:
            self._drop(p)
            self._parts[p] = _Partition()
        offsets: dict[int, int | None] = dict.fromkeys(partitions, COMMITTED)
        if self.rewind is not None and partitions:
            for p, (start, live) in self.rewind(partitions).items():
                if start < live:
                    offsets[p] = start
                    self._parts[p].quiet_until = live
        return Assigned(offsets)

    def revoke(self, partitions: list[int]) -> None:
        for p in partitions:
            self._drop(p)

    def handle(self, records: list[LedgerRecord], now: float) -> list[Any]:
        outputs: list[Output] = []
        commit: dict[int, int] = {}
        types = self._types
        for r in records:
            commit[r.partition] = r.offset + 1
            v = r.value
            kind = types(v)
            if kind == "":
                continue
            part = self._parts.get(r.partition)
            if part is None:  # not assigned (MemoryRunner feeds any partition)
                part = self._parts[r.partition] = _Partition()
            try:
                e = default_codec().decode(v)
            except Exception:  # noqa: BLE001 - the auditor dead-letters it; nothing to count
                self.undecodable += 1
                continue
            self.events_seen += 1
            quiet = r.offset < part.quiet_until
            if kind == "ToolIntent":
                found = self._intent(e, part, r.partition)
            else:
                found = self._result(e, part, r.partition)
            if found:
                for inc in found:
                    self.incidents += 1
                    if not quiet:
                        outputs += self._outputs(inc, r.partition)
        return [_Work(outputs, commit)] if commit else []

    def due(self, now: float) -> list[Any]:
        if now - self._swept_at >= 5.0:
            self._swept_at = now
            self._sweep()
        return []

    def drain(self, partitions: list[int]) -> list[Any]:
        return []

    def apply(self, works: list[Any]) -> list[Applied]:
        return [Applied(w, w.outputs, w.commit) for w in works]

    def delivered(self, applied: list[Applied], refused: list[tuple[Output, str]]) -> list[Output]:
        if refused:
            raise PublishError(f"{refused[0][0].topic} refused a detector record: {refused[0][1]}")
        return []

    def reset(self) -> None:
        pass

    def close(self) -> None:
        closer = getattr(self.rewind, "close", None)
        if closer is not None:
            closer()

    # -- the rules -------------------------------------------------------------------------
    def _rule(self, name: str, tool: str, agent: str) -> Rule:
        key = (name, tool, agent)
        rule = self._rule_cache.get(key)
        if rule is None:
            if len(self._rule_cache) > 100_000:
                self._rule_cache.clear()
            rule = self._rule_cache[key] = self.rules.rule(name, tool=tool, agent=agent)
        return rule

    def _intent(self, e: dict[str, Any], part: _Partition, p: int) -> list[tuple]:
        wf, agent, tool, t, eid = (
            e["workflow_id"],
            e["agent_id"],
            e["tool"],
            e["time"],
            e["event_id"],
        )
        if t > self._newest_us:
            self._newest_us = t
        read = e["reversibility"] == "read"
        volatile = e.get("volatile_fields")
        digest = _digest_without(e["args"], volatile) if volatile else e["args_digest"]
        found: list[tuple] = []
        # ping_pong first: the calls of a cycle it alerted on repeat too, the same incident
        rule = self._rule("ping_pong", tool, agent)
        if rule.enabled:
            inc = self._ping_pong(rule, part, wf, (agent, tool, digest), t, eid, e)
            if inc is not None:
                found.append(inc)
        cycling = wf in part.cycling
        # repeat / repeat_read
        rname = "repeat_read" if read else "repeat"
        rule = self._rule(rname, tool, agent)
        win = None
        if rule.enabled:
            per_agent = rule.per == "agent"
            store = self._agent_repeat if per_agent else part.repeat
            key = (agent, tool, digest) if per_agent else (wf, agent, tool, digest)
            win = store.get(key)
            if win is None:
                win = store[key] = _Window()
            if win.failed and win.retries < rule.retry_budget:
                win.retries += 1  # a retry of a failed call, within the budget
                win.failed = False
            else:
                win.failed = False
                n = win.add(t, eid, (p, wf), int(rule.window_s * 1e6))
                if n >= rule.count and not win.alerted:
                    win.alerted = True
                    if not cycling:
                        found.append(self._repeat_incident(rname, rule, e, win, per_agent))
        if len(part.intents) >= MAX_INTENTS:
            del part.intents[next(iter(part.intents))]
        part.intents[eid] = (win, tool, agent, wf, e["run_id"], digest, read)
        # rate
        rule = self._rule("rate", tool, agent)
        if rule.enabled:
            w_us = int(rule.window_s * 1e6)
            for limit, store, who, scope in (
                (rule.per_workflow, part.rate, wf, "workflow"),
                (rule.per_agent, self._agent_rate, agent, "agent"),
                (rule.per_tool, self._tool_rate, tool, "tool"),
            ):
                if not limit:
                    continue
                win = store.get(who)
                if win is None:
                    win = store[who] = _Window()
                n = win.add(t, eid, p, w_us)
                if n > limit and not win.alerted:
                    win.alerted = True
                    found.append(self._rate_incident(rule, e, win, scope, who, limit))
        return found

    def _result(self, e: dict[str, Any], part: _Partition, p: int) -> list[tuple]:
        memo = part.intents.get(e["intent_id"])
        if memo is None:
            return []
        win, tool, agent, wf, run, digest, read = memo
        status = e["status"]
        if win is not None:
            if status in _FAILED:
                win.failed = True
            elif status == "ok":
                win.failed = False
                win.retries = 0
        result = e["result_digest"]
        if not read or status != "ok" or result is None:
            return []
        rule = self._rule("no_progress", tool, agent)
        if not rule.enabled:
            return []
        key = (wf, tool, result)
        win = part.no_progress.get(key)
        if win is None:
            win = part.no_progress[key] = _Window()
        win.add(e["time"], e["event_id"], digest, int(rule.window_s * 1e6))
        distinct = {x[2] for x in win.entries}
        if len(distinct) < rule.count or win.alerted:
            return []
        win.alerted = True
        span = _span_s(win.entries)
        detail = (
            f"{agent} called {tool} {len(win.entries)} times with {len(distinct)} different "
            f"arguments in {span:.1f} s (workflow {wf}) and got the same result each time: "
            "no progress"
        )
        attrs = {"tool": tool, "agent": agent, "count": len(win.entries),
                 "distinct_arguments": len(distinct), "threshold": rule.count,
                 "window_s": f"{rule.window_s:g}", "span_s": f"{span:.3f}",
                 "result_digest": result.hex()}  # fmt: skip
        ids = [x[1] for x in win.entries]
        return [("no_progress", wf, run, e.get("tenant"), detail, ids, attrs)]

    def _repeat_incident(
        self, rname: str, rule: Rule, e: dict[str, Any], win: _Window, per_agent: bool
    ) -> tuple:
        agent, tool, wf = e["agent_id"], e["tool"], e["workflow_id"]
        n, span = len(win.entries), _span_s(win.entries)
        what = _describe_args(e["args"])
        workflows = {x[2][1] for x in win.entries}
        where = (
            f"across {len(workflows)} workflows" if per_agent and len(workflows) > 1
            else f"in workflow {wf}"
        )  # fmt: skip
        detail = (
            f"{agent} called {tool}{' (read-only)' if rname == 'repeat_read' else ''}"
            f"{f' for {what}' if what else ''} with the same arguments {n} times in "
            f"{span:.1f} s {where}"
        )
        attrs = {"tool": tool, "agent": agent, "count": n, "threshold": rule.count,
                 "window_s": f"{rule.window_s:g}", "span_s": f"{span:.3f}", "per": rule.per,
                 "args_digest": e["args_digest"].hex()}  # fmt: skip
        if per_agent:
            attrs["workflows"] = len(workflows)
        ids = [x[1] for x in win.entries]
        return (rname, wf, e["run_id"], e.get("tenant"), detail, ids, attrs)

    def _ping_pong(
        self, rule: Rule, part: _Partition, wf: str, call: tuple, t: int, eid: str,
        e: dict[str, Any],
    ) -> tuple | None:  # fmt: skip
        seq = part.calls.get(wf)
        if seq is None or seq.maxlen != 3 * rule.cycles:
            seq = part.calls[wf] = deque(seq or (), maxlen=3 * rule.cycles)
        if seq and seq[-1][0] == call:
            return None  # a run of the same call: repeat's business
        seq.append((call, t, eid))
        horizon = t - int(rule.window_s * 1e6)
        for length in (2, 3):
            n = length * rule.cycles
            if len(seq) < n or seq[-n][1] <= horizon:
                continue
            tail = list(seq)[-n:]
            cycle = [c[0] for c in tail[:length]]
            if len(set(cycle)) != length:
                continue
            if len({(a, tl) for a, tl, _ in cycle}) < 2:
                continue  # one tool of one agent with alternating arguments: re-reads, not a cycle
            if all(tail[i][0] == tail[i - length][0] for i in range(length, n)):
                if wf in part.cycling:
                    return None
                part.cycling.add(wf)
                agents = list(dict.fromkeys(c[0] for c in cycle))
                hand_off = len(agents) > 1
                shown = " -> ".join(f"{a}:{tl}" if hand_off else tl for a, tl, _ in cycle)
                span = (t - tail[0][1]) / 1e6
                detail = (
                    f"{'hand-off loop between ' + ', '.join(agents) if hand_off else 'cycle'}"
                    f" in workflow {wf}: {shown} -> ... went round {rule.cycles} times in "
                    f"{span:.1f} s"
                )
                attrs = {"cycle": " -> ".join(f"{a}:{tl}" for a, tl, _ in cycle),
                         "length": length, "cycles": rule.cycles, "agents": ",".join(agents),
                         "window_s": f"{rule.window_s:g}", "span_s": f"{span:.3f}"}  # fmt: skip
                return ("ping_pong", wf, e["run_id"], e.get("tenant"), detail,
                        [c[2] for c in tail], attrs)  # fmt: skip
        part.cycling.discard(wf)
        return None

    def _rate_incident(
        self, rule: Rule, e: dict[str, Any], win: _Window, scope: str, who: str, limit: int
    ) -> tuple:
        n, span = len(win.entries), _span_s(win.entries)
        detail = (
            f"{scope} {who} made {n} calls in {span:.1f} s, over its ceiling of {limit} "
            f"per {rule.window_s:g} s (the newest: {e['agent_id']} calling {e['tool']} in "
            f"workflow {e['workflow_id']})"
        )
        attrs = {"scope": scope, scope: who, "count": n, "ceiling": limit,
                 "window_s": f"{rule.window_s:g}", "span_s": f"{span:.3f}"}  # fmt: skip
        ids = [win.entries[0][1], e["event_id"]]
        return ("rate", e["workflow_id"], e["run_id"], e.get("tenant"), detail, ids, attrs)

    def _outputs(self, inc: tuple, partition: int) -> list[Output]:
        rule, wf, run, tenant, detail, ids, attrs = inc
        quarantine = wf not in self._quarantined
        out = incident_outputs(
            rule, "runaway_loop", {"workflow_id": wf, "run_id": run, "tenant": tenant}, detail,
            ids, attrs, topics=self.topics, rules=self.rules, partition=partition,
            quarantine=quarantine,
        )  # fmt: skip
        if len(out) > 2:  # quarantined now: later incidents of the workflow only alert
            if len(self._quarantined) >= 100_000:
                del self._quarantined[next(iter(self._quarantined))]
            self._quarantined[wf] = None
        log.warning("loop detector: %s: %s", rule, detail)
        return out

    # -- bookkeeping -----------------------------------------------------------------------
    def _drop(self, p: int) -> None:
        self._parts.pop(p, None)
        for store in (self._agent_repeat, self._agent_rate, self._tool_rate):
            for key in list(store):
                win = store[key]
                kept = [x for x in win.entries if _partition_of(x) != p]
                if len(kept) != len(win.entries):
                    win.entries = deque(kept)
                if not win.entries:
                    del store[key]

    def _sweep(self) -> None:
        """Forget keys whose newest event is older than the longest window."""
        horizon = self._newest_us - self.max_window_us
        stores: list[dict] = [self._agent_repeat, self._agent_rate, self._tool_rate]
        for part in self._parts.values():
            stores += [part.repeat, part.no_progress, part.rate]
            for wf in [wf for wf, seq in part.calls.items() if not seq or seq[-1][1] <= horizon]:
                del part.calls[wf]
                part.cycling.discard(wf)
        for store in stores:
            for key in [
                k for k, w in store.items() if not w.entries or w.entries[-1][0] <= horizon
            ]:
                del store[key]


_LOOP_RULES = ("repeat", "repeat_read", "no_progress", "ping_pong", "rate")


def _partition_of(entry: tuple) -> int:
    extra = entry[2]
    return extra[0] if isinstance(extra, tuple) else extra


def _span_s(entries: Iterable[tuple]) -> float:
    entries = list(entries)
    return (entries[-1][0] - entries[0][0]) / 1e6 if entries else 0.0


def _digest_without(args: str, paths: list[str]) -> bytes:
    """The digest of logged arguments (canonical JSON) without the dotted `paths`."""
    try:
        doc = json.loads(args)
    except ValueError:
        return blake3.blake3(args.encode()).digest()
    for path in paths:
        _remove(doc, path.split("."))
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return blake3.blake3(text.encode()).digest()


def _remove(node: Any, parts: list[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _remove(item, parts)
    elif isinstance(node, dict) and parts:
        if len(parts) == 1:
            node.pop(parts[0], None)
        elif parts[0] in node:
            _remove(node[parts[0]], parts[1:])


_NAMING = ("customer", "id", "record", "to", "name", "sku", "job", "account", "user")


def _describe_args(args: str, most: int = 2) -> str:
    """A few of the arguments, for an alert's detail: 'customer cus_123, amount_cents 1000'."""
    try:
        doc = json.loads(args)
    except ValueError:
        return ""
    if not isinstance(doc, dict):
        return ""
    shown = []
    # what names the thing acted on first (customer, record id, recipient), then the rest
    for k, v in sorted(doc.items(), key=lambda kv: not any(w in kv[0] for w in _NAMING)):
        if isinstance(v, str | int | float) and not isinstance(v, bool) and len(str(v)) <= 40:
            if "REDACTED" in str(v) or k in ("idempotency_key",):
                continue
            shown.append(f"{k} {v}")
        if len(shown) >= most:
            break
    return ", ".join(shown)


# -- on the Kafka runner -------------------------------------------------------------------


def loop_runner(
    kafka: KafkaSettings, rules: DetectionRules | None = None, *, stall_after_s: float = 60.0
) -> KafkaRunner:
    """The loop detector on the Kafka runner, group `<prefix>loop-detector`."""
    group = f"{kafka.topics.prefix}loop-detector"
    detector = LoopDetector(rules if rules is not None else DetectionRules.from_env(), kafka.topics)
    window_s = detector.max_window_us / 1_000_000
    detector.rewind = Rewind(kafka.client_config, group, kafka.topics.events, window_s)
    return KafkaRunner(
        detector,
        kafka.topics.events,
        kafka.client_config,
        RunnerSettings(
            group_id=group, batch_size=5000, poll_timeout_s=0.02, stall_after_s=stall_after_s
        ),  # fmt: skip
        producer_config={"linger.ms": 0},
    )
