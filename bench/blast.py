"""Blast-radius benchmark: how fast a quarantine that spans workflows is undone everywhere.

Against the real broker and database (a topic prefix and database of its own, removed
afterwards); the compensator (`Compensator`, what `wakeline compensator` runs) and an SDK
`Emitter` run in this process, with no-op handlers that note when they ran.

1. chain: three workflows, each one call using the previous workflow's call
   (`parent_event_ids`); a taint quarantine of the first call (`wakeline quarantine
   --tainted --events E`, an origin the compensator fans out) -> the last of the three
   compensating actions ended (children first: the first workflow's call is undone last).
   Clock: from before the Quarantine is produced to the last handler's end.
2. fan-out: one call, and 100 workflows whose call uses it; a taint quarantine of that
   call -> the last of the 101 compensating actions ended.
3. agent gate: `wakeline quarantine --agent A` acknowledged by the broker -> the SDK gate
   refuses the agent (key `agent:A` on the quarantines topic), polled every 0.5 ms; and how
   long the operator's write itself took (a producer of its own, made for the one event).

    .venv/bin/python bench/blast.py [--runs 5] [--fanout 100] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
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

from wakeline.compensator import operator
from wakeline.compensator.daemon import Compensator
from wakeline.compensator.registry import CompensationRegistry, Done
from wakeline.compensator.settings import CompensatorSettings
from wakeline.infra import topics
from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.producers import Emitter, ToolRegistry, ToolSpec
from wakeline.testkit.harness import create_database, drop_database

TOOLS = ToolRegistry(
    [ToolSpec("noop.put", reversibility="reversible", impact="low", compensation="noop.undo")]
)


class Clock:
    """When each compensated call's handler ended, by intent id."""

    def __init__(self) -> None:
        self.ended: dict[str, float] = {}
        self.order: list[str] = []
        self._lock = threading.Lock()

    def handlers(self) -> CompensationRegistry:
        reg = CompensationRegistry()

        def undo(req: Any) -> Done:
            with self._lock:
                self.ended[req.intent_id] = time.perf_counter()
                self.order.append(req.intent_id)
            return Done("nothing to do")

        reg.register("noop.undo", undo)
        return reg


def indexed(conn: psycopg.Connection, intent_ids: list[str]) -> bool:
    """The compensator has read these calls (they are in its causal index)."""
    row = conn.execute(
        "SELECT count(*) FROM compensator_calls WHERE intent_id = ANY(%s)", (intent_ids,)
    ).fetchone()
    return row is not None and row[0] == len(intent_ids)


def call(emitter: Emitter, parents: list[str]) -> str:
    ctx = emitter.workflow(f"blast-{uuid.uuid4()}", agent_id="bench", principal="bench")
    c = ctx.begin("noop.put", {"i": 0}, parents=parents)
    c.ok(None)
    return c.intent_id


def taint_run(
    kafka: KafkaSettings, emitter: Emitter, clock: Clock, conn: psycopg.Connection, width: int,
    chain: bool,
) -> tuple[float, float]:  # fmt: skip
    """Seconds from a taint quarantine of a root call to the end of the last compensating
    action of its `width` dependents (a chain of them, or `width` children of the root):
    from before the operator's write, and from the broker's acknowledgement of it."""
    root = call(emitter, [])
    ids = [root]
    for _ in range(width):
        ids.append(call(emitter, [ids[-1] if chain else root]))
    emitter.flush(30)
    wait_for(lambda: indexed(conn, ids), 60, "the calls indexed", 0.01)
    t0 = time.perf_counter()
    operator.quarantine(kafka, None, reason="bench", by="bench", tainted=[root])
    t_acked = time.perf_counter()
    wait_for(lambda: all(i in clock.ended for i in ids), 300, "every action", 0.002)
    if chain:  # children first: the chain is undone from its end back to the root
        got = [i for i in clock.order if i in set(ids)]
        if got != ids[::-1]:
            raise SystemExit(f"chain undone out of order: {got} (want {ids[::-1]})")
    end = max(clock.ended[i] for i in ids)
    return end - t0, end - t_acked


def gate_run(kafka: KafkaSettings, emitter: Emitter) -> tuple[float, float]:
    """(seconds from the acknowledged Quarantine to the gate refusing the agent, seconds the
    operator's write took: `wakeline quarantine` makes a producer of its own each time)."""
    agent = f"agent-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    operator.quarantine(kafka, None, reason="bench", by="bench", agent=agent)
    t_acked = time.perf_counter()
    assert emitter.gate is not None
    t1 = wait_for(lambda: emitter.gate.check(f"agent:{agent}") is not None, 30, "the gate",
                  0.0005)  # fmt: skip
    return t1 - t_acked, t_acked - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="runs of each measure")
    ap.add_argument("--fanout", type=int, default=100, help="workflows of the fan-out")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    ap.add_argument("--quick", action="store_true", help="one run, fan-out of 20: check only")
    ap.add_argument("--figures", help="write the figures for bench/run.py to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.fanout = 1, 20
    logging.getLogger("wakeline").setLevel(logging.ERROR)

    load_before = os.getloadavg()
    kafka = replace(KafkaSettings.from_env(), topics=Topics(f"blast{uuid.uuid4().hex[:8]}.wl."))
    topics.ensure_topics(kafka)
    dsn = create_database()
    clock = Clock()
    results: dict[str, list[float]] = {
        k: [] for k in ("chain", "chain.acked", "fanout", "fanout.acked", "gate", "write")
    }
    try:
        with tempfile.TemporaryDirectory() as tmp, psycopg.connect(dsn, autocommit=True) as conn:
            emitter = Emitter(kafka, spool_dir=Path(tmp), registry=TOOLS, loop_guard=False)
            daemon = Compensator(kafka, dsn, clock.handlers(), CompensatorSettings()).start()
            try:
                assert emitter.gate is not None and emitter.gate.wait_ready(30)
                taint_run(kafka, emitter, clock, conn, 2, True)  # warm up
                for _ in range(args.runs):
                    for key, width, chain in (("chain", 2, True), ("fanout", args.fanout, False)):
                        total, acked = taint_run(kafka, emitter, clock, conn, width, chain)
                        results[key].append(total)
                        results[f"{key}.acked"].append(acked)
                    gate, write = gate_run(kafka, emitter)
                    results["gate"].append(gate)
                    results["write"].append(write)
            finally:
                daemon.stop(30)
                emitter.close(10)
    finally:
        with contextlib.suppress(Exception):
            topics.delete_topics(kafka)
        drop_database(dsn)

    print(f"blast-radius bench  broker={kafka.bootstrap}  runs={args.runs}")
    labels = {
        "chain": "taint of a 3-workflow chain -> last action done (s)",
        "chain.acked": "  the same, from the Quarantine's acknowledgement (s)",
        "fanout": f"taint fanned out to {args.fanout + 1} workflows -> last action done (s)",
        "fanout.acked": "  the same, from the Quarantine's acknowledgement (s)",
        "gate": "agent Quarantine acknowledged -> SDK gate refuses the agent (ms)",
        "write": "the operator's write of the Quarantine (ms)",
    }
    figures: dict[str, Any] = {}
    print(f"{'measure':<66} {'min':>7} {'median':>7} {'max':>7}")
    for key, values in results.items():
        scale = 1000 if key in ("gate", "write") else 1
        s = sorted(values)
        med = s[len(s) // 2]
        print(f"  {labels[key]:<64} {s[0] * scale:>7.3f} {med * scale:>7.3f} {s[-1] * scale:>7.3f}")
        figures[key] = {"min": s[0], "median": med, "max": s[-1], "n": len(s)}
    load = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(load_before, os.getloadavg(), strict=True))
    print(f"load average before/after (1, 5, 15 min): {load} on {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    out = []
    for k, f in figures.items():
        unit, scale = ("ms", 1000) if k in ("gate", "write") else ("s", 1)
        name = labels[k.split(".")[0]].rsplit(" (", 1)[0]
        acked = ", from the Quarantine's acknowledgement" if k.endswith(".acked") else ""
        out.append(Figure(f"{name}{acked}, median", f["median"] * scale, unit))
    return emit(out, args.figures)


if __name__ == "__main__":
    sys.exit(main())
