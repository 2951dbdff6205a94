"""The LangGraph integration on the real stack (producers/adapters/langgraph.py): a small
graph of deterministic nodes (no model) acts on the example world through the SDK; its
checkpoints are WorkflowSnapshots in the ledger; going back to the checkpoint after the
charge (LangGraph's time travel) undoes the reservation and the VM made after it, keeps the
charge, and the replayed steps act again in a new run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import pytest

pytest.importorskip("langgraph")

from langgraph.graph import END, START, StateGraph  # noqa: E402

from wakeline.compensator.registry import CompensationRegistry  # noqa: E402
from wakeline.infra.settings import KafkaSettings  # noqa: E402
from wakeline.producers import Emitter, SdkError  # noqa: E402
from wakeline.producers.adapters.langgraph import (  # noqa: E402
    TimeTravelRefused,
    WakelineGraph,
    snapshot_name,
)
from wakeline.testkit.harness import start_worker, stop_worker  # noqa: E402
from wakeline_world import World  # noqa: E402

from .conftest import new_wf, topic_events, world_args  # noqa: E402

pytestmark = pytest.mark.integration


class Order(TypedDict, total=False):
    tag: str
    charge_id: str
    reservation_id: str
    vm_id: str


@pytest.fixture
def worker(fresh_kafka: KafkaSettings, fresh_dsn: str, tmp_path: Path) -> Iterator[None]:
    log = tmp_path / "worker.log"
    proc = start_worker(fresh_kafka, fresh_dsn, "--checkpoint-interval-s", "0", "--no-audit",
                        "--segment-max-age-ms", "100", log_path=str(log))  # fmt: skip
    yield
    assert stop_worker(proc) == 0, log.read_text()[-3000:]


def order_graph(wl: WakelineGraph, world: World) -> Any:
    """charge -> reserve -> provision, each node one tool call of the world through the SDK."""
    n = iter(range(1000))

    def step(tool: str, key: str) -> Any:
        def node(s: Order) -> Order:
            r = wl.call(tool, world.tool(tool), world_args(tool, f"{s['tag']}-{next(n)}"))
            return {key: r[key]}  # type: ignore[misc]

        return node

    g = StateGraph(Order)
    g.add_node("charge", step("payments.charge", "charge_id"))
    g.add_node("reserve", step("inventory.reserve", "reservation_id"))
    g.add_node("provision", step("cloud.create_vm", "vm_id"))
    g.add_edge(START, "charge")
    g.add_edge("charge", "reserve")
    g.add_edge("reserve", "provision")
    g.add_edge("provision", END)
    return g.compile(checkpointer=wl.checkpointer)


def test_going_back_to_a_langgraph_checkpoint_undoes_what_came_after_it(
    fresh_kafka: KafkaSettings,
    fresh_dsn: str,
    world: World,
    world_emitter: Emitter,
    handlers: CompensationRegistry,
    start_compensator: Any,
    worker: None,
) -> None:
    wf = new_wf()
    wl = WakelineGraph(world_emitter, wf, agent_id="planner", principal="alice@example.com",
                       dsn=fresh_dsn, wait_s=90)  # fmt: skip
    app = order_graph(wl, world)
    cfg = wl.config("thread-1")
    first = wl.invoke(app, {"tag": wf[-8:]}, cfg)
    history = list(app.get_state_history(cfg))
    assert len(wl.snapshots) == len(history)  # every LangGraph checkpoint is a Wakeline one
    after_charge = next(s for s in history if s.next == ("reserve",))
    cp_id = after_charge.config["configurable"]["checkpoint_id"]
    first_run = wl.context.run_id

    start_compensator(handlers)
    second = wl.invoke(app, None, after_charge.config)  # time travel

    # the charge made before the checkpoint stands; what came after it is undone, once
    assert world.payments.get(first["charge_id"])["refunded_cents"] == 0
    assert world.inventory.reservation(first["reservation_id"])["status"] == "released"
    assert world.cloud.vm(first["vm_id"])["status"] == "deleted"
    assert world.performed("inventory.release") == {first["reservation_id"]: 1}
    assert world.performed("cloud.delete_vm") == {first["vm_id"]: 1}
    assert world.performed("payments.refund") == {}
    # the replayed steps acted again, in a new run, and that stands
    assert second["charge_id"] == first["charge_id"]
    assert second["reservation_id"] != first["reservation_id"]
    assert world.inventory.reservation(second["reservation_id"])["status"] != "released"
    assert world.cloud.vm(second["vm_id"])["status"] != "deleted"
    assert wl.context.run_id != first_run

    (report,) = wl.rollbacks
    assert report["checkpoint"]["name"] == snapshot_name(cp_id)
    assert report["release"] is not None and report["resumed_runs"] == []
    events = topic_events(fresh_kafka, wf)
    (q,) = [e for e in events if e["type"] == "Quarantine"]
    assert (q["run_id"], q["after_event_id"]) == (first_run, report["checkpoint"]["event_id"])
    snaps = [e for e in events if e["type"] == "WorkflowSnapshot"]
    second_run = wl.context.run_id
    assert {e["run_id"] for e in snaps} == {first_run, second_run}

    # further back, to before the charge (a checkpoint of the first run): the charge is
    # undone, and so is the second run, which went on from after that point
    before_charge = next(s for s in history if s.next == ("charge",))
    third = wl.invoke(app, None, before_charge.config)
    assert world.performed("payments.refund") == {first["charge_id"]: 1}
    assert world.performed("inventory.release") == {
        first["reservation_id"]: 1, second["reservation_id"]: 1
    }  # fmt: skip
    assert world.performed("cloud.delete_vm") == {first["vm_id"]: 1, second["vm_id"]: 1}
    assert third["charge_id"] != first["charge_id"]
    assert world.payments.get(third["charge_id"])["refunded_cents"] == 0
    back = wl.rollbacks[-1]
    assert [r["run_id"] for r in back["resumed_runs"]] == [second_run]
    assert back["checkpoint"]["run_id"] == first_run


def test_refuse_stops_a_time_travel_before_any_step_runs_again(
    world: World, world_emitter: Emitter
) -> None:
    wl = WakelineGraph(world_emitter, new_wf(), agent_id="planner", principal="p",
                       on_time_travel="refuse")  # fmt: skip
    app = order_graph(wl, world)
    cfg = wl.config("thread-1")
    first = wl.invoke(app, {"tag": "refuse"}, cfg)
    calls = len(world.calls())
    past = next(s for s in app.get_state_history(cfg) if s.next == ("reserve",))
    with pytest.raises(TimeTravelRefused, match="side effects are not undone"):
        wl.invoke(app, None, past.config)
    assert len(world.calls()) == calls  # no step ran again
    assert world.inventory.reservation(first["reservation_id"])["status"] == "held"
    with pytest.raises(SdkError, match="durability='sync'"):
        app.invoke({"tag": "async"}, wl.config("thread-2"))  # LangGraph's default: refused
