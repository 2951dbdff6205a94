"""Realistic intent/result traffic for benchmarks, crash tests and demos.

Each workflow alternates ToolIntent and ToolResult events of a billing agent, encoded with
the real codec and carrying CloudEvents headers, exactly what the SDK puts on the topic.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

from wakeline.schemas import cloudevents_headers, encode_event, new_event_id

_AGENTS = ("billing-bot", "refund-bot", "support-bot")


def _envelope(workflow: str, agent: str, type_name: str) -> dict[str, Any]:
    return {
        "event_id": new_event_id(),
        "type": type_name,
        "time": time.time_ns() // 1000,
        "source": f"wakeline-sdk/{agent}",
        "workflow_id": workflow,
        "run_id": f"{workflow}-r1",
        "agent_id": agent,
        "principal": "alice@example.com",
    }


def intent(workflow: str, n: int, agent: str = "billing-bot") -> dict[str, Any]:
    args = json.dumps(
        {"amount": f"{10 + n % 90}.99", "currency": "usd", "customer": str(100 + n % 900)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return {
        **_envelope(workflow, agent, "ToolIntent"),
        "tool": "stripe.charge",
        "args": args,
        "args_digest": hashlib.sha256(args.encode()).digest(),
        "resources_written": [f"customer:{100 + n % 900}"],
        "reversibility": "compensable",
        "impact": "medium",
        "compensation": "stripe.refund",
        "policy_decision": "allow",
        "durability": "strict",
    }


def result(of: dict[str, Any], status: str = "ok") -> dict[str, Any]:
    e = _envelope(of["workflow_id"], of["agent_id"], "ToolResult")
    e["parent_event_ids"] = [of["event_id"]]
    return {
        **e,
        "intent_id": of["event_id"],
        "status": status,
        "external_ids": {"charge": f"ch_{of['event_id'][-8:]}"},
        "duration_us": 1234,
    }


def frames(event: dict[str, Any]) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of an event as the SDK produces it."""
    return event["workflow_id"].encode(), encode_event(event), cloudevents_headers(event)


def traffic(count: int, workflows: int = 64) -> Iterator[dict[str, Any]]:
    """`count` events: per workflow an intent then its result, round-robin over workflows."""
    open_intents: dict[str, dict[str, Any]] = {}
    for i in range(count):
        wf = f"wf-{i % workflows:05d}"
        pending = open_intents.pop(wf, None)
        if pending is None:
            e = intent(wf, i, _AGENTS[i % len(_AGENTS)])
            open_intents[wf] = e
            yield e
        else:
            yield result(pending)


def produce_at_rate(
    kafka: Any, events: Iterator[dict[str, Any]], rate: int, stop: Any, out: Any
) -> None:
    """Produce `events` to the events topic at `rate` events/s until `stop` (an Event) is set,
    then put (events sent, seconds) on `out`: the benchmarks' background traffic, run in a
    process of its own so it does not share the measured process's GIL."""
    from confluent_kafka import Producer

    p = Producer(kafka.producer_config(**{"linger.ms": 5}))
    sent, t0 = 0, time.perf_counter()
    while not stop.is_set():
        due = int((time.perf_counter() - t0) * rate) + 1
        while sent < due:
            key, value, headers = frames(next(events))
            try:
                p.produce(kafka.topics.events, key=key, value=value, headers=headers)
            except BufferError:
                p.poll(0.01)
                continue
            sent += 1
        p.poll(0)
        time.sleep(0.001)
    elapsed = time.perf_counter() - t0
    p.flush(30)
    out.put((sent, elapsed))
