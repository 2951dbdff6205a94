"""Benchmark of the agent-side SDK against the broker (`make bench`).

1. Overhead added to a no-op tool call (intent + result), per call, sequential, one
   workflow: p50 / p99 in microseconds, relaxed (read-only tool) and strict (mutating tool).
2. Sustained tool calls per second from this one process: sequential, and with 64
   concurrent workflows on one asyncio loop; strict and relaxed. Throughput counts a call
   when its result is handed to the producer; the run ends with `flush()`, which is included.

Broker from `KafkaSettings.from_env()`; topics under a fresh prefix, deleted afterwards.
Options: --calls N (per latency series), --seconds S (per throughput run), --profile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

from figures import Figure, emit  # bench/figures.py: the script's own folder is on sys.path

from wakeline.infra import topics
from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.producers import Emitter, ToolRegistry

TARGETS = {
    "relaxed p50": 50.0,
    "relaxed p99": 500.0,
    "strict p50": 500.0,
    "strict 64-wf calls/s": 30_000.0,
}


def noop(**_: object) -> None:
    return None


async def anoop(**_: object) -> None:
    return None


def pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def latency(emitter: Emitter, tool: str, calls: int) -> tuple[float, float, float]:
    ctx = emitter.workflow(f"bench-lat-{uuid.uuid4()}", agent_id="bench", principal="bench")
    for i in range(min(2000, calls)):  # warm up: connections, caches, branch predictors
        ctx.call(tool, noop, {"i": i, "op": "warmup"})
    bare = []
    for _ in range(10_000):
        t0 = time.perf_counter_ns()
        noop(i=1)
        bare.append(time.perf_counter_ns() - t0)
    base_ns = statistics.median(bare)
    out = []
    cpu0 = time.thread_time_ns()
    for i in range(calls):
        t0 = time.perf_counter_ns()
        ctx.call(tool, noop, {"i": i, "op": "bench"})
        out.append((time.perf_counter_ns() - t0 - base_ns) / 1000)
    cpu_us = (time.thread_time_ns() - cpu0) / calls / 1000
    out.sort()
    return pct(out, 0.50), pct(out, 0.99), statistics.fmean(out), cpu_us


def sequential_rate(emitter: Emitter, tool: str, seconds: float) -> float:
    ctx = emitter.workflow(f"bench-seq-{uuid.uuid4()}", agent_id="bench", principal="bench")
    n, t0 = 0, time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(100):
            ctx.call(tool, noop, {"i": n})
            n += 1
        if time.perf_counter() >= deadline:
            break
    emitter.flush(60)
    return n / (time.perf_counter() - t0)


def concurrent_rate(
    emitter: Emitter, tool: str, seconds: float, workflows: int
) -> tuple[float, float, float]:
    """Calls/s, and CPU per call: of the loop's thread, and of the whole process (librdkafka's
    threads and the SDK's background threads included)."""

    async def agent(k: int, deadline: float, counts: list[int]) -> None:
        ctx = emitter.workflow(
            f"bench-c{k}-{uuid.uuid4()}", agent_id=f"bench-{k}", principal="bench"
        )
        n = 0
        while time.perf_counter() < deadline:
            for _ in range(20):
                await ctx.acall(tool, anoop, {"i": n})
                n += 1
        counts[k] = n

    async def main() -> int:
        counts = [0] * workflows
        deadline = time.perf_counter() + seconds
        await asyncio.gather(*(agent(k, deadline, counts) for k in range(workflows)))
        return sum(counts)

    t0 = time.perf_counter()
    cpu0, proc0 = time.thread_time(), _process_cpu()
    total = asyncio.run(main())
    emitter.flush(60)
    rate = total / (time.perf_counter() - t0)
    return rate, (time.thread_time() - cpu0) / total * 1e6, (_process_cpu() - proc0) / total * 1e6


def _process_cpu() -> float:
    t = os.times()
    return t.user + t.system


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workflows", type=int, default=64)
    parser.add_argument("--profile", action="store_true", help="cProfile the 64-wf strict run")
    parser.add_argument("--figures", help="write the figures for bench/run.py to this file")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    base = KafkaSettings.from_env()
    kafka = replace(base, topics=Topics(f"bench{uuid.uuid4().hex[:8]}.wakeline."), partitions=12)
    topics.ensure_topics(kafka)
    registry = ToolRegistry()
    registry.declare("noop.read", reversibility="read", impact="low")
    registry.declare("noop.write", reversibility="reversible", impact="low")
    rows: list[tuple[str, str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        emitter = Emitter(kafka, spool_dir=Path(tmp) / "spool", registry=registry)
        try:
            if emitter.gate is not None:
                emitter.gate.wait_ready(10)
            gc.collect()
            for mode, tool in (("relaxed", "noop.read"), ("strict", "noop.write")):
                p50, p99, mean, cpu = latency(emitter, tool, args.calls)
                rows.append((f"{mode} p50", "µs", p50, f"mean {mean:.0f}; caller CPU {cpu:.0f}"))
                rows.append((f"{mode} p99", "µs", p99, ""))
            emitter.flush(60)
            for mode, tool in (("relaxed", "noop.read"), ("strict", "noop.write")):
                rate = sequential_rate(emitter, tool, args.seconds)
                rows.append((f"{mode} sequential calls/s", "calls/s", rate, "1 workflow"))
            for mode, tool in (("relaxed", "noop.read"), ("strict", "noop.write")):
                if args.profile and mode == "strict":
                    import cProfile
                    import pstats

                    prof = cProfile.Profile()
                    prof.enable()
                rate, cpu, proc = concurrent_rate(emitter, tool, args.seconds, args.workflows)
                if args.profile and mode == "strict":
                    prof.disable()
                    pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(30)
                rows.append(
                    (
                        f"{mode} {args.workflows}-wf calls/s",
                        "calls/s",
                        rate,
                        f"{args.workflows} asyncio workflows; CPU/call: loop thread {cpu:.0f} "
                        f"µs, process {proc:.0f} µs",
                    )
                )
            stats = emitter.transport
            spooled = getattr(stats, "spooled", 0)
        finally:
            left = emitter.close(60)
            with contextlib.suppress(Exception):
                topics.delete_topics(kafka)

    print(
        f"wakeline SDK emit benchmark  broker={kafka.bootstrap}  "
        f"calls/series={args.calls}  seconds/run={args.seconds:g}"
    )
    print(f"{'measure':<28} {'value':>12}  {'unit':<8} {'target':>10}  {'ok':<4} note")
    print("-" * 84)
    for name, unit, value, note in rows:
        target = TARGETS.get(name)
        if target is None:
            verdict, tgt = "", ""
        elif unit == "µs":
            verdict, tgt = ("yes" if value <= target else "NO"), f"<= {target:g}"
        else:
            verdict, tgt = ("yes" if value >= target else "NO"), f">= {target:,.0f}"
        print(f"{name:<28} {value:>12,.1f}  {unit:<8} {tgt:>10}  {verdict:<4} {note}")
    print(f"events spooled during the run: {spooled}; undelivered at close: {left}")
    load = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(load_before, os.getloadavg(), strict=True))
    print(
        f"load average before/after (1, 5, 15 min): {load} on {os.cpu_count()} CPUs "
        "(the broker shares them)"
    )
    return emit([
        Figure(f"SDK {name}", value, unit, TARGETS.get(name), "lower" if unit == "µs" else "higher",
               note)
        for name, unit, value, note in rows
    ], args.figures)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
