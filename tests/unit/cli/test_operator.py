"""`wakeline workflow show | list` over an in-memory ledger, and the operator commands' input
checks (which refuse before anything reaches a broker)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from wakeline.cli.main import cli
from wakeline.compensator.operator import OperatorError, Writer, quarantine, workflow_state
from wakeline.errors import StackError
from wakeline.infra.settings import KafkaSettings
from wakeline.ledger.store_memory import MemoryLedgerStore

from ..compensator.eventkit import Events, store_of


def run(store: MemoryLedgerStore, *args: str):  # noqa: ANN201
    return CliRunner().invoke(cli, ["workflow", *args], obj={"ledger_store": store})


def story() -> tuple[Events, dict]:
    """A charge compensated, an email escalated, quarantined and then released."""
    ev = Events()
    ev.call("kb.read", reversibility="read", compensation=None)
    charge = ev.intent()
    ev.result(charge, "ok", summary="charged USD 12.99", external_ids={"charge_id": "ch_7"})
    email = ev.intent("email.send", compensation=None, reversibility="irreversible")
    q = ev.quarantine()
    ev.started(charge)
    ev.compensated(charge)
    ev.escalation(email)
    ev.release(q)
    return ev, {"charge": charge, "email": email, "quarantine": q}


def test_show_is_every_call_in_ledger_order_with_its_positions() -> None:
    ev, named = story()
    store = store_of(ev.events)
    got = run(store, "show", "wf-1", "--json")
    assert got.exit_code == 0, got.output
    report = json.loads(got.output)
    assert report["state"] == "released" and report["ledgered_events"] == len(ev.events)
    assert [c["intent"]["tool"] for c in report["calls"]] == ["kb.read", "stripe.charge",
                                                              "email.send"]  # fmt: skip
    charge, email = report["calls"][1], report["calls"][2]
    assert charge["intent"]["policy_decision"] == "allow"
    assert charge["result"]["status"] == "ok"
    assert charge["result"]["external_ids"] == {"charge_id": "ch_7"}
    assert [c["type"] for c in charge["compensations"]] == ["CompensationStarted",
                                                            "CompensationResult"]  # fmt: skip
    assert email["result"] is None
    assert email["escalations"] == [report["escalations"][0]["event_id"]]
    assert report["quarantines"][0]["event_id"] == named["quarantine"]["event_id"]
    assert report["releases"][0]["quarantine_id"] == named["quarantine"]["event_id"]
    # each position is the entry the ledger holds for that event id (what a proof uses)
    items = [c["intent"] for c in report["calls"]] + [charge["result"], *charge["compensations"]]
    items += report["quarantines"] + report["releases"] + report["escalations"]
    for item in items:
        entry = store.entry_by_event_id(item["event_id"])
        assert entry is not None
        assert item["ledger"] == {"partition": entry.partition, "leaf_index": entry.leaf_index,
                                  "offset": entry.offset}  # fmt: skip
    assert not report["compensator_state"] and report["unledgered"] == []


def test_show_ids_are_the_calls_intents_a_tool_pattern_selects() -> None:
    ev, named = story()
    store = store_of(ev.events)
    got = run(store, "show", "wf-1", "--ids")
    assert got.exit_code == 0, got.output
    assert len(got.output.split()) == 3  # the read, the charge, the e-mail
    got = run(store, "show", "wf-1", "--tool", "stripe.*", "--ids")
    assert got.output.split() == [named["charge"]["event_id"]]
    got = run(store, "show", "wf-1", "--tool", "email.send", "--json")
    assert [c["intent"]["tool"] for c in json.loads(got.output)["calls"]] == ["email.send"]
    assert run(store, "show", "wf-1", "--tool", "nothing.*", "--ids").output == ""


def test_show_prints_a_timeline_a_human_can_follow() -> None:
    ev, named = story()
    got = run(store_of(ev.events), "show", "wf-1")
    assert got.exit_code == 0, got.output
    out = got.output
    assert out.splitlines()[0] == "workflow wf-1: released"
    assert "wakeline ledger proof EVENT_ID" in out
    assert "call stripe.charge  [partition 3 leaf 2 offset 2]" in out
    assert "result ok: charged USD 12.99; ids charge_id=ch_7  [partition 3 leaf 3 offset 3]" in out
    assert "compensation stripe.refund attempt 1 started  [partition 3 leaf 6" in out
    assert "compensation stripe.refund attempt 1 ok (final)" in out
    assert "result: none ledgered (outcome unknown" in out
    assert "QUARANTINE (workflow) by ops@example.com: runaway refunds" in out
    assert f"RELEASE of {named['quarantine']['event_id']}" in out
    # ledger order: the quarantine (leaf 5) comes after the email's intent (leaf 4)
    assert out.index("call email.send") < out.index("QUARANTINE") < out.index("ESCALATION")


def test_show_a_workflow_the_ledger_does_not_hold_is_an_error() -> None:
    got = run(store_of(story()[0].events), "show", "wf-nope")
    assert got.exit_code == 1
    assert "wf-nope has no ledgered events" in got.output


def test_show_exits_1_and_says_which_entry_does_not_decode() -> None:
    ev, _ = story()
    store = store_of(ev.events)
    # a second partition's entry for the same key that is not an event
    from wakeline.ledger import BLAKE3
    from wakeline.ledger.records import LedgerRecord
    from wakeline.ledger.segments import PartitionChain
    from wakeline.ledger.store import make_entries

    chain = PartitionChain(BLAKE3, 0)
    leaves = [LedgerRecord(0, 0, 1, b"wf-1", b"\xc3\x01 not avro").leaf_bytes()]
    header, hashes = chain.seal(leaves)
    store.append_segment(header, make_entries(header, leaves, hashes), chain.tree.nodes)
    got = run(store, "show", "wf-1")
    assert got.exit_code == 1
    assert "partition 0 leaf 0 does not decode" in got.output


def test_list_is_newest_activity_first_with_the_quarantine_state() -> None:
    quiet = Events("wf-quiet")
    quiet.call()
    held = Events("wf-held")
    held._n = 100  # later events, other ids
    held.call()
    held.quarantine()
    released = Events("wf-released")
    released._n = 200
    released.release(released.quarantine())
    store = store_of(quiet.events + held.events + released.events)
    got = run(store, "list", "--json")
    assert got.exit_code == 0, got.output
    rows = json.loads(got.output)
    assert [(r["workflow_id"], r["state"]) for r in rows] == [
        ("wf-released", "released"),
        ("wf-held", "quarantined"),
        ("wf-quiet", "active"),
    ]
    assert rows[1]["calls"] == 1 and rows[1]["events"] == 3 and rows[1]["partitions"] == [3]
    assert rows[1]["quarantine"]["by"] == "ops@example.com"
    only = json.loads(run(store, "list", "--quarantined", "--json").output)
    assert [r["workflow_id"] for r in only] == ["wf-held"]
    assert len(json.loads(run(store, "list", "--limit", "1", "--json").output)) == 1
    text = run(store, "list").output.splitlines()
    assert text[0].split() == ["workflow", "state", "calls", "events", "partition", "last",
                               "activity", "quarantine"]  # fmt: skip
    assert text[2].startswith("wf-held") and "ops@example.com: runaway refunds" in text[2]


def test_the_compensators_plan_says_how_far_a_quarantine_got() -> None:
    ev = Events()
    ev.call()
    q = ev.quarantine()
    plan = {"quarantine_id": q["event_id"], "state": "running"}
    assert workflow_state(ev.events)["state"] == "quarantined"
    assert workflow_state(ev.events, [plan])["state"] == "compensating"
    assert workflow_state(ev.events, [{**plan, "state": "done"}])["state"] == "compensated"
    ev.release(q)
    assert workflow_state(ev.events, [{**plan, "state": "released"}])["state"] == "released"
    assert workflow_state(Events().events)["state"] == "active"
    done = Events()
    done.call()
    sealed = [*done.events, {"type": "WorkflowCompleted", "event_id": "seal-1"}]
    assert workflow_state(sealed)["state"] == "completed"
    again = [*sealed, {"type": "ToolIntent", "event_id": "next-run"}]  # a new run goes on
    assert workflow_state(again)["state"] == "active"


def test_memory_store_lists_workflows_newest_first() -> None:
    a, b = Events("wf-a"), Events("wf-b")
    b._n = 50
    a.call()
    b.call()
    store = store_of(a.events + b.events)
    got = store.workflows()
    assert [(w.workflow_id, w.entries) for w in got] == [("wf-b", 2), ("wf-a", 2)]
    assert got[0].first_ms < got[0].last_ms and got[1].last_ms < got[0].first_ms
    assert [w.workflow_id for w in store.workflows(1)] == ["wf-b"]


NO_BROKER = KafkaSettings(bootstrap="127.0.0.1:9")


@pytest.mark.parametrize(
    ("workflow_id", "fields", "says"),
    [
        ("", {"reason": "r"}, "workflow id is required"),
        ("wf\udcff", {"reason": "r"}, "is not valid UTF-8"),
        ("w" * 1025, {"reason": "r"}, "at most 1024"),
        ("wf-1", {"reason": " "}, "reason is required"),
        ("wf-1", {"reason": "a\x00b"}, "NUL"),
        ("wf-1", {"reason": "r", "by": ""}, "by is required"),
        ("wf-1", {"reason": "r", "run_id": "r1", "tainted": ["e"]}, "one scope"),
        (None, {"reason": "r", "agent": "a", "boundary": "b"}, "one scope"),
        ("wf-1", {"reason": "r", "since_us": 1}, "--since goes with --agent"),
        (None, {"reason": "r"}, "a workflow id is needed"),
        ("wf-1", {"reason": "r", "tainted": [""]}, "tainted event id is required"),
    ],
)
def test_bad_operator_input_is_refused_before_anything_is_sent(
    workflow_id: str, fields: dict, says: str
) -> None:
    with pytest.raises(OperatorError, match=says):
        quarantine(NO_BROKER, workflow_id, **fields)


def test_a_writer_that_reaches_no_broker_names_every_event_it_did_not_write() -> None:
    writer = Writer(NO_BROKER, timeout_s=1)
    queued = [quarantine(NO_BROKER, f"wf-{i}", reason="r", by="ops", writer=writer)
              for i in range(3)]  # fmt: skip
    assert all(q["offset"] is None for q in queued)  # nothing is sent before the flush
    with pytest.raises(StackError) as raised:
        writer.flush()
    said = str(raised.value)
    assert said.startswith("3 of 3 event(s) not written") and "written:" not in said
    for i, q in enumerate(queued):
        assert f"the Quarantine {q['event_id']} of workflow 'wf-{i}'" in said
    assert f"is the broker at {NO_BROKER.bootstrap} reachable?" in said


def test_the_commands_exit_2_on_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAKELINE_BOOTSTRAP", "127.0.0.1:9")
    got = CliRunner().invoke(cli, ["quarantine", "", "--reason", "r"])
    assert got.exit_code == 2 and "workflow id is required" in got.output
    got = CliRunner().invoke(cli, ["quarantine", "wf-1"])
    assert got.exit_code == 2 and "--reason" in got.output
    got = CliRunner().invoke(cli, ["release", "wf-1", "--reason", ""])
    assert got.exit_code == 2 and "reason is required" in got.output


def test_scope_options_exit_2_on_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAKELINE_BOOTSTRAP", "127.0.0.1:9")
    run = CliRunner().invoke
    got = run(cli, ["quarantine", "--tainted", "--reason", "r"])
    assert got.exit_code == 2 and "--tainted needs --events" in got.output
    got = run(cli, ["quarantine", "--agent", "a", "--since", "yesterday", "--reason", "r"])
    assert got.exit_code == 2 and "neither RFC 3339" in got.output
    got = run(
        cli, ["quarantine", "--agent", "a", "--since", "2026-01-31T12:00:00", "--reason", "r"]
    )
    assert got.exit_code == 2 and "no time zone" in got.output
    got = run(cli, ["release", "--agent", "a", "--boundary", "b"])
    assert got.exit_code == 2 and "give one of" in got.output
    got = run(cli, ["quarantine", "--agent", "a", "--until-undone", "5", "--reason", "r"])
    assert got.exit_code == 2 and "one plan per workflow" in got.output


def test_since_is_rfc_3339_or_an_age() -> None:
    import time

    from wakeline.cli.operator import _since_us

    assert _since_us("2026-01-31T12:00:00Z") == 1_769_860_800_000_000
    assert _since_us("2026-01-31T13:00:00+01:00") == 1_769_860_800_000_000
    age = time.time() * 1_000_000 - _since_us("2h")
    assert 7_199_000_000 < age < 7_260_000_000  # two hours ago, give or take a stall
