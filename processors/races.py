"""Races between agents: tool calls re-keyed by resource, and the race detector.

Two processors on the runner (processors/stream.py), so detection is right however many
workers share the partitions of `<prefix>events`:

    <prefix>events --(resource keyer)--> <prefix>resources --(race detector)--> alerts
      keyed by workflow                   keyed by resource key                <prefix>alerts
                                                                               <prefix>events

- The **resource keyer** (group `<prefix>resource-keyer`) turns each ToolIntent into one
  record per resource key it reads or writes, and each ToolResult into one per key of its
  intent (the intent is on the same events partition: both are keyed by the workflow). It
  remembers, per partition and within the window, every event that touched a resource and
  the causal links (`parent_event_ids`) between events, so each record names the earlier
  calls on the same key it descends from, however many events of the workflow lie between.
- The **race detector** (group `<prefix>race-detector`) keeps, per resource key and within
  the window, the calls on it and decides the rules `race_overlap`, `race_version` and
  `lost_update` (infra/detection.py) on event times, not arrival order: keyers that lag
  each other deliver a key's records of different workflows in any order.

The record format of `<prefix>resources` is in docs/detection.md. Both processors restore
their state on assignment by re-reading one window of their input before the group's
committed offset, producing nothing for what they re-read (docs/decisions.md says why).
An incident raises one Alert (`race_alert`), on `<prefix>alerts` and on the later call's
workflow partition of `<prefix>events`, so it is ledgered.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import blake3

from wakeline.infra.detection import DetectionRules
from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.ledger.records import LedgerRecord

from .alerts import SCOPES, alert_outputs
from .stream import COMMITTED, Applied, Assigned, KafkaRunner, Output, Rewind, RunnerSettings

log = logging.getLogger(__name__)

#: the version of the `<prefix>resources` record format (docs/detection.md)
RESOURCE_FORMAT = 1
RACE_RULES = ("race_overlap", "race_version", "lost_update")
#: most causes one resource record names (a long chain keeps its newest)
MAX_PARENTS = 64
DETECTOR_ID = "wakeline-race-detector"


def race_window_s(rules: DetectionRules) -> float:
    """The longest window of the race rules, overrides included: what both processors keep."""
    windows = [rules.rules[n].window_s for n in RACE_RULES]
    for scope in (*rules.tools.values(), *rules.agents.values()):
        for n in RACE_RULES:
            if "window_s" in scope.get(n, {}):
                windows.append(float(scope[n]["window_s"]))
    return max(windows)


@dataclass
class _Batch:
    """One handle() call's outputs and the offsets they complete."""

    outputs: list[Output]
    commit: dict[int, int]


class _Windowed:
    """What both processors share: replay on assignment, one unit of work per batch."""

    name = "windowed"
    fatal: tuple[type[BaseException], ...] = ()

    def __init__(self, rewind: Callable[[list[int]], dict[int, tuple[int, int]]] | None) -> None:
        self.rewind = rewind
        #: partition -> first offset whose outputs count (below it: re-read to restore state)
        self.live_from: dict[int, int] = {}
        self.wait_for_sink: Callable[[], None] = lambda: None
        self.undecodable = 0
        #: records `take` failed on (logged with their position)
        self.skipped = 0

    def assign(self, partitions: list[int]) -> Assigned:
        self.revoke(partitions)
        if self.rewind is None:
            return Assigned(dict.fromkeys(partitions, COMMITTED))
        where = self.rewind(partitions)
        offsets: dict[int, int | None] = {}
        for p in partitions:
            start, live = where[p]
            offsets[p] = start
            self.live_from[p] = live
            if live > start:
                log.info("%s: re-reading partition=%d from=%d to=%d", self.name, p, start, live)
        return Assigned(offsets)

    def revoke(self, partitions: list[int]) -> None:
        for p in partitions:
            self.live_from.pop(p, None)
            self.forget(p)

    def forget(self, partition: int) -> None: ...

    def handle(self, records: list[LedgerRecord], now: float) -> list[Any]:
        outputs: list[Output] = []
        commit: dict[int, int] = {}
        live_from = self.live_from
        for r in records:
            live = r.offset >= live_from.get(r.partition, 0)
            try:
                made = self.take(r)
            except Exception:  # a record no rule foresaw: say where, never stall on it
                self.skipped += 1
                log.exception("%s: record skipped partition=%d offset=%d",
                              self.name, r.partition, r.offset)  # fmt: skip
                made = None
            if live:
                commit[r.partition] = r.offset + 1
                if made:
                    outputs += made
        return [_Batch(outputs, commit)] if commit else []

    def take(self, record: LedgerRecord) -> list[Output] | None: ...

    def due(self, now: float) -> list[Any]:
        return []

    def drain(self, partitions: list[int]) -> list[Any]:
        return []

    def apply(self, works: list[Any]) -> list[Applied]:
        return [Applied(w, w.outputs, w.commit) for w in works]

    def delivered(self, applied: list[Applied], refused: list[tuple[Output, str]]) -> list[Output]:
        for o, why in refused:  # bounded records: only a misconfigured broker refuses them
            log.error("%s: the broker refused a record topic=%s key=%r reason=%s",
                      self.name, o.topic, o.key, why)  # fmt: skip
        return []

    def reset(self) -> None:
        pass

    def close(self) -> None:
        if isinstance(self.rewind, Rewind):
            self.rewind.close()


# -- the resource keyer ------------------------------------------------------------------------


class _Touched(NamedTuple):
    """What the keyer remembers of an event within the window."""

    time: int
    #: keys the call reads / writes (a result: those of its intent)
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    #: earlier events of this partition, within the window, that touched a resource and
    #: that this one descends from (through parent_event_ids, a result through its intent)
    causes: frozenset[str]
    tool: str
    expected_version: str | None


_NO_CAUSES: frozenset[str] = frozenset()


def resource_record(
    kind: str,
    event: dict[str, Any],
    intent: str,
    tool: str,
    parents: list[str],
    expected_version: str | None,
    partition: int,
    offset: int,
    status: str | None = None,
    of: str | None = None,
) -> bytes:
    """One record of `<prefix>resources` (docs/detection.md): a JSON object, versioned.
    Written by hand with the json module's C string escaper: a third of `json.dumps`'s
    time, and the keyer writes one per resource key of every call."""
    q = _quote
    return (
        f'{{"v":{RESOURCE_FORMAT},"kind":{q(kind)},"of":{_maybe(of)},'
        f'"workflow":{q(event["workflow_id"])},"run":{q(event["run_id"])},'
        f'"agent":{q(event["agent_id"])},"tool":{q(tool)},"event":{q(event["event_id"])},'
        f'"intent":{q(intent)},"status":{_maybe(status)},"time":{int(event["time"])},'
        f'"parents":[{",".join(map(q, parents))}],'
        f'"expected_version":{_maybe(expected_version)},'
        f'"partition":{int(partition)},"offset":{int(offset)}}}'
    ).encode()


_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _maybe(value: str | None) -> str:
    return "null" if value is None else _quote(value)


class ResourceKeyer(_Windowed):
    """`<prefix>events` -> `<prefix>resources`: each tool call once per resource key.

    A result whose intent the keyer has not seen (older than the window, or its intent
    never reached the events topic) cannot be keyed: nothing says which resources it
    touched. It is counted in `results_unmatched` and produces nothing; the detector has
    forgotten such an old intent too, so nothing is lost that it could still use."""

    name = "resource-keyer"

    def __init__(
        self,
        resources_topic: str,
        window_s: float,
        rewind: Callable[[list[int]], dict[int, tuple[int, int]]] | None = None,
        *,
        max_remembered: int = 500_000,
    ) -> None:
        super().__init__(rewind)
        self.topic = resources_topic
        self.window_us = int(window_s * 1_000_000)
        self.max_remembered = max_remembered
        self._seen: dict[int, OrderedDict[str, _Touched]] = {}
        self._evicted_at: dict[int, int] = {}
        self.results_unmatched = 0
        self.records_out = 0

    def forget(self, partition: int) -> None:
        self._seen.pop(partition, None)
        self._evicted_at.pop(partition, None)

    def take(self, r: LedgerRecord) -> list[Output] | None:
        from wakeline.schemas import decode_event

        if r.value is None:
            return None
        try:
            e = decode_event(r.value)
        except Exception:  # the audit publisher dead-letters it with the reason
            self.undecodable += 1
            return None
        p = r.partition
        seen = self._seen.get(p)
        if seen is None:
            seen = self._seen[p] = OrderedDict()
        t = e["time"]
        if t - self._evicted_at.get(p, 0) > self.window_us // 16 or len(seen) > self.max_remembered:
            self._evicted_at[p] = t  # forget what is older than the window, now and then
            horizon = t - self.window_us
            limit = self.max_remembered
            while seen and (next(iter(seen.values())).time < horizon or len(seen) > limit):
                seen.popitem(last=False)
        etype = e["type"]
        parents = e["parent_event_ids"]
        causes = self._causes(seen, parents) if parents else _NO_CAUSES
        if etype == "ToolIntent":
            reads, writes = tuple(e["resources_read"]), tuple(e["resources_written"])
            if not reads and not writes:
                if causes:
                    seen[e["event_id"]] = _Touched(t, (), (), causes, e["tool"], None)
                return None
            version = e.get("expected_version")
            seen[e["event_id"]] = _Touched(t, reads, writes, causes, e["tool"], version)
            out = [
                self._out(key, "read", e, e["event_id"], e["tool"], parents, causes, seen,
                          version, r)
                for key in reads
            ]  # fmt: skip
            out += [
                self._out(key, "write", e, e["event_id"], e["tool"], parents, causes, seen,
                          version, r)
                for key in writes
            ]  # fmt: skip
            return out
        if etype == "ToolResult":
            intent = seen.get(e["intent_id"])
            if intent is None:
                self.results_unmatched += 1
                log.debug("result of an intent not seen intent_id=%s", e["intent_id"])
                if causes:
                    seen[e["event_id"]] = _Touched(t, (), (), causes, "", None)
                return None
            causes = causes | intent.causes | {e["intent_id"]}
            seen[e["event_id"]] = _Touched(
                t, intent.reads, intent.writes, causes, intent.tool, intent.expected_version
            )
            status = e["status"]
            out = [
                self._out(key, "result", e, e["intent_id"], intent.tool, parents, causes, seen,
                          intent.expected_version, r, status, "read")
                for key in intent.reads
            ]  # fmt: skip
            out += [
                self._out(key, "result", e, e["intent_id"], intent.tool, parents, causes, seen,
                          intent.expected_version, r, status, "write")
                for key in intent.writes
            ]  # fmt: skip
            return out
        if causes:  # another event on a causal path (a hand-off, an approval)
            seen[e["event_id"]] = _Touched(t, (), (), causes, "", None)
        return None

    @staticmethod
    def _causes(seen: OrderedDict[str, _Touched], parents: list[str]) -> frozenset[str]:
        found: set[str] = set()
        for q in parents:
            known = seen.get(q)
            if known is None:
                continue
            if known.reads or known.writes:
                found.add(q)
            found |= known.causes
        if len(found) > 4 * MAX_PARENTS:  # a long chain: keep the newest (ids sort by time)
            found = set(sorted(found)[-4 * MAX_PARENTS :])
        return frozenset(found)

    def _out(
        self,
        key: str,
        kind: str,
        e: dict[str, Any],
        intent: str,
        tool: str,
        parents: list[str],
        causes: frozenset[str],
        seen: OrderedDict[str, _Touched],
        version: str | None,
        r: LedgerRecord,
        status: str | None = None,
        of: str | None = None,
    ) -> Output:
        named = list(parents)
        for c in causes:
            known = seen.get(c)
            if known is not None and (key in known.writes or key in known.reads) and c not in named:
                named.append(c)
        if len(named) > MAX_PARENTS:
            named = sorted(named)[-MAX_PARENTS:]
        self.records_out += 1
        value = resource_record(
            kind, e, intent, tool, named, version, r.partition, r.offset, status, of
        )
        return Output(self.topic, value, key.encode("utf-8", "surrogatepass"))


# -- the race detector -------------------------------------------------------------------------


@dataclass(slots=True)
class Call:
    """One tool call's use of one resource, as the detector knows it."""

    intent: str
    kind: str  # read | write
    workflow: str
    run: str
    agent: str
    tool: str
    start: int  # the intent's time, µs
    expected_version: str | None = None
    end: int | None = None  # the result's time
    status: str | None = None
    result: str | None = None
    partition: int = -1
    offset: int = -1

    @property
    def actor(self) -> tuple[str, str]:
        return (self.workflow, self.agent)


@dataclass
class _Key:
    """The detector's state of one resource key within the window."""

    calls: dict[tuple[str, str], Call] = field(default_factory=dict)
    #: event id -> (time, the events it descends from), for the causal closure
    parents: dict[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)
    #: rule -> intent id -> its incident's alert id (one alert per incident)
    incidents: dict[str, dict[str, str]] = field(default_factory=dict)


def incident_event_id(ms: int, *parts: str) -> str:
    """A UUIDv7 made of the incident's time and a digest of what it is: a re-read that
    decides the same incident again produces the same Alert, which readers dedupe."""
    d = int.from_bytes(blake3.blake3("\x1f".join(parts).encode()).digest(10), "big")
    value = (
        (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (d >> 68 & 0xFFF) << 64 | 0b10 << 62
        | (d & ((1 << 62) - 1))
    )  # fmt: skip
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _who(c: Call) -> str:
    return f"{c.agent} (workflow {c.workflow})"


def race_alert(
    rule: str,
    resource: str,
    first: Call,
    second: Call,
    read: Call | None,
    window_s: float,
) -> dict[str, Any]:
    """The Alert event (schemas/Alert.avsc) of one race incident, in the later call's
    workflow; `first` and `second` are the two writes, `read` the stale read (lost_update)."""
    later = second if second.start >= first.start else first
    earlier = first if later is second else second
    gap = abs(later.start - earlier.start) / 1e6
    if rule == "race_overlap":
        over = (min(first.end or 0, second.end or 0) - later.start) / 1e6
        detail = (
            f"{_who(earlier)} and {_who(later)} wrote {resource} at the same time: their "
            f"{earlier.tool} and {later.tool} calls overlapped by {over:.3f} s, neither caused "
            "by the other"
        )
    elif rule == "race_version":
        detail = (
            f"{_who(earlier)} and {_who(later)} both wrote {resource} claiming version "
            f"{later.expected_version!r} ({earlier.tool}, {later.tool}, {gap:.3f} s apart): "
            "one of the updates overwrote the other"
        )
    else:
        assert read is not None
        detail = (
            f"lost update on {resource}: {_who(later)} read it ({read.tool}), {_who(earlier)} "
            f"then wrote it ({earlier.tool}), and {_who(later)} wrote it "
            f"{(later.start - read.start) / 1e6:.3f} s after its read ({later.tool}) without "
            f"reading it again: {earlier.agent}'s update is lost"
        )
    related = [earlier.intent, later.intent] + ([read.intent] if read is not None else [])
    attributes = {
        "rule": rule,
        "window_s": f"{window_s:g}",
        "first_intent": earlier.intent,
        "second_intent": later.intent,
        "first_workflow": earlier.workflow,
        "second_workflow": later.workflow,
        "first_agent": earlier.agent,
        "second_agent": later.agent,
        "first_tool": earlier.tool,
        "second_tool": later.tool,
        "gap_s": f"{gap:.6f}",
    }
    if later.expected_version is not None:
        attributes["expected_version"] = later.expected_version
    if read is not None:
        attributes["read_intent"] = read.intent
    ms = max(later.end or later.start, earlier.end or earlier.start) // 1000
    return {
        "event_id": incident_event_id(ms, rule, resource, *sorted(related)),
        "type": "Alert",
        "time": ms * 1000,
        "source": f"wakeline://detector/{rule}",
        "workflow_id": later.workflow,
        "run_id": later.run,
        "step_id": None,
        "agent_id": DETECTOR_ID,
        "tenant": None,
        "boundary": None,
        "parent_event_ids": related,
        "correlation_id": None,
        "principal": DETECTOR_ID,
        "trace_id": None,
        "span_id": None,
        "kind": "race",
        "severity": "warning" if rule == "race_overlap" else "error",
        "detail": detail,
        "detector": rule,
        "resource": resource,
        "related_event_ids": related,
        "attributes": attributes,
    }


class RaceDetector(_Windowed):
    """`<prefix>resources` -> race alerts: state per resource key within the window.

    Rules (their settings from `DetectionRules`, the later call's tool and agent):
    - `race_overlap`: two writes whose intent-to-result intervals overlap, neither
      descending from the other. Decided once both results are in: a keyer that lags
      delivers an intent before the result that ends it. A refused (`denied`) call never ran.
    - `race_version`: two writes that succeeded claiming the same expected version.
    - `lost_update`: A read R, B wrote R (started after A's read returned, succeeded before
      A's write began), then A wrote R (successfully) without reading it again, A and B
      different agents or workflows, A's write not descending from B's.
    Reads alone never race. Records seen twice (at-least-once delivery) change nothing."""

    name = "race-detector"

    def __init__(
        self,
        topics: Topics,
        rules: DetectionRules,
        rewind: Callable[[list[int]], dict[int, tuple[int, int]]] | None = None,
        *,
        make_alert: Callable[..., dict[str, Any]] = race_alert,
    ) -> None:
        super().__init__(rewind)
        self.topics = topics
        self.rules = rules
        self.make_alert = make_alert
        self.window_us = int(race_window_s(rules) * 1_000_000)
        self._keys: dict[int, dict[str, _Key]] = {}
        self._newest: dict[int, int] = {}
        self._swept: dict[int, int] = {}
        self.alerts = 0
        self.bad_records = 0

    def forget(self, partition: int) -> None:
        self._keys.pop(partition, None)
        self._newest.pop(partition, None)
        self._swept.pop(partition, None)

    def take(self, r: LedgerRecord) -> list[Output] | None:
        try:
            rec = json.loads(r.value or b"")
            if rec["v"] != RESOURCE_FORMAT:
                raise ValueError(f"format {rec['v']!r}, want {RESOURCE_FORMAT}")
            key = (r.key or b"").decode("utf-8", "surrogatepass")
            t, kind, event, intent = int(rec["time"]), rec["kind"], rec["event"], rec["intent"]
            parents = tuple(str(x) for x in rec["parents"])
            if kind == "result":
                of, status = rec["of"], rec["status"]
                call = None
            elif kind in ("read", "write"):
                call = Call(
                    event, kind, str(rec["workflow"]), str(rec["run"]), str(rec["agent"]),
                    str(rec["tool"]), t, rec.get("expected_version"),
                    partition=rec["partition"], offset=rec["offset"],
                )  # fmt: skip
            else:
                raise ValueError(f"kind {kind!r}, want read, write or result")
        except Exception as e:  # noqa: BLE001 - a record we did not write: skip, say so
            self.bad_records += 1
            log.warning("%s: record skipped partition=%d offset=%d: %s: %s",
                        self.name, r.partition, r.offset, type(e).__name__, e)  # fmt: skip
            return None
        p = r.partition
        keys = self._keys.setdefault(p, {})
        if t > self._newest.get(p, 0):
            self._newest[p] = t
            if t - self._swept.get(p, 0) > self.window_us // 4:
                self._sweep(p, t - self.window_us)
        st = keys.get(key)
        if st is None:
            st = keys[key] = _Key()
        if call is None:  # a result
            found = st.calls.get((intent, of))
            if found is None or found.result is not None:
                return None  # its intent is older than the window, or seen twice
            found.end, found.status, found.result = t, status, event
            st.parents[event] = (t, (*parents, intent))
            return self._decide(key, st, found) if found.kind == "write" else None
        if (event, kind) in st.calls:
            return None  # seen twice
        st.calls[(event, kind)] = call
        st.parents[event] = (t, parents)
        return None

    def _sweep(self, partition: int, horizon: int) -> None:
        self._swept[partition] = horizon + self.window_us
        keys = self._keys[partition]
        for name in list(keys):
            st = keys[name]
            old = [k for k, c in st.calls.items() if c.start < horizon]
            for k in old:
                del st.calls[k]
                for members in st.incidents.values():
                    members.pop(k[0], None)
            for e in [e for e, (t, _) in st.parents.items() if t < horizon]:
                del st.parents[e]
            if not st.calls:
                del keys[name]

    # -- the rules -------------------------------------------------------------------------

    @staticmethod
    def _descends(st: _Key, later: Call, earlier: Call) -> bool:
        """Whether `later`'s intent descends from `earlier` (its intent or its result)."""
        targets = {earlier.intent, earlier.result} - {None}
        todo, visited = [later.intent], set()
        while todo:
            e = todo.pop()
            for q in st.parents.get(e, (0, ()))[1]:
                if q in targets:
                    return True
                if q not in visited:
                    visited.add(q)
                    todo.append(q)
        return False

    def _linked(self, st: _Key, a: Call, b: Call) -> bool:
        return self._descends(st, a, b) or self._descends(st, b, a)

    def _decide(self, key: str, st: _Key, w: Call) -> list[Output]:
        """A write's result arrived: every rule it can complete."""
        out: list[Output] = []
        if w.status == "denied":
            return out
        writes = [c for c in st.calls.values() if c.kind == "write" and c is not w]
        for o in writes:
            if o.end is None or o.status == "denied":
                continue
            if o.start < w.end and w.start < o.end and not self._linked(st, o, w):  # type: ignore[operator]
                out += self._incident("race_overlap", key, st, o, w)
            if (
                w.status == "ok" and o.status == "ok" and w.expected_version is not None
                and o.expected_version == w.expected_version
            ):  # fmt: skip
                out += self._incident("race_version", key, st, o, w)
        if w.status == "ok":
            out += self._lost_update(key, st, w, writes)  # w as A's write
            for a in writes:  # w as B's write, a as A's write that began after it
                if a.status == "ok" and a.start >= w.end and a.actor != w.actor:  # type: ignore[operator]
                    out += self._lost_update(key, st, a, [w])
        return out

    def _lost_update(self, key: str, st: _Key, a: Call, candidates: Iterable[Call]) -> list[Output]:
        reads = [
            c for c in st.calls.values()
            if c.kind == "read" and c.actor == a.actor and c.start < a.start
        ]  # fmt: skip
        if not reads:
            return []  # a blind write: not this rule's business
        read = max(reads, key=lambda c: c.start)
        seen_at = read.end if read.end is not None else read.start
        out: list[Output] = []
        for b in candidates:
            if (
                b is not a and b.kind == "write" and b.status == "ok" and b.actor != a.actor
                and b.end is not None and b.start >= seen_at and b.end <= a.start
                and not self._descends(st, a, b)
            ):  # fmt: skip
                out += self._incident("lost_update", key, st, b, a, read)
        return out

    def _incident(
        self, rule: str, key: str, st: _Key, first: Call, second: Call, read: Call | None = None
    ) -> list[Output]:
        later = second if second.start >= first.start else first
        settings = self.rules.rule(rule, tool=later.tool, agent=later.agent)
        earliest = read.start if read is not None else min(first.start, second.start)
        if not settings.enabled or later.start - earliest > settings.window_s * 1_000_000:
            return []
        members = st.incidents.setdefault(rule, {})
        known = members.get(first.intent) or members.get(second.intent)
        if known is not None:  # part of an incident already alerted
            members[first.intent] = members[second.intent] = known
            return []
        event = self.make_alert(rule, key, first, second, read, settings.window_s)
        members[first.intent] = members[second.intent] = event["event_id"]
        self.alerts += 1
        log.warning("race alert rule=%s resource=%s: %s", rule, key, event["detail"])
        scope = SCOPES.get(self.rules.action(rule))
        return alert_outputs(event, topics=self.topics, scope=scope)


# -- hosting ---------------------------------------------------------------------------------


def race_runners(
    kafka: KafkaSettings,
    rules: DetectionRules | None = None,
    *,
    stall_after_s: float = 60.0,
    batch_size: int = 5000,
) -> list[KafkaRunner]:
    """The resource keyer and the race detector on the Kafka runner (not started): what a
    worker hosts. `rules` defaults to `DetectionRules.from_env()`."""
    rules = rules if rules is not None else DetectionRules.from_env()
    window = race_window_s(rules)
    t = kafka.topics
    keyer_group = f"{t.prefix}resource-keyer"
    detector_group = f"{t.prefix}race-detector"
    keyer = ResourceKeyer(
        t.resources, window, Rewind(kafka.client_config, keyer_group, t.events, window)
    )
    detector = RaceDetector(
        t, rules, Rewind(kafka.client_config, detector_group, t.resources, window)
    )
    return [
        KafkaRunner(
            keyer, t.events, kafka.client_config,
            RunnerSettings(group_id=keyer_group, batch_size=batch_size,
                           stall_after_s=stall_after_s, sink_batch=64),
        ),
        KafkaRunner(
            detector, t.resources, kafka.client_config,
            RunnerSettings(group_id=detector_group, batch_size=batch_size,
                           stall_after_s=stall_after_s, sink_batch=64),
        ),
    ]  # fmt: skip
