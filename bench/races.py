"""Race detection throughput: the resource keyer and the race detector on a backlog.

Against the real broker (topics of their own under a fresh prefix, removed afterwards).
`--events` tool calls (intent + result of a billing agent, each writing one customer key,
testkit/samples.py) are produced to `<prefix>events` first; then the keyer runs alone on
the Kafka runner until it has committed the whole backlog, then the detector alone on what
the keyer wrote to `<prefix>resources`. Each is reported as events (records) per second of
wall time and per CPU second of this process (librdkafka's threads included): on a shared
machine the second says what one core does.

Target: >= 20,000 events/s per worker for each.
    .venv/bin/python bench/races.py [--events 200000] [--json F]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from dataclasses import replace
from typing import Any

from figures import Figure, emit  # bench/figures.py: the script's own folder is on sys.path

from wakeline.infra import topics
from wakeline.infra.detection import DetectionRules
from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.processors.races import race_runners
from wakeline.processors.stream import KafkaRunner
from wakeline.testkit.samples import frames, traffic

TARGET = 20_000


def produce_backlog(kafka: KafkaSettings, count: int) -> None:
    from confluent_kafka import Producer

    p = Producer(
        kafka.client_config(**{"linger.ms": 20, "queue.buffering.max.messages": 1_000_000})
    )
    for e in traffic(count, workflows=512):
        key, value, headers = frames(e)
        while True:
            try:
                p.produce(kafka.topics.events, value, key, headers=headers)
                break
            except BufferError:
                p.poll(0.1)
    if p.flush(120):
        raise SystemExit("the broker did not take the backlog")


def end_offsets(kafka: KafkaSettings, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(kafka.client_config(**{"group.id": f"bench-{uuid.uuid4().hex[:6]}"}))
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    finally:
        c.close()


def run_until_done(runner: KafkaRunner, ends: dict[int, int]) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    runner.start()
    while True:
        done = dict(runner._done)
        if all(done.get(p, 0) >= end for p, end in ends.items() if end > 0):
            break
        if runner.failure is not None or not runner.running:
            raise SystemExit(f"{runner.processor.name} stopped: {runner.failure}")
        time.sleep(0.05)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    runner.stop()
    n = sum(ends.values())
    return {"records": n, "wall_s": wall, "cpu_s": cpu, "per_s": n / wall, "per_cpu_s": n / cpu}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--figures", help="write the figures for bench/run.py to this file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    kafka = replace(KafkaSettings.from_env(), topics=Topics(f"b{uuid.uuid4().hex[:8]}.wakeline."))
    topics.ensure_topics(kafka)
    try:
        produce_backlog(kafka, args.events)
        keyer, detector = race_runners(kafka, DetectionRules())
        got: dict[str, Any] = {"events": args.events, "partitions": kafka.partitions}
        got["keyer"] = run_until_done(keyer, end_offsets(kafka, kafka.topics.events))
        got["detector"] = run_until_done(detector, end_offsets(kafka, kafka.topics.resources))
        got["alerts"] = detector.processor.alerts  # type: ignore[attr-defined]
        k = keyer.processor
        got["keyer_unmatched_results"] = k.results_unmatched  # type: ignore[attr-defined]
        got["keyer_skipped"] = k.skipped + k.undecodable  # type: ignore[attr-defined]
    finally:
        topics.delete_topics(kafka)
    for name in ("keyer", "detector"):
        r = got[name]
        verdict = "ok" if r["per_s"] >= TARGET else f"below {TARGET:,}/s"
        print(
            f"{name:9s} {r['records']:>8,} records in {r['wall_s']:6.2f} s: {r['per_s']:>9,.0f}/s "
            f"wall, {r['per_cpu_s']:>9,.0f}/s per CPU second ({verdict})"
        )
    print(
        f"alerts on the benign backlog: {got['alerts']}; results the keyer could not place: "
        f"{got['keyer_unmatched_results']}; records skipped: {got['keyer_skipped']}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(got, f, indent=2)
    return emit([
        Figure("resource keyer throughput", got["keyer"]["per_s"], "events/s", TARGET, "higher"),
        Figure("race detector throughput", got["detector"]["per_s"], "records/s", TARGET,
               "higher"),
        Figure("race alerts on the benign backlog", got["alerts"], "alerts", 0, "equal"),
    ], args.figures)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
