"""Compensator benchmark: how fast a quarantine stops an agent and starts undoing its work.

Against the real broker and database (a topic prefix and database of its own, removed
afterwards). The compensator (`Compensator`, the daemon `wakeline compensator` runs) and an
SDK `Emitter` with its `QuarantineGate` run in this process; handlers are no-ops that note
when they start. Each measure runs twice: without background load, and while a separate
process produces other workflows' tool calls (intent + result) at a steady rate (5,000
events/s by default; the rate it achieved is reported).

1. `Quarantine` produced -> the gate refuses the workflow's next call: the clock starts
   before the SDK produces the Quarantine (emit, acknowledged by the broker) and stops when
   the gate's check of the workflow says quarantined (polled every 0.5 ms; a real call is
   then refused to confirm). p50/p99 over --runs workflows of one mutating call each.
2. `Quarantine` produced -> the first compensating handler started (same runs): p50/p99.
   With 100 runs the p99 is the slowest run: on a shared machine one scheduling hiccup
   decides it, so p90 is shown too.
3. A 100-action plan with no-op handlers: Quarantine produced -> the plan `done` in
   PostgreSQL (polled every 5 ms), over --plans workflows of --actions calls each.

Targets: gate p99 <= 100 ms; first handler p99 <= 250 ms; 100-action plan <= 2 s.
    .venv/bin/python bench/compensate.py [--runs 100] [--plans 3] [--rate 5000] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from figures import (  # bench/figures.py: the script's own folder is on sys.path
    Figure,
    emit,
    wait_for,
)

from wakeline.compensator.daemon import Compensator
from wakeline.compensator.registry import CompensationRegistry, Done
from wakeline.compensator.settings import CompensatorSettings
from wakeline.infra import topics
from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.producers import Emitter, ToolRegistry, ToolSpec
from wakeline.producers.errors import WorkflowQuarantined
from wakeline.testkit.harness import create_database, drop_database

TOOLS = ToolRegistry(
    [
        ToolSpec("noop.put", reversibility="reversible", impact="low", compensation="noop.undo"),
        ToolSpec("noop.read", reversibility="read", impact="low"),
    ]
)
TARGETS = {"gate": 0.100, "handler": 0.250, "plan": 2.0}


def noop(**_: object) -> None:
    return None


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


# -- background traffic (a process of its own: it must not share this one's GIL) -----------


def background(kafka: KafkaSettings, rate: int, stop: Any, out: Any) -> None:
    """Other workflows' intents and results at `rate` events/s until `stop` is set; puts
    (events, seconds) on `out`."""
    from wakeline.testkit.samples import produce_at_rate, traffic

    produce_at_rate(kafka, traffic(1 << 40, workflows=500), rate, stop, out)


class Load:
    """The background producer process, started and stopped around a phase."""

    def __init__(self, kafka: KafkaSettings, rate: int) -> None:
        ctx = mp.get_context("spawn")  # this process has librdkafka threads: never fork
        self.stop, self.out = ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=background, args=(kafka, rate, self.stop, self.out))

    def __enter__(self) -> Load:
        self.proc.start()
        time.sleep(2.0)  # spawn, import, reach the steady rate
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.sent, self.seconds = self.out.get(timeout=60)
        self.proc.join(30)

    @property
    def rate(self) -> float:
        return self.sent / self.seconds


# -- the measures -------------------------------------------------------------------------


class Clock:
    """What the no-op handler saw: per quarantine, when its first handler started."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}
        self.calls = 0
        self._lock = threading.Lock()

    def handlers(self) -> CompensationRegistry:
        reg = CompensationRegistry()

        def undo(req: Any) -> Done:
            now = time.perf_counter()
            with self._lock:
                self.first.setdefault(req.quarantine_id, now)
                self.calls += 1
            return Done("nothing to do")

        reg.register("noop.undo", undo)
        return reg


def quarantine(ctx: Any) -> tuple[str, float]:
    """Produce a Quarantine of the whole workflow; its id and the clock before producing."""
    event = ctx.envelope("Quarantine")
    event.update(
        {"scope": "workflow", "reason": "bench", "by": "bench@example.com", "alert_id": None,
         "tainted_event_ids": []}
    )  # fmt: skip
    t0 = time.perf_counter()
    return ctx.emit(event, wait=True), t0


def plan_done(conn: psycopg.Connection, qid: str) -> bool:
    row = conn.execute(
        "SELECT state FROM compensator_plans WHERE quarantine_id = %s", (qid,)
    ).fetchone()
    return row is not None and row[0] == "done"


def stored(conn: psycopg.Connection, wf: str, want: int) -> bool:
    """The compensator has recorded `want` events of the workflow (its calls are known)."""
    row = conn.execute(
        "SELECT count(*) FROM compensator_events WHERE workflow_key = %s", (wf.encode(),)
    ).fetchone()
    return row is not None and row[0] >= want


def latency_runs(emitter: Emitter, clock: Clock, conn: psycopg.Connection, runs: int) -> dict:
    gate, handler = [], []
    for _ in range(runs):
        wf = f"bench-{uuid.uuid4()}"
        ctx = emitter.workflow(wf, agent_id="bench", principal="bench")
        ctx.call("noop.put", noop, {"i": 0})
        wait_for(lambda: stored(conn, wf, 2), 30, "the call to be recorded", 0.005)  # noqa: B023
        qid, t0 = quarantine(ctx)
        t_gate = wait_for(lambda: emitter.gate.check(wf) is not None, 30, "the gate", 0.0005)  # noqa: B023
        try:
            ctx.call("noop.read", noop, {"i": 1})
            raise SystemExit("the gate said quarantined, yet the call ran")
        except WorkflowQuarantined:
            pass
        t_handler = wait_for(lambda: qid in clock.first, 30, "the handler", 0.001)  # noqa: B023
        t_handler = clock.first[qid]
        wait_for(lambda: plan_done(conn, qid), 30, "the plan", 0.005)  # noqa: B023
        gate.append(t_gate - t0)
        handler.append(t_handler - t0)
    return {"gate": gate, "handler": handler}


def plan_runs(
    emitter: Emitter, clock: Clock, conn: psycopg.Connection, plans: int, actions: int
) -> list[float]:
    out = []
    for _ in range(plans):
        wf = f"bench-plan-{uuid.uuid4()}"
        ctx = emitter.workflow(wf, agent_id="bench", principal="bench")
        for i in range(actions):
            ctx.call("noop.put", noop, {"i": i})
        emitter.flush(30)
        wait_for(lambda: stored(conn, wf, 2 * actions), 60, "the calls", 0.01)  # noqa: B023
        before = clock.calls
        qid, t0 = quarantine(ctx)
        t1 = wait_for(lambda: plan_done(conn, qid), 120, "the plan", 0.005)  # noqa: B023
        if clock.calls - before != actions:
            raise SystemExit(f"{clock.calls - before} handler calls for {actions} actions")
        out.append(t1 - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100, help="quarantines per latency series")
    ap.add_argument("--plans", type=int, default=3, help="100-action plans per load")
    ap.add_argument("--actions", type=int, default=100, help="actions per plan")
    ap.add_argument("--rate", type=int, default=5000, help="background events/s (0: none)")
    ap.add_argument("--only", choices=("idle", "load"), help="one of the two loads")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    ap.add_argument("--figures", help="write the figures for bench/run.py to this file")
    args = ap.parse_args(argv)
    logging.getLogger("wakeline").setLevel(logging.ERROR)  # a plan's start and end are warnings

    load_before = os.getloadavg()
    kafka = replace(KafkaSettings.from_env(), topics=Topics(f"bench{uuid.uuid4().hex[:8]}.wl."))
    topics.ensure_topics(kafka)
    dsn = create_database()
    clock = Clock()
    results: dict[str, dict[str, Any]] = {}
    loads = [("idle", 0), ("load", args.rate)]
    if args.only:
        loads = [x for x in loads if x[0] == args.only]
    try:
        with tempfile.TemporaryDirectory() as tmp, psycopg.connect(dsn, autocommit=True) as conn:
            emitter = Emitter(kafka, spool_dir=Path(tmp), registry=TOOLS, loop_guard=False)
            daemon = Compensator(kafka, dsn, clock.handlers(), CompensatorSettings()).start()
            try:
                assert emitter.gate is not None and emitter.gate.wait_ready(30)
                latency_runs(emitter, clock, conn, 3)  # warm up: group join, connections
                for name, rate in loads:
                    load = Load(kafka, rate) if rate else contextlib.nullcontext()
                    with load:
                        lat = latency_runs(emitter, clock, conn, args.runs)
                        plans = plan_runs(emitter, clock, conn, args.plans, args.actions)
                    results[name] = {**lat, "plan": plans}
                    if rate:
                        results[name]["rate"] = load.rate
            finally:
                daemon.stop(30)
                emitter.close(10)
    finally:
        with contextlib.suppress(Exception):
            topics.delete_topics(kafka)
        drop_database(dsn)

    print(
        f"compensator bench  broker={kafka.bootstrap}  runs={args.runs}  "
        f"plans={args.plans} x {args.actions} actions"
    )
    print(f"{'measure':<50} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}  {'target':>9}  ok")
    figures: dict[str, Any] = {}
    for name, r in results.items():
        label = "no background load" if name == "idle" else f"{r['rate']:,.0f} events/s background"
        print(label)
        rows = [
            ("gate", "Quarantine produced -> gate refuses (ms)", 1000),
            ("handler", "Quarantine produced -> first handler (ms)", 1000),
            ("plan", f"{args.actions}-action no-op plan done (s)", 1),
        ]
        for key, what, scale in rows:
            v = r[key]
            p50, p90, p99, top = pct(v, 0.5), pct(v, 0.9), pct(v, 0.99), max(v)
            target = TARGETS[key]
            ok = "yes" if (p99 if key != "plan" else top) <= target else "NO"
            tgt = f"{'p99' if key != 'plan' else 'max'}<={target * scale:g}"
            print(
                f"  {what:<48} {p50 * scale:>7.1f} {p90 * scale:>7.1f} {p99 * scale:>7.1f} "
                f"{top * scale:>7.1f}  {tgt:>9}  {ok}"
            )
            figures[f"{name}.{key}"] = {"p50": p50, "p90": p90, "p99": p99, "max": top,
                                        "n": len(v)}  # fmt: skip
        if "rate" in r:
            figures[f"{name}.rate"] = r["rate"]
    load = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(load_before, os.getloadavg(), strict=True))
    print(f"load average before/after (1, 5, 15 min): {load} on {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    out = []
    for name, r in results.items():
        load = "idle" if name == "idle" else f"{r['rate']:,.0f} ev/s"
        out += [
            Figure(f"quarantine -> SDK gate refuses, p99 ({load})", pct(r["gate"], 0.99) * 1000,
                   "ms", TARGETS["gate"] * 1000),
            Figure(f"quarantine -> first handler, p99 ({load})", pct(r["handler"], 0.99) * 1000,
                   "ms", TARGETS["handler"] * 1000),
            Figure(f"{args.actions}-action plan done, max ({load})", max(r["plan"]), "s",
                   TARGETS["plan"]),
        ]  # fmt: skip
    return emit(out, args.figures)


if __name__ == "__main__":
    sys.exit(main())
