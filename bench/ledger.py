"""Ledger builder benchmark: events/s into persisted, published segments, and latency.

Runs against the real broker and database with a topic prefix and database of its own
(both removed afterwards). Workers are real `wakeline worker` processes (faust worker
hosting the batch-consumer builder and/or the audit publisher agent).

1. Sustained throughput: N events are produced first; the workers then drain them. The rate
   is counted from the first persisted segment to the last (start-up, ~3 s of faust and
   group join, is reported apart). Three deployments: the builder and the audit publisher in
   separate processes, the auditor at nice 10 so the ledger comes first and the audit
   catches up (its rate is reported too); the default `wakeline worker` (the builder, with
   the audit publisher in a child process of its own); and `--single-process`, both in one
   process (they share the GIL).
2. Latency at a fixed rate: events are produced at 5,000/s while the worker runs; for each,
   production time (its record's CreateTime, stamped by `produce()`) to its segment's
   persistence (the CreateTime of the segment's header on the ledger topic, which the builder
   produces right after the PostgreSQL commit), in milliseconds.

Targets: >= 20,000 events/s sustained; p99 <= 2 s at 5,000 events/s.
    .venv/bin/python bench/ledger.py [--events 200000] [--rate 5000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import uuid
from dataclasses import replace

from confluent_kafka import Consumer, Producer, TopicPartition
from figures import Figure, emit  # bench/figures.py: the script's own folder is on sys.path

from wakeline.infra import topics
from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.testkit.harness import create_database, drop_database, start_worker, stop_worker
from wakeline.testkit.samples import frames, traffic

WORKER_ARGS: tuple[str, ...] = ("--checkpoint-interval-s", "0")


def ledgered(dsn: str) -> int:
    """Leaves in persisted segments, from PostgreSQL itself."""
    from wakeline.processors.runner import postgres_store_factory

    store = postgres_store_factory(dsn)()
    try:
        total = 0
        for p in store.partitions():
            last = store.last_segment(p)
            total += last[0].tree_size if last else 0
        return total
    finally:
        store.close()


def produce_all(kafka: KafkaSettings, count: int) -> float:
    encoded = [frames(e) for e in traffic(count, workflows=500)]
    p = Producer(
        kafka.client_config(**{"linger.ms": 20, "queue.buffering.max.messages": 2_000_000})
    )
    t0 = time.perf_counter()
    for key, value, headers in encoded:
        while True:
            try:
                p.produce(kafka.topics.events, key=key, value=value, headers=headers)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(120) == 0
    return count / (time.perf_counter() - t0)


def audited(kafka: KafkaSettings, consumer: Consumer) -> int:
    """Audit records published so far (sum of the audit topic's high watermarks)."""
    topic = kafka.topics.audit
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
               for p in parts)  # fmt: skip


def throughput(
    kafka: KafkaSettings, dsn: str, count: int, roles: list[tuple[int, tuple[str, ...]]]
) -> dict[str, float]:
    """Drain `count` events with one worker process per entry of `roles` (nice, options)."""
    produce_rate = produce_all(kafka, count)
    watch = Consumer(kafka.client_config(**{"group.id": f"b-{uuid.uuid4().hex[:8]}"}))
    t0 = time.perf_counter()
    procs = [start_worker(kafka, dsn, *WORKER_ARGS, *args, nice=nice) for nice, args in roles]
    first_at = ledger_done = audit_done = None
    first_n = 0
    try:
        while ledger_done is None or audit_done is None:
            n = ledgered(dsn)
            now = time.perf_counter()
            if n and first_at is None:
                first_at, first_n = now, n
            if n >= count and ledger_done is None:
                ledger_done = now
            if audit_done is None and audited(kafka, watch) >= count:
                audit_done = now
            if any(p.poll() is not None for p in procs):
                raise SystemExit("a worker exited early")
            if now - t0 > 600:
                raise SystemExit(f"only {n} of {count} ledgered after 600 s")
            time.sleep(0.1)
    finally:
        for p in procs:
            stop_worker(p)
        watch.close()
    assert first_at is not None and ledger_done is not None and audit_done is not None
    return {
        "events": count,
        "produce_rate": produce_rate,
        "startup_s": first_at - t0,
        "sustained": (count - first_n) / (ledger_done - first_at)
        if ledger_done > first_at
        else float(count),
        "end_to_end": count / (ledger_done - t0),
        "audit_rate": count / (audit_done - first_at),
    }


def latency(kafka: KafkaSettings, dsn: str, rate: int, seconds: float) -> dict[str, float]:
    proc = start_worker(kafka, dsn, *WORKER_ARGS)
    try:
        time.sleep(6)  # faust boot and group join; not part of the measurement
        p = Producer(kafka.client_config(**{"linger.ms": 1}))
        gen = traffic(int(rate * seconds) + 1, workflows=500)
        t0 = time.perf_counter()
        sent = 0
        while sent < rate * seconds:
            due = int((time.perf_counter() - t0) * rate) + 1
            while sent < min(due, rate * seconds):
                key, value, headers = frames(next(gen))
                p.produce(kafka.topics.events, key=key, value=value, headers=headers)
                sent += 1
            p.poll(0)
            time.sleep(0.001)
        p.flush(30)
        achieved = sent / (time.perf_counter() - t0)
        lat = collect_latencies(kafka, sent)
    finally:
        stop_worker(proc)
    lat.sort()
    return {
        "rate": achieved,
        "events": len(lat),
        "p50": lat[len(lat) // 2],
        "p99": lat[int(len(lat) * 0.99)],
        "max": lat[-1],
    }


def _read_all(kafka: KafkaSettings, topic: str, want: int | None = None) -> list:
    c = Consumer(kafka.client_config(**{"group.id": f"b-{uuid.uuid4().hex[:8]}"}))
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, -2) for p in parts])
    out: list = []
    idle_since = time.monotonic()
    try:
        while time.monotonic() - idle_since < 2.0 and (want is None or len(out) < want):
            msgs = [m for m in c.consume(5000, 0.3) if m.error() is None]
            if msgs:
                idle_since = time.monotonic()
            out += [(m.partition(), m.offset(), m.timestamp()[1], m.value()) for m in msgs]
    finally:
        c.close()
    return out


def collect_latencies(kafka: KafkaSettings, want: int) -> list[float]:
    """Seconds from each event's production (its record's CreateTime, stamped by produce())
    to the publication of its segment's header (CreateTime of the header record, stamped
    right after the PostgreSQL commit). Needs only the events and ledger topics."""
    from bisect import bisect_right

    from wakeline.ledger.segments import SegmentHeader

    deadline = time.monotonic() + 60
    while True:
        by_part: dict[int, list[tuple[int, int, int]]] = {}
        for part, _, ts, value in _read_all(kafka, kafka.topics.ledger):
            h = SegmentHeader.from_bytes(value)
            by_part.setdefault(part, []).append((h.first_offset, h.last_offset, ts))
        if sum(last - first + 1 for v in by_part.values() for first, last, _ in v) >= want:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    for v in by_part.values():
        v.sort()
    out: list[float] = []
    for part, offset, ts, _ in _read_all(kafka, kafka.topics.events, want):
        segs = by_part.get(part, [])
        i = bisect_right(segs, (offset, float("inf"), 0)) - 1
        if i >= 0 and segs[i][0] <= offset <= segs[i][1]:
            out.append((segs[i][2] - ts) / 1000)
    return out


FAUST_COUNTER = """
import os, sys, time, faust
topic_name, bootstrap, want, mode, out = sys.argv[1:6]
want = int(want)
sys.argv = [sys.argv[0], "worker", "-l", "error"]
app = faust.App("bench-faust-" + str(time.time_ns()), broker="kafka://" + bootstrap,
                store="memory://", web_enabled=False)
topic = app.topic(topic_name, key_type=bytes, value_type=bytes,
                  key_serializer="raw", value_serializer="raw")
state = {"n": 0, "t0": None}

def seen(k):
    if state["t0"] is None:
        state["t0"] = time.perf_counter()
    state["n"] += k
    if state["n"] >= want:
        with open(out, "w") as f:
            f.write(str(want / (time.perf_counter() - state["t0"])))
        os._exit(0)

@app.agent(topic, concurrency=1)
async def count(stream):
    if mode == "take":
        async for values in stream.take(2000, within=0.5):
            seen(len(values))
    else:
        async for _ in stream:
            seen(1)

app.main()
"""


def faust_vs_batch(kafka: KafkaSettings, count: int) -> dict[str, float]:
    """Records/s of a faust agent that only counts, against a confluent-kafka batch loop
    that only counts, over the same records already in the topic."""
    import subprocess
    import sys
    import tempfile

    produce_all(kafka, count)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        script = f"{tmp}/counter.py"
        with open(script, "w") as f:
            f.write(FAUST_COUNTER)
        for mode in ("async-for", "take"):
            rate_file = f"{tmp}/{mode}.rate"
            subprocess.run(
                [sys.executable, script, kafka.topics.events, kafka.bootstrap, str(count), mode,
                 rate_file],
                cwd=tmp, capture_output=True, timeout=600,
            )  # fmt: skip
            try:
                with open(rate_file) as f:
                    out[f"faust {mode}"] = float(f.read())
            except OSError:
                out[f"faust {mode}"] = float("nan")
    c = Consumer(kafka.client_config(**{"group.id": f"b-{uuid.uuid4().hex[:8]}",
                                        "auto.offset.reset": "earliest"}))  # fmt: skip
    c.subscribe([kafka.topics.events])
    n, t0 = 0, None
    while n < count:
        msgs = c.consume(5000, 1.0)
        if msgs and t0 is None:
            t0 = time.perf_counter()
        n += len(msgs)
    out["confluent consume(5000)"] = count / (time.perf_counter() - t0)
    c.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rate", type=int, default=5_000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument(
        "--only",
        choices=("throughput", "latency", "split", "default", "single"),
        help="one kind of run (throughput: the three deployments) or one deployment",
    )
    ap.add_argument(
        "--compare-faust",
        action="store_true",
        help="also time a counting faust agent against a counting batch consumer",
    )
    ap.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        help="extra `wakeline worker` option, e.g. --worker-arg=--no-audit",
    )
    ap.add_argument("--figures", help="write the figures for bench/run.py to this file")
    args = ap.parse_args()
    global WORKER_ARGS
    WORKER_ARGS = (*WORKER_ARGS, *args.worker_arg)

    base = replace(KafkaSettings.from_env(), partitions=args.partitions)
    runs = {
        "split": ("throughput", [(0, ("--no-audit",)), (10, ("--no-builder",))]),
        "default": ("throughput", [(0, ())]),
        "single": ("throughput", [(0, ("--single-process",))]),
        "latency": ("latency", None),
    }
    if args.only:
        runs = {k: v for k, v in runs.items() if args.only in (k, v[0])}
    if args.compare_faust:
        runs["faust"] = ("faust", None)
    results = {}
    for name, (kind, roles) in runs.items():
        kafka = replace(base, topics=Topics(f"bench{uuid.uuid4().hex[:8]}.wakeline."))
        topics.ensure_topics(kafka)
        dsn = create_database()
        try:
            if kind == "throughput":
                results[name] = throughput(kafka, dsn, args.events, roles)
            elif kind == "faust":
                results[name] = faust_vs_batch(kafka, args.events)
            else:
                results[name] = latency(kafka, dsn, args.rate, args.seconds)
        finally:
            with contextlib.suppress(Exception):
                topics.delete_topics(kafka)
            drop_database(dsn)

    rows = []
    labels = {
        "split": "2 processes: worker --no-audit + nice 10 worker --no-builder",
        "default": "default: worker (builder; audit publisher in a child process)",
        "single": "1 process: worker --single-process (builder + audit publisher)",
    }
    for name in ("split", "default", "single"):
        t = results.get(name)
        if not t:
            continue
        rows += [
            (labels[name], "", "", None),
            ("  sustained events/s into persisted segments", f"{t['sustained']:,.0f}",
             ">= 20,000", t["sustained"] >= 20_000),
            ("  audit records/s (from the first segment)", f"{t['audit_rate']:,.0f}", "", None),
            ("  events/s incl. worker start-up", f"{t['end_to_end']:,.0f}", "", None),
            ("  worker start-up to first segment (s)", f"{t['startup_s']:.2f}", "", None),
        ]  # fmt: skip
    lat = results.get("latency")
    if lat:
        rate = f"{lat['rate']:,.0f}"
        rows += [
            ("default worker, events produced at a fixed rate", "", "", None),
            (f"  latency p50 at {rate} events/s (s)", f"{lat['p50']:.3f}", "", None),
            (f"  latency p99 at {rate} events/s (s)", f"{lat['p99']:.3f}", "<= 2.0",
             lat["p99"] <= 2.0),
            ("  latency max (s)", f"{lat['max']:.3f}", "", None),
        ]  # fmt: skip
    for label, rate in results.get("faust", {}).items():
        rows.append((f"count only, {label} (records/s)", f"{rate:,.0f}", "", None))
    extra = " ".join(WORKER_ARGS)
    print(f"ledger builder bench: {args.events:,} events backlog, {args.partitions} partitions, "
          f"worker options `{extra}`")  # fmt: skip
    print(f"{'measure':<56} {'value':>10}  {'target':>10}  ok")
    for label, value, target, ok in rows:
        mark = "" if ok is None else ("yes" if ok else "NO")
        print(f"{label:<56} {value:>10}  {target:>10}  {mark}")
    figures = [
        Figure(f"ledger builder sustained, {name}", results[name]["sustained"], "events/s",
               20_000, "higher")
        for name in ("split", "default", "single") if results.get(name)
    ]  # fmt: skip
    if lat:
        figures.append(Figure(f"event -> ledgered, p99 at {lat['rate']:,.0f} ev/s", lat["p99"],
                              "s", 2.0))  # fmt: skip
    return emit(figures, args.figures)


if __name__ == "__main__":
    sys.exit(main())
