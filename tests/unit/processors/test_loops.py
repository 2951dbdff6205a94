"""The loop detector on MemoryRunner: each rule fires once per incident, with evidence and
a plain detail, quarantines as its action says; the look-alikes stay silent."""

from __future__ import annotations

import json
from itertools import count
from typing import Any

import blake3
import pytest

from wakeline.infra.detection import DetectionRules
from wakeline.infra.settings import Topics
from wakeline.ledger.records import LedgerRecord
from wakeline.processors.loops import LoopDetector
from wakeline.processors.stream import MemoryRunner, Output
from wakeline.schemas import cloudevents_headers, decode_event, encode_event, new_event_id

TOPICS = Topics("t.")
T0 = 1_700_000_000_000_000  # µs
_offsets = count()


class Stream:
    """Builds SDK-like intents and results at chosen times and feeds them to a detector."""

    def __init__(self, rules: DetectionRules | None = None, **detector: Any) -> None:
        self.detector = LoopDetector(rules or DetectionRules(), TOPICS, **detector)
        self.runner = MemoryRunner(self.detector, partitions=[0, 1])
        self.out: list[Output] = []

    def _env(self, type_name: str, wf: str, agent: str, t: float) -> dict[str, Any]:
        return {"event_id": new_event_id(), "type": type_name, "time": T0 + int(t * 1e6),
                "source": "wakeline-sdk/test", "workflow_id": wf, "run_id": f"{wf}-r1",
                "agent_id": agent, "principal": "alice@example.com"}  # fmt: skip

    def feed(self, e: dict[str, Any], partition: int = 0) -> dict[str, Any]:
        rec = LedgerRecord(partition, next(_offsets), 0, e["workflow_id"].encode(),
                           encode_event(e), cloudevents_headers(e))  # fmt: skip
        self.out += self.runner.feed([rec], now=0.0)
        return e

    def call(
        self, tool: str, args: dict[str, Any], *, t: float, wf: str = "wf-1",
        agent: str = "billing-bot", read: bool = False, status: str | None = "ok",
        result: Any = None, partition: int = 0, volatile: list[str] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        text = json.dumps(args, sort_keys=True, separators=(",", ":"))
        i = {**self._env("ToolIntent", wf, agent, t), "tool": tool, "args": text,
             "args_digest": blake3.blake3(text.encode()).digest(),
             "reversibility": "read" if read else "compensable", "impact": "low",
             "policy_decision": "allow"}  # fmt: skip
        if volatile is not None:
            i["volatile_fields"] = volatile
        self.feed(i, partition)
        if status is not None:
            r = {**self._env("ToolResult", wf, agent, t + 0.01), "intent_id": i["event_id"],
                 "status": status, "duration_us": 10,
                 "result_digest": blake3.blake3(json.dumps(result).encode()).digest()
                 if result is not None else None}  # fmt: skip
            self.feed(r, partition)
        return i

    def alerts(self) -> list[dict[str, Any]]:
        return [decode_event(o.value) for o in self.out if o.topic == TOPICS.alerts]

    def quarantines(self) -> list[dict[str, Any]]:
        events = [decode_event(o.value) for o in self.out if o.topic == TOPICS.events]
        return [e for e in events if e["type"] == "Quarantine"]


CHARGE = {"customer": "cus_123", "amount_cents": 1000}


def test_repeat_alerts_once_and_quarantines_the_workflow() -> None:
    s = Stream()
    for i in range(9):
        s.call("stripe.charge", CHARGE, t=i * 0.5)
    (alert,) = s.alerts()
    assert alert["detector"] == "repeat" and alert["kind"] == "runaway_loop"
    assert "billing-bot called stripe.charge for customer cus_123" in alert["detail"]
    assert "same arguments 5 times in 2.0 s" in alert["detail"]
    assert len(alert["related_event_ids"]) == 5 and alert["attributes"]["count"] == "5"
    # on the alerts topic and on the workflow's partition of the events topic
    on_events = [o for o in s.out if o.topic == TOPICS.events]
    assert [o.partition for o in on_events] == [0, 0] and on_events[0].key == b"wf-1"
    (q,) = s.quarantines()
    assert q["scope"] == "workflow" and q["alert_id"] == alert["event_id"]
    assert q["by"] == "wakeline-detector/repeat" and q["reason"] == alert["detail"]
    assert q["workflow_id"] == "wf-1"


def test_repeat_is_per_workflow_by_default_and_per_agent_when_the_rule_says() -> None:
    s = Stream()
    for i in range(5):  # the same notification in five workflows: fine by default
        s.call("email.send", {"to": "ops@example.com"}, t=i, wf=f"wf-{i}")
    assert s.alerts() == []
    s = Stream(DetectionRules.parse('[rules.repeat]\nper = "agent"'))
    for i in range(5):
        s.call("email.send", {"to": "ops@example.com"}, t=i, wf=f"wf-{i}", partition=i % 2)
    (alert,) = s.alerts()
    assert "across 5 workflows" in alert["detail"]


def test_retries_after_failures_within_the_budget_are_silent() -> None:
    s = Stream()
    s.call("stripe.charge", CHARGE, t=0, status="error")
    for i in range(3):  # three retries of a failed call: within retry_budget = 3
        s.call("stripe.charge", CHARGE, t=1 + i, status="error" if i < 2 else "ok")
    s.call("stripe.charge", CHARGE, t=5)  # then two fresh calls
    s.call("stripe.charge", CHARGE, t=6)
    assert s.alerts() == []
    # retrying on and on past the budget is a loop
    for i in range(6):
        s.call("stripe.charge", CHARGE, t=7 + i * 0.1, status="error")
    assert [a["detector"] for a in s.alerts()] == ["repeat"]


def test_reads_alert_only_at_the_read_threshold() -> None:
    s = Stream()
    for i in range(49):  # re-reading state all the time is what agents do
        s.call("crm.lookup", {"customer": "123"}, t=i * 0.1, read=True, result={"tier": 1})
    assert s.alerts() == []
    s.call("crm.lookup", {"customer": "123"}, t=4.95, read=True, result={"tier": 1})
    (alert,) = s.alerts()
    assert alert["detector"] == "repeat_read" and "(read-only)" in alert["detail"]
    assert s.quarantines() == []  # repeat_read only alerts


def test_no_progress_catches_polling_and_paging_past_the_end() -> None:
    s = Stream()
    for i in range(6):
        s.call("jobs.status", {"job": "j1", "since": i}, t=i, read=True, result="running")
    (alert,) = s.alerts()
    assert alert["detector"] == "no_progress" and "same result" in alert["detail"]
    (q,) = s.quarantines()
    assert q["scope"] == "run" and q["run_id"] == "wf-1-r1"


def test_pagination_with_different_cursors_is_silent() -> None:
    s = Stream()
    for i in range(40):
        s.call("crm.list", {"cursor": f"c{i}"}, t=i * 0.1, read=True, result=[i, i + 1])
    assert s.alerts() == []


def test_writes_answering_alike_are_not_a_lack_of_progress() -> None:
    s = Stream()
    for i in range(20):
        s.call("email.send", {"to": f"u{i}@example.com"}, t=i * 0.1, result={"sent": True})
    assert s.alerts() == []


def test_ping_pong_of_two_agents_is_a_hand_off_loop() -> None:
    s = Stream()
    for i in range(12):
        agent = ("planner", "executor")[i % 2]
        s.call("handoff", {"to": ("executor", "planner")[i % 2], "task": "t1"}, t=i, agent=agent)
    (alert,) = s.alerts()  # one incident, though each call also repeats
    assert alert["detector"] == "ping_pong"
    assert "hand-off loop between planner, executor" in alert["detail"]
    assert len(alert["related_event_ids"]) == 8
    assert len(s.quarantines()) == 1


def test_a_cycle_of_three_tools() -> None:
    s = Stream()
    for i in range(12):
        tool = ("a.fetch", "b.transform", "c.store")[i % 3]
        s.call(tool, {"x": 1}, t=i * 0.1)
    assert [a["detector"] for a in s.alerts()] == ["ping_pong"]
    assert "a.fetch -> b.transform -> c.store" in s.alerts()[0]["detail"]


def test_planner_and_executor_with_new_work_each_time_are_silent() -> None:
    s = Stream()
    for i in range(40):
        agent = ("planner", "executor")[i % 2]
        s.call("handoff", {"task": f"t{i // 2}"}, t=i * 0.1, agent=agent)
    assert s.alerts() == []


def test_rate_ceiling_and_a_high_but_allowed_rate() -> None:
    s = Stream()
    for i in range(200):  # the ceiling per workflow is 200 per 10 s: allowed
        s.call("crm.update", {"record": i}, t=i * 0.04, status=None)
    assert s.alerts() == []
    s.call("crm.update", {"record": "one more"}, t=8.5, status=None)
    (alert,) = s.alerts()
    assert alert["detector"] == "rate" and "workflow wf-1 made 201 calls" in alert["detail"]
    assert s.quarantines() == []  # rate only alerts by default


def test_thresholds_per_tool_and_actions_from_the_file() -> None:
    rules = DetectionRules.parse(
        '[tools."stripe.charge".repeat]\ncount = 3\n[actions]\nrepeat = "alert"'
    )
    s = Stream(rules)
    for i in range(3):
        s.call("stripe.charge", CHARGE, t=i)
    (alert,) = s.alerts()
    assert alert["attributes"]["threshold"] == "3" and s.quarantines() == []


def test_windows_expire() -> None:
    s = Stream()
    for i in range(10):  # one identical call every 3 s: never 5 within 10 s
        s.call("stripe.charge", CHARGE, t=i * 3)
    assert s.alerts() == []


def test_a_later_incident_of_a_quarantined_workflow_only_alerts() -> None:
    s = Stream()
    for i in range(5):
        s.call("stripe.charge", CHARGE, t=i * 0.1)
    for i in range(5):
        s.call("crm.update", {"record": 1}, t=1 + i * 0.1)
    assert [a["detector"] for a in s.alerts()] == ["repeat", "repeat"]
    assert len(s.quarantines()) == 1


def test_undecodable_and_other_events_are_skipped_and_committed() -> None:
    s = Stream()
    bad = LedgerRecord(0, 10_000, 0, b"wf", b"\xc3\x01garbage-garbage", ())
    other = s._env("Release", "wf-1", "x", 0)
    other.update(reason="r", by="b", quarantine_id=None)
    s.runner.feed([bad], now=0.0)
    assert s.runner.committed[0] == 10_001
    s.feed(other)
    assert s.alerts() == []


def test_replay_below_the_committed_offset_does_not_alert_again() -> None:
    events: list[dict[str, Any]] = []
    s = Stream()
    for i in range(6):
        events.append(s.call("stripe.charge", CHARGE, t=i * 0.1, status=None))
    assert len(s.alerts()) == 1
    # a new owner re-reads the window: offsets below the committed one are replayed quietly
    first = 0
    s2 = Stream(rewind=lambda ps: {p: (first, 6) for p in ps})
    assert s2.runner.starts == {0: 0, 1: 0}
    for i, e in enumerate(events):
        rec = LedgerRecord(0, i, 0, b"wf-1", encode_event(e), cloudevents_headers(e))
        s2.out += s2.runner.feed([rec], now=0.0)
    assert s2.alerts() == []  # the incident was alerted before the move
    e = s2.call("stripe.charge", CHARGE, t=0.7, status=None)
    assert e and s2.alerts() == []  # still the same incident


def test_near_duplicates_through_the_detector() -> None:
    from wakeline.schemas import schema_for

    if "volatile_fields" not in {f["name"] for f in schema_for("ToolIntent")["fields"]}:
        pytest.skip("ToolIntent has no volatile_fields yet")
    s = Stream()
    for i in range(5):
        s.call("stripe.charge", {**CHARGE, "request_id": f"r{i}"}, t=i * 0.1,
               volatile=["request_id"])  # fmt: skip
    assert [a["detector"] for a in s.alerts()] == ["repeat"]


@pytest.mark.parametrize("volatile", [["request_id"], ["meta.at"]])
def test_near_duplicates_differ_only_in_volatile_fields(volatile: list[str]) -> None:
    from wakeline.processors.loops import _digest_without

    a = json.dumps({"customer": "1", "request_id": "r1", "meta": {"at": 1, "k": 2}})
    b = json.dumps({"customer": "1", "request_id": "r2", "meta": {"at": 2, "k": 2}})
    c = json.dumps({"customer": "2", "request_id": "r2", "meta": {"at": 2, "k": 2}})
    both = ["request_id", "meta.at"]
    assert _digest_without(a, both) == _digest_without(b, both) != _digest_without(c, both)
    assert _digest_without(a, volatile) != _digest_without(b, volatile)


def test_quarantine_agent_action_quarantines_the_looping_agent_since_the_window() -> None:
    s = Stream(DetectionRules.parse('[actions]\nrepeat = "quarantine-agent"'))
    for i in range(5):
        s.call("stripe.charge", CHARGE, t=i * 0.5, agent="billing-bot")
    (alert,) = s.alerts()
    (q,) = s.quarantines()
    assert q["scope"] == "agent" and q["target"] == "billing-bot"
    assert q["since"] == alert["time"] - 10_000_000  # the rule's window_s before the alert
    assert q["workflow_id"] == "wf-1" and q["origin_id"] is None  # the compensator fans out
