"""Loop detector benchmark: how fast a runaway loop is quarantined, how many events/s the
detector keeps up with, and how many false alerts a benign mix raises.

Against the real broker (a topic prefix of its own, removed afterwards). The detector runs
in this process on the Kafka runner, as `wakeline worker` hosts it (`loop_runner`).

1. Throughput: a backlog of --backlog benign events (default 200,000) is produced first;
   the clock runs from the detector's start to its last record read and handled.
2. False alerts: incidents raised on that benign mix (target 0). The mix is what a busy
   deployment looks like: 500 workflows, 50 agents, 10 tools, unique arguments per write,
   re-reads of the same customer, pagination, failed calls retried within the budget.
3. Latency: while a separate process produces --rate benign events/s (default 5,000), a
   workflow makes K identical charges (K = the repeat rule's count); the clock starts when
   the K-th intent is acknowledged by the broker and stops when the `Quarantine` is read
   back from the events topic. p50/p99 over --runs workflows.

Targets: p99 <= 300 ms; >= 20,000 events/s; 0 false alerts.
    .venv/bin/python bench/detect.py [--backlog 200000] [--runs 30] [--rate 5000] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import multiprocessing as mp
import sys
import time
import uuid
from dataclasses import replace
from typing import Any

from figures import Figure, emit  # bench/figures.py: the script's own folder is on sys.path

from wakeline.infra import topics
from wakeline.infra.detection import DetectionRules
from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.processors.loops import loop_runner
from wakeline.schemas import cloudevents_headers, decode_event, encode_event, new_event_id

TARGETS = {"p99": 0.300, "throughput": 20_000, "false_alerts": 0}


def _event(type_name: str, wf: str, agent: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": new_event_id(), "type": type_name, "time": time.time_ns() // 1000,
            "source": f"wakeline-sdk/{agent}", "workflow_id": wf, "run_id": f"{wf}-r1",
            "agent_id": agent, "principal": "ops@example.com", **fields}  # fmt: skip


def _intent(wf: str, agent: str, tool: str, args: dict[str, Any], read: bool) -> dict[str, Any]:
    text = json.dumps(args, sort_keys=True, separators=(",", ":"))
    return _event("ToolIntent", wf, agent, tool=tool, args=text,
                  args_digest=hashlib.sha256(text.encode()).digest(),
                  reversibility="read" if read else "compensable", impact="low",
                  policy_decision="allow")  # fmt: skip


def _result(i: dict[str, Any], status: str, result: Any) -> dict[str, Any]:
    digest = hashlib.sha256(json.dumps(result).encode()).digest()
    return _event("ToolResult", i["workflow_id"], i["agent_id"], intent_id=i["event_id"],
                  status=status, result_digest=digest, duration_us=100)  # fmt: skip


def benign(seed: int = 0, rate: int = 0):  # noqa: ANN201 - a generator of events
    """Intent/result pairs of legitimate traffic, forever; with `rate`, their times are
    spaced as if `rate` events/s were produced (a backlog made in a few seconds)."""
    n = seed
    t0 = time.time_ns() // 1000
    sent = 0
    while True:
        n += 1
        if rate:
            for e in _pairs(n):
                sent += 1
                e["time"] = t0 + sent * 1_000_000 // rate
                yield e
        else:
            yield from _pairs(n)


def _pairs(n: int):  # noqa: ANN202 - a generator of events
    """One legitimate step: a write, a re-read, a page, or a failed call retried."""
    # the agent is not a function of the step's kind (n % 10): with n % 50, five agents made
    # every retried capture, over the default per-agent rate ceiling, which is an alert
    wf, agent = f"wf-{n % 500:04d}", f"agent-{(n // 10) % 50:02d}"
    kind = n % 10
    if kind < 6:  # a write with its own arguments
        tool = f"svc{n % 7}.update"
        i = _intent(wf, agent, tool, {"record": f"r{n}", "value": n}, False)
        yield i
        yield _result(i, "ok", {"record": f"r{n}", "version": n})
    elif kind < 8:  # re-reading a customer (the same one, now and then)
        i = _intent(wf, agent, f"crm.lookup{n % 3}", {"customer": f"c{n % 40}"}, True)
        yield i
        yield _result(i, "ok", {"customer": f"c{n % 40}", "tier": "gold"})
    elif kind == 8:  # paging through a list
        i = _intent(wf, agent, "crm.list", {"cursor": f"p{n}"}, True)
        yield i
        yield _result(i, "ok", {"page": n})
    else:  # a failed call, retried once with the same arguments, then it works
        args = {"order": f"o{n}"}
        i = _intent(wf, agent, "payments.capture", args, False)
        yield i
        yield _result(i, "error", None)
        j = _intent(wf, agent, "payments.capture", args, False)
        yield j
        yield _result(j, "ok", {"captured": f"o{n}"})


def _produce(kafka: KafkaSettings, events: Any, count: int) -> None:
    from confluent_kafka import Producer

    p = Producer(kafka.client_config(**{"linger.ms": 20, "queue.buffering.max.messages": 500_000}))
    for _ in range(count):
        e = next(events)
        while True:
            try:
                p.produce(kafka.topics.events, encode_event(e), e["workflow_id"].encode(),
                          headers=cloudevents_headers(e))  # fmt: skip
                break
            except BufferError:
                p.poll(0.05)
    p.flush(60)


def background(kafka: KafkaSettings, rate: int, stop: Any, out: Any) -> None:
    """Produce benign events at `rate` events/s until `stop` is set; (events, s) on `out`."""
    from wakeline.testkit.samples import produce_at_rate

    produce_at_rate(kafka, benign(10_000_000), rate, stop, out)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def latency(kafka: KafkaSettings, runs: int, k: int) -> list[float]:
    from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

    p = Producer(kafka.client_config(**{"linger.ms": 0, "acks": "all"}))
    c = Consumer(kafka.client_config(**{"group.id": f"bench-{uuid.uuid4().hex[:6]}",
                                        "enable.auto.commit": False}))  # fmt: skip
    meta = c.list_topics(kafka.topics.events, timeout=10).topics[kafka.topics.events]
    c.assign([TopicPartition(kafka.topics.events, q, OFFSET_END) for q in meta.partitions])
    c.consume(1, 1.0)
    out = []
    for r in range(runs):
        wf = f"wf-loop-{r}-{uuid.uuid4().hex[:6]}"
        args = {"customer": "cus_123", "amount_cents": 1000 + r}
        acked: list[float] = []
        for _ in range(k):
            e = _intent(wf, "billing-bot", "payments.charge", args, False)
            p.produce(
                kafka.topics.events,
                encode_event(e),
                wf.encode(),
                headers=cloudevents_headers(e),
                on_delivery=lambda _e, _m, a=acked: a.append(time.perf_counter()),
            )
            p.flush(10)
        start = acked[-1]  # the K-th intent acknowledged by the broker
        got = None
        while got is None and time.perf_counter() - start < 10:
            for m in c.consume(5000, 0.005):
                if m.error() is None and m.key() == wf.encode():
                    with contextlib.suppress(Exception):
                        if decode_event(m.value())["type"] == "Quarantine":
                            got = time.perf_counter()
        out.append((got or float("inf")) - start)
    c.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backlog", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--json", default=None)
    ap.add_argument("--figures", help="write the figures for bench/run.py to this file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("wakeline.processors.loops").setLevel(logging.ERROR)
    base = KafkaSettings.from_env()
    kafka = replace(base, topics=Topics(f"bench{uuid.uuid4().hex[:8]}.wakeline."), partitions=3)
    topics.ensure_topics(kafka)
    figures: dict[str, float] = {}
    try:
        _produce(kafka, benign(rate=5000), args.backlog)
        runner = loop_runner(kafka, DetectionRules())
        runner.start()
        while runner.records_in == 0 and runner.running:
            time.sleep(0.001)
        t0 = time.perf_counter()  # from the first batch read: the group join is not counted
        while runner.records_in < args.backlog and runner.running:
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
        det = runner.processor
        figures["throughput"] = args.backlog / elapsed
        figures["false_alerts"] = det.incidents  # type: ignore[attr-defined]
        print(f"backlog {args.backlog:,} benign events: {figures['throughput']:,.0f} events/s "
              f"(from the first batch read), false alerts {det.incidents}")  # type: ignore[attr-defined]  # fmt: skip
        ctx = mp.get_context("spawn")
        stop, out = ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=background, args=(kafka, args.rate, stop, out))
        proc.start()
        time.sleep(2.0)
        try:
            k = DetectionRules().rule("repeat", tool="payments.charge").count
            lat = latency(kafka, args.runs, k)
        finally:
            stop.set()
            sent, secs = out.get(timeout=60)
            proc.join(30)
        figures["p50"], figures["p99"] = pct(lat, 0.5), pct(lat, 0.99)
        figures["rate"] = sent / secs
        print(f"K-th duplicate -> Quarantine on the events topic, {figures['rate']:,.0f} "
              f"events/s background: p50 {figures['p50'] * 1000:.0f} ms, "
              f"p99 {figures['p99'] * 1000:.0f} ms over {len(lat)} runs")  # fmt: skip
        runner.stop()
    finally:
        with contextlib.suppress(Exception):
            topics.delete_topics(kafka)
    ok = (figures["p99"] <= TARGETS["p99"] and figures["throughput"] >= TARGETS["throughput"]
          and figures["false_alerts"] == 0)  # fmt: skip
    print("targets:", "met" if ok else "NOT met", TARGETS)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    rate = f"{figures['rate']:,.0f} ev/s"
    emit([
        Figure("loop detector throughput, 200k backlog", figures["throughput"], "events/s",
               TARGETS["throughput"], "higher"),
        Figure("false alerts on the benign mix", figures["false_alerts"], "alerts", 0, "equal"),
        Figure(f"K-th duplicate -> Quarantine, p50 ({rate})", figures["p50"] * 1000, "ms"),
        Figure(f"K-th duplicate -> Quarantine, p99 ({rate})", figures["p99"] * 1000, "ms",
               TARGETS["p99"] * 1000),
    ], args.figures)  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
