"""`wakeline workflow plan WF` over a ledger store (in memory here, PostgreSQL in production)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from wakeline.cli.main import cli
from wakeline.ledger import BLAKE3
from wakeline.ledger.records import LedgerRecord
from wakeline.ledger.segments import PartitionChain
from wakeline.ledger.store import make_entries
from wakeline.ledger.store_memory import MemoryLedgerStore

from .eventkit import Events, store_of

HANDLERS = """
    from wakeline.compensator.registry import Done, compensation
    from wakeline.producers.registry import ToolRegistry

    @compensation("stripe.refund")
    def refund(req):
        return Done()

    TOOLS = ToolRegistry()
    TOOLS.declare("stripe.charge", compensation="stripe.refund")
    TOOLS.declare("crm.update", compensation="crm.restore")
"""


@pytest.fixture
def handlers_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = "wl_cli_plan_handlers"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(HANDLERS))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def workflow() -> Events:
    ev = Events()
    ev.call("kb.read", reversibility="read", compensation=None)
    ev.result(ev.intent(), "ok", external_ids={"charge_id": "ch_7"})
    ev.call("crm.update", compensation="crm.restore", run="run-2")
    ev.quarantine()
    return ev


def invoke(store: MemoryLedgerStore, *args: str):  # noqa: ANN201
    return CliRunner().invoke(cli, ["workflow", "plan", *args], obj={"ledger_store": store})


def test_the_plan_is_printed_newest_first_without_running_anything(handlers_module) -> None:
    ev = workflow()
    got = invoke(store_of(ev.events), "wf-1", "--handlers", handlers_module)
    assert got.exit_code == 0, got.output
    lines = got.output.splitlines()
    assert lines[0].startswith("workflow wf-1 quarantined at 2026-05-28T20:26:47.000000Z by ")
    assert "runaway refunds" in lines[0]
    assert "warning: no handler provides crm.restore (named by crm.update)" in got.output
    assert "dry run, nothing is executed; 3 call(s), newest first: 1 to compensate, " in got.output
    steps = [ln for ln in lines if ln[:4].strip().rstrip(".").isdigit()]
    assert [ln.split()[1:3] for ln in steps] == [
        ["escalate", "crm.update"],
        ["compensate", "stripe.charge"],
        ["skip", "kb.read"],
    ]
    assert "stripe.charge -> stripe.refund  (run run-1, partition 3 leaf 2)" in got.output
    assert "will undo it using charge_id=ch_7" in got.output


def test_json_and_run_scope(handlers_module) -> None:
    ev = workflow()
    got = invoke(store_of(ev.events), "wf-1", "--run", "run-2", "--json")
    assert got.exit_code == 0, got.output
    report = json.loads(got.output)
    assert report["scope"]["kind"] == "run" and report["scope"]["run_id"] == "run-2"
    assert report["quarantine"]["event_id"] == ev.events[-1]["event_id"]
    [step] = report["steps"]
    assert (step["tool"], step["action"], step["reason"]) == (
        "crm.update",
        "escalate",
        "unknown_compensation",
    )
    assert step["ledger"] == {"partition": 3, "leaf_index": 4, "offset": 4}


def test_an_unquarantined_workflow_shows_the_plan_as_if_quarantined_now() -> None:
    ev = Events()
    ev.call()
    got = invoke(store_of(ev.events), "wf-1")
    assert got.exit_code == 0, got.output
    assert got.output.startswith("workflow wf-1 is not quarantined: the plan if it were, now")
    assert "no --handlers: every call needing a compensating action shows as escalated" in (
        got.output
    )


def test_a_handler_module_that_fails_is_a_clear_error() -> None:
    ev = Events()
    ev.call()
    got = invoke(store_of(ev.events), "wf-1", "--handlers", "no_such_module_here")
    assert got.exit_code == 2
    assert "handler module no_such_module_here not found" in got.output


def test_an_unknown_workflow_is_an_error() -> None:
    got = invoke(store_of(Events().events + [Events("wf-9").intent()]), "wf-1")
    assert got.exit_code == 1
    assert "workflow wf-1 has no ledgered events" in got.output


def test_an_event_that_does_not_decode_is_reported_never_skipped_silently() -> None:
    ev = Events()
    ev.call()
    store = store_of(ev.events)
    chain = PartitionChain(BLAKE3, 0)
    leaf = LedgerRecord(0, 0, 0, b"wf-1", b"\xc3\x01" + b"\x00" * 8 + b"junk").leaf_bytes()
    header, hashes = chain.seal([leaf])
    store.append_segment(header, make_entries(header, [leaf], hashes), chain.tree.nodes)
    got = invoke(store, "wf-1", "--json")
    assert got.exit_code == 1
    report = json.loads(got.stdout)
    assert len(report["steps"]) == 1
    [bad] = report["undecodable"]
    assert (bad["partition"], bad["leaf_index"]) == (0, 0)
    assert "fingerprint" in bad["error"]
