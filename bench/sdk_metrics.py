"""What the SDK's opt-in metrics cost per tool call, offline (no broker needed).

1. The hooks alone (timeit): the check a call pays with metrics off, and the counter
   increment it pays with them on, in ns.
2. Whole relaxed tool calls through a transport that drops the frames, thread CPU per
   call, metrics off and on alternated (the machine's load moves between rounds): the
   median of each round in ns, and the median over rounds.

Options: --calls N (per round), --rounds R.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
import timeit
from pathlib import Path

from figures import Drop  # bench/figures.py: the script's own folder is on sys.path

from wakeline.infra.metrics import SDK_CALLS, PrometheusMetrics
from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.producers import Emitter, ToolRegistry


def noop(**_: object) -> None:
    return None


def hooks() -> tuple[float, float]:
    class Holder:
        metrics = None

    holder, n = Holder(), 2_000_000
    off = timeit.timeit(lambda: holder.metrics is not None, number=n) / n
    empty = timeit.timeit(lambda: None, number=n) / n
    m = PrometheusMetrics()
    on = timeit.timeit(lambda: m.inc(SDK_CALLS, "kv.get", "ok"), number=n // 4) / (n // 4)
    return (off - empty) * 1e9, (on - empty) * 1e9


_next = iter(range(1 << 62))


def per_call_ns(emitter: Emitter, calls: int) -> float:
    """Median thread CPU of a call; every call's arguments differ (no loop-guard refusals)."""
    ctx = emitter.workflow("bench-metrics", agent_id="bench", principal="bench")
    samples = []
    gc.disable()
    try:
        for _ in range(calls):
            i = next(_next)
            t0 = time.thread_time_ns()
            ctx.call("kv.get", noop, {"i": i})
            samples.append(time.thread_time_ns() - t0)
    finally:
        gc.enable()
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    off_ns, on_ns = hooks()
    print(f"hook alone: off {off_ns:.0f} ns (one attribute check), on {on_ns:.0f} ns (inc)")
    registry = ToolRegistry()
    registry.declare("kv.get", reversibility="read", impact="low")
    kafka = KafkaSettings(bootstrap="127.0.0.1:1", topics=Topics("bench."))
    with tempfile.TemporaryDirectory() as tmp:
        emitter = Emitter(
            kafka, spool_dir=Path(tmp), registry=registry, transport=Drop(),
            quarantine_gate=False, publish_schemas=False,
        )  # fmt: skip
        per_call_ns(emitter, 2000)  # warm up
        rounds: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(a.rounds):
            for mode in ("off", "on"):
                emitter.metrics = PrometheusMetrics() if mode == "on" else None
                rounds[mode].append(per_call_ns(emitter, a.calls))
        emitter.close(timeout=1)
    for mode, values in rounds.items():
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(f"relaxed call, metrics {mode}: median {statistics.median(values):.0f} ns ({shown})")


if __name__ == "__main__":
    main()
