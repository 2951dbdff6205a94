"""The resource keyer and the race detector (processors/races.py) on the memory runner: each
rule, and each look-alike that must stay silent."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from wakeline.infra.detection import DetectionRules
from wakeline.infra.settings import Topics
from wakeline.ledger.records import LedgerRecord
from wakeline.processors.races import (
    RaceDetector,
    ResourceKeyer,
    race_window_s,
    resource_record,
)
from wakeline.processors.stream import MemoryRunner
from wakeline.schemas import decode_event, encode_event, new_event_id

T0 = 1_700_000_000_000_000
S = 1_000_000  # one second in µs
TOPICS = Topics("t.")
R = "crm:rec_1"


def envelope(kind: str, wf: str, agent: str, t: int, parents: Sequence[str] = ()) -> dict:
    return {
        "event_id": new_event_id(), "type": kind, "time": t, "source": f"sdk/{agent}",
        "workflow_id": wf, "run_id": f"{wf}-run", "agent_id": agent, "principal": "p",
        "parent_event_ids": list(parents),
    }  # fmt: skip


def intent(wf: str, agent: str, t: int, *, reads=(), writes=(), parents=(), tool=None) -> dict:
    tool = tool or ("crm.update" if writes else "crm.get")
    return {
        **envelope("ToolIntent", wf, agent, t, parents), "tool": tool, "args": "{}",
        "args_digest": b"d", "resources_read": list(reads), "resources_written": list(writes),
        "reversibility": "read" if not writes else "reversible", "impact": "low",
        "policy_decision": "allow",
    }  # fmt: skip


def result(of: dict, t: int, status: str = "ok", parents=()) -> dict:
    return {
        **envelope("ToolResult", of["workflow_id"], of["agent_id"], t, parents),
        "intent_id": of["event_id"], "status": status,
    }  # fmt: skip


class Pipeline:
    """A keyer and a detector, the keyer's records handed to the detector in order."""

    def __init__(self, rules: DetectionRules | None = None, partitions: int = 2) -> None:
        rules = rules or DetectionRules()
        self.keyer = ResourceKeyer(TOPICS.resources, race_window_s(rules))
        self.detector = RaceDetector(TOPICS, rules)
        self.keyers = MemoryRunner(self.keyer, range(partitions))
        self.detectors = MemoryRunner(self.detector, [0])
        self.offsets = [0] * partitions
        self.resource_offset = 0
        self.alerts: list[dict[str, Any]] = []
        self.events_copies: list[Any] = []

    def feed(self, *events: dict, partition: int = 0) -> list[dict[str, Any]]:
        """Events of one events partition (a workflow's), in order; the alerts they raise."""
        before = len(self.alerts)
        for e in events:
            rec = LedgerRecord(
                partition, self.offsets[partition], 0, e["workflow_id"].encode(),
                encode_event(e),
            )  # fmt: skip
            self.offsets[partition] += 1
            for o in self.keyers.feed([rec]):
                assert o.topic == TOPICS.resources
                self.records(LedgerRecord(0, self.resource_offset, 0, o.key, o.value))
        return self.alerts[before:]

    def records(self, *recs: LedgerRecord) -> None:
        for r in recs:
            self.resource_offset = max(self.resource_offset, r.offset) + 1
            for o in self.detectors.feed([r]):
                if o.topic == TOPICS.alerts:
                    self.alerts.append(decode_event(o.value))
                else:
                    assert o.topic == TOPICS.events and o.key is not None
                    self.events_copies.append(o)


def test_overlapping_writes_of_two_workflows_raise_one_alert_naming_both_intents() -> None:
    p = Pipeline()
    a = intent("wf-a", "agent-a", T0, writes=[R])
    b = intent("wf-b", "agent-b", T0 + S // 10, writes=[R])
    assert p.feed(a) == [] and p.feed(b, partition=1) == []
    assert p.feed(result(a, T0 + S // 2)) == []  # b's end unknown yet
    (alert,) = p.feed(result(b, T0 + S), partition=1)
    assert alert["kind"] == "race" and alert["detector"] == "race_overlap"
    assert alert["resource"] == R
    assert alert["related_event_ids"] == [a["event_id"], b["event_id"]]
    assert alert["workflow_id"] == "wf-b"  # the later call's workflow
    assert "agent-a (workflow wf-a)" in alert["detail"] and "agent-b" in alert["detail"]
    assert R in alert["detail"] and "0.400 s" in alert["detail"]
    (copy,) = p.events_copies  # and once on the events topic, keyed by its workflow
    assert copy.key == b"wf-b" and decode_event(copy.value) == alert


def test_three_overlapping_writes_are_one_incident() -> None:
    p = Pipeline()
    calls = [intent(f"wf-{i}", f"agent-{i}", T0 + i * 1000, writes=[R]) for i in range(3)]
    for i, c in enumerate(calls):
        p.feed(c, partition=i % 2)
    for i, c in enumerate(calls):
        p.feed(result(c, T0 + S + i), partition=i % 2)
    assert [a["detector"] for a in p.alerts] == ["race_overlap"]


def test_arrival_order_does_not_matter_a_lagging_keyer_is_no_race() -> None:
    """a ran and finished before b began, but b's records reach the detector first."""
    p = Pipeline()
    a = intent("wf-a", "agent-a", T0, writes=[R])
    b = intent("wf-b", "agent-b", T0 + 2 * S, writes=[R])
    p.feed(b, result(b, T0 + 3 * S), partition=1)
    p.feed(a, result(a, T0 + S))
    assert p.alerts == []


def test_writes_ordered_by_a_causal_link_stay_silent_even_through_other_events() -> None:
    p = Pipeline()
    a = intent("wf-a", "agent-a", T0, writes=[R])
    handoff = intent("wf-a", "agent-a", T0 + 1000, parents=[a["event_id"]], tool="notify")
    b = intent("wf-a", "agent-b", T0 + 2000, writes=[R], parents=[handoff["event_id"]])
    p.feed(a, handoff, b, result(a, T0 + S), result(b, T0 + S + 1))
    assert p.alerts == []
    # the same across workflows: b names a's intent directly
    c = intent("wf-c", "agent-c", T0 + 3000, writes=[R], parents=[a["event_id"]])
    p.feed(c, result(c, T0 + S + 2), partition=1)
    # c overlaps b, and nothing links them: that is a race
    assert [x["related_event_ids"] for x in p.alerts] == [[b["event_id"], c["event_id"]]]


def test_writes_to_different_resources_and_reads_alone_never_race() -> None:
    p = Pipeline()
    a = intent("wf-a", "agent-a", T0, writes=["crm:rec_1"])
    b = intent("wf-b", "agent-b", T0 + 1, writes=["crm:rec_2"])
    reads = [intent(f"wf-{i}", f"agent-{i}", T0 + i, reads=[R]) for i in range(20)]
    p.feed(a, *reads[:10])
    p.feed(b, *reads[10:], partition=1)
    p.feed(result(a, T0 + S), *(result(r, T0 + S) for r in reads[:10]))
    p.feed(result(b, T0 + S), *(result(r, T0 + S) for r in reads[10:]), partition=1)
    assert p.alerts == []


def test_a_refused_write_never_ran_and_a_redelivered_record_changes_nothing() -> None:
    p = Pipeline()
    a = intent("wf-a", "agent-a", T0, writes=[R])
    b = intent("wf-b", "agent-b", T0 + 1, writes=[R])
    p.feed(a)
    p.feed(b, result(b, T0 + 2, status="denied"), partition=1)
    assert p.feed(result(a, T0 + S)) == []
    # a record seen twice (a keyer redoing work after a crash) is ignored
    dup = json.loads(resource_record("write", b, b["event_id"], "crm.update", [], None, 1, 0))
    p.records(LedgerRecord(0, 99, 0, R.encode(), json.dumps(dup).encode()))
    assert p.alerts == []


def test_lost_update_is_caught() -> None:
    p = Pipeline()
    read = intent("wf-a", "agent-a", T0, reads=[R])
    p.feed(read, result(read, T0 + 1000))
    b = intent("wf-b", "agent-b", T0 + S, writes=[R])
    p.feed(b, result(b, T0 + 2 * S), partition=1)
    a = intent("wf-a", "agent-a", T0 + 3 * S, writes=[R])
    (alert,) = p.feed(a, result(a, T0 + 4 * S))
    assert alert["detector"] == "lost_update" and alert["resource"] == R
    assert alert["related_event_ids"] == [b["event_id"], a["event_id"], read["event_id"]]
    assert alert["workflow_id"] == "wf-a"
    assert "agent-b" in alert["detail"] and "without reading it again" in alert["detail"]


def test_lost_update_is_caught_when_the_other_write_arrives_last() -> None:
    p = Pipeline()
    read = intent("wf-a", "agent-a", T0, reads=[R])
    a = intent("wf-a", "agent-a", T0 + 3 * S, writes=[R])
    p.feed(read, result(read, T0 + 1000), a, result(a, T0 + 4 * S))
    b = intent("wf-b", "agent-b", T0 + S, writes=[R])
    (alert,) = p.feed(b, result(b, T0 + 2 * S), partition=1)
    assert alert["detector"] == "lost_update"


def test_one_agents_read_modify_write_and_a_fresh_reread_stay_silent() -> None:
    p = Pipeline()
    read = intent("wf-a", "agent-a", T0, reads=[R])
    write = intent("wf-a", "agent-a", T0 + S, writes=[R], parents=[read["event_id"]])
    p.feed(read, result(read, T0 + 1000), write, result(write, T0 + 2 * S))
    # b writes, then a reads again before writing: nothing is lost
    b = intent("wf-b", "agent-b", T0 + 3 * S, writes=[R])
    p.feed(b, result(b, T0 + 4 * S), partition=1)
    again = intent("wf-a", "agent-a", T0 + 5 * S, reads=[R])
    last = intent("wf-a", "agent-a", T0 + 6 * S, writes=[R])
    p.feed(again, result(again, T0 + 5 * S + 1000), last, result(last, T0 + 7 * S))
    assert p.alerts == []


def test_a_write_descending_from_the_other_is_no_lost_update() -> None:
    p = Pipeline()
    read = intent("wf-a", "agent-a", T0, reads=[R])
    p.feed(read, result(read, T0 + 1000))
    b = intent("wf-b", "agent-b", T0 + S, writes=[R])
    b_done = result(b, T0 + 2 * S)
    p.feed(b, b_done, partition=1)
    a = intent("wf-a", "agent-a", T0 + 3 * S, writes=[R], parents=[b_done["event_id"]])
    assert p.feed(a, result(a, T0 + 4 * S)) == []


def _write(c: dict, version: str | None, offset: int) -> list[LedgerRecord]:
    """A write's intent and ok result as the keyer would send them, with `expected_version`."""
    done = result(c, c["time"] + 1000)
    return [
        LedgerRecord(0, offset, 0, R.encode(), resource_record(
            "write", c, c["event_id"], "crm.update", [], version, 0, offset)),
        LedgerRecord(0, offset + 1, 0, R.encode(), resource_record(
            "result", done, c["event_id"], "crm.update", [], version, 0, offset + 1, "ok",
            "write")),
    ]  # fmt: skip


def test_two_writes_claiming_the_same_version_race() -> None:
    p = Pipeline()
    a = intent("wf-a", "agent-a", T0, writes=[R])
    b = intent("wf-b", "agent-b", T0 + S, writes=[R])
    p.records(*_write(a, "7", 0), *_write(b, "7", 2))
    (alert,) = p.alerts
    assert alert["detector"] == "race_version" and alert["attributes"]["expected_version"] == "7"
    c = intent("wf-c", "agent-c", T0 + 2 * S, writes=[R])
    p.records(*_write(c, "8", 4))  # another version: fine
    assert len(p.alerts) == 1


def test_rules_switch_a_rule_off_per_tool_and_bound_it_by_the_window() -> None:
    rules = DetectionRules.parse(
        '[tools."crm.update".race_overlap]\nenabled = false\n[rules.lost_update]\nwindow_s = 2\n'
    )
    p = Pipeline(rules)
    a = intent("wf-a", "agent-a", T0, writes=[R])
    b = intent("wf-b", "agent-b", T0 + 1, writes=[R])
    p.feed(a, result(a, T0 + S))
    p.feed(b, result(b, T0 + S), partition=1)
    read = intent("wf-c", "agent-c", T0 + 10 * S, reads=[R])
    p.feed(read, result(read, T0 + 10 * S + 1))
    d = intent("wf-d", "agent-d", T0 + 11 * S, writes=[R])
    p.feed(d, result(d, T0 + 11 * S + 10), partition=1)
    c = intent("wf-c", "agent-c", T0 + 13 * S, writes=[R])  # 3 s after its read: outside
    p.feed(c, result(c, T0 + 14 * S))
    assert p.alerts == []


def test_the_keyer_names_a_call_once_per_key_and_a_result_it_cannot_place_is_counted() -> None:
    p = Pipeline()
    both = intent("wf-a", "agent-a", T0, reads=["a:1"], writes=["b:1", "b:2"])
    out = p.keyers.feed([LedgerRecord(0, 0, 0, b"wf-a", encode_event(both))])
    got = [(o.key, json.loads(o.value)["kind"]) for o in out]
    assert got == [(b"a:1", "read"), (b"b:1", "write"), (b"b:2", "write")]
    rec = json.loads(out[1].value)
    assert rec["v"] == 1 and rec["workflow"] == "wf-a" and rec["partition"] == 0
    stray = result(intent("wf-a", "agent-a", T0, writes=["x"]), T0 + 1)
    assert p.keyers.feed([LedgerRecord(0, 1, 0, b"wf-a", encode_event(stray))]) == []
    assert p.keyer.results_unmatched == 1
    # garbage on the events topic is skipped (the audit publisher dead-letters it)
    assert p.keyers.feed([LedgerRecord(0, 2, 0, b"wf-a", b"\x00junk")]) == []
    assert p.keyer.undecodable == 1 and p.keyers.committed[0] == 3


def test_a_record_take_fails_on_is_logged_and_skipped_never_a_stall(monkeypatch) -> None:
    p = Pipeline()

    def broken(r):  # type: ignore[no-untyped-def]
        raise KeyError("surprise")

    monkeypatch.setattr(p.keyer, "take", broken)
    both = intent("wf-a", "agent-a", T0, writes=["b:1"])
    assert p.keyers.feed([LedgerRecord(0, 0, 0, b"wf-a", encode_event(both))]) == []
    assert p.keyer.skipped == 1 and p.keyers.committed[0] == 1


def test_a_bad_resource_record_is_skipped_and_the_detector_goes_on() -> None:
    p = Pipeline()
    p.records(LedgerRecord(0, 0, 0, R.encode(), b"{not json"))
    p.records(LedgerRecord(0, 1, 0, R.encode(), b'{"v": 99}'))
    p.records(LedgerRecord(0, 2, 0, R.encode(), b'{"v": 1, "time": 5, "kind": "write"}'))
    p.records(LedgerRecord(0, 3, 0, R.encode(), b"[1]"))
    assert p.detector.bad_records == 4 and p.detectors.committed[0] == 4
    a = intent("wf-a", "agent-a", T0, writes=[R])
    b = intent("wf-b", "agent-b", T0 + 1, writes=[R])
    p.feed(a, result(a, T0 + S))
    assert len(p.feed(b, result(b, T0 + S), partition=1)) == 1


@pytest.mark.parametrize("live_from", [0, 4])
def test_a_reread_before_the_committed_offset_restores_state_and_produces_nothing(
    live_from: int,
) -> None:
    """Partition reassigned: the new owner re-reads from `start`, acting from `live_from`."""
    a = intent("wf-a", "agent-a", T0, writes=[R])
    b = intent("wf-b", "agent-b", T0 + 1, writes=[R])
    c = intent("wf-c", "agent-c", T0 + 2, writes=[R])
    wa, wb, wc = _write(a, None, 0), _write(b, None, 2), _write(c, None, 4)
    detector = RaceDetector(TOPICS, DetectionRules(), rewind=lambda ps: {0: (0, live_from)})
    runner = MemoryRunner(detector, [0])
    assert runner.starts == {0: 0}
    # a and b open together, then their results, then c: all three overlap
    recs = [LedgerRecord(0, i, 0, r.key, r.value) for i, r in enumerate([*wa, *wb, *wc])]
    recs = [recs[0], recs[2], recs[1], recs[3], recs[4], recs[5]]
    recs = [LedgerRecord(0, i, 0, r.key, r.value) for i, r in enumerate(recs)]
    alerts = [o for r in recs for o in runner.feed([r]) if o.topic == TOPICS.alerts]
    # before live_from, the a/b incident is rebuilt silently; c folds into it either way
    assert len(alerts) == (1 if live_from == 0 else 0)
    assert runner.committed[0] == 6
