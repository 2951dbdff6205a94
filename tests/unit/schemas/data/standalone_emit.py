"""Emit a Wakeline workflow with nothing but the .avsc files, confluent_kafka, fastavro and
blake3, following schemas/README.md ("Emitting from another language") step by step.

This is what an agent runtime in another language does. It runs in a process where importing
`wakeline` fails, to prove the producer side of the wire contract stands alone:

    python standalone_emit.py <dir with *.avsc> <bootstrap> <topic prefix> <workflow> <run>
        ->  one JSON line per event written: type, event_id, tool, partition, offset

The run: a read (`crm.lookup`), a compensable charge with a redacted and a digest-only
argument (`stripe.charge`), a call whose tool fails (`email.send`), then the seal. When the
workflow is quarantined, its first call is recorded as refused (an intent deciding `deny`
and a `denied` result), no tool runs, and the seal follows.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
import zlib
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

sys.modules["wakeline"] = None  # type: ignore[assignment]  # any `import wakeline` now fails

import blake3  # noqa: E402
import fastavro  # noqa: E402
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition  # noqa: E402
from fastavro.schema import fingerprint, to_parsing_canonical_form  # noqa: E402

SOURCE = "standalone-emit"
#: what the decision records when no policy engine decided (the Python SDK's text)
NO_POLICY = "allow-all: no policy configured"
AGENT, PRINCIPAL = "billing-bot", "alice@example.com"
#: the tools, declared as the runtime's registry would: the fields every intent copies
TOOLS = {
    "crm.lookup": {"reversibility": "read", "impact": "low", "reads": ["customer:{customer}"]},
    "stripe.charge": {
        "reversibility": "compensable",
        "impact": "high",
        "compensation": "stripe.refund",
        "writes": ["customer:{customer}:balance"],
        "redact": ["card.cvc"],
        "digest_only": ["card.number"],
    },
    "email.send": {
        "reversibility": "reversible",
        "impact": "medium",
        "compensation": "email.recall",
        "writes": ["mailbox:{to}"],
        "undo_window_us": 600_000_000,
    },
}
CALLS = [  # (tool, arguments, what the tool does: ("ok", result, external ids) or ("error", ...))
    ("crm.lookup", {"customer": 123}, ("ok", {"name": "Ada", "tier": "gold"}, {})),
    (
        "stripe.charge",
        {"customer": 123, "amount": 1299, "card": {"number": "4242424242424242", "cvc": "123"}},
        ("ok", {"id": "ch_1", "paid": True}, {"charge_id": "ch_1"}),
    ),
    (
        "email.send",
        {"to": "ada@example.com", "subject": "Receipt", "body": "Thanks for your order"},
        ("error", "ConnectionError", "mailbox unavailable"),
    ),
]


# -- schemas: load, fingerprint, publish ------------------------------------------------------
def load_schemas(folder: Path) -> dict[str, tuple[dict, bytes, str]]:
    """type name -> (parsed schema, fingerprint as framed, compact schema JSON)."""
    out = {}
    for path in sorted(folder.glob("*.avsc")):
        raw = json.loads(path.read_text())
        parsed = fastavro.parse_schema(raw, named_schemas={})
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
        out[raw["name"]] = (parsed, fp, json.dumps(raw, separators=(",", ":")))
    return out


def publish(producer: Producer, topic: str, schemas: dict, names: list[str]) -> None:
    for name in names:
        _, fp, text = schemas[name]
        headers = [("content-type", b"application/json"), ("wakeline_schema_type", name.encode())]
        producer.produce(topic, text.encode(), fp, headers=headers, on_delivery=_check)
    if producer.flush(30):
        raise SystemExit(f"schemas not acknowledged on {topic}")


def _check(err: object, _msg: object) -> None:
    if err is not None:
        raise SystemExit(f"delivery failed: {err}")


# -- the quarantine gate --------------------------------------------------------------------
def quarantines(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    """The compacted topic read from the beginning to its end: key -> last value."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"emit-{uuid.uuid4()}",
                  "enable.auto.commit": False})  # fmt: skip
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p, end in ends.items() if end > 0])
    state: dict[bytes, bytes | None] = {}
    left = {p for p, end in ends.items() if end > 0}
    deadline = time.monotonic() + 30
    while left and time.monotonic() < deadline:
        for m in c.consume(100, timeout=0.5):
            if m.error() is None:
                state[m.key()] = m.value()
                if m.offset() + 1 >= ends[m.partition()]:
                    left.discard(m.partition())
    c.close()
    if left:
        raise SystemExit(f"could not read {topic} to its end: refusing to call blind")
    return state


def quarantined(
    state: dict, schemas: dict, wf: str, run: str, agent: str, boundary: str | None
) -> str | None:
    """Why the call may not run, or None: the workflow's key, `agent:<id>`, `boundary:<b>`."""
    by_fp = {fp: parsed for parsed, fp, _ in schemas.values()}
    keys = [(f"workflow {wf}", wf), (f"agent {agent}", f"agent:{agent}")]
    if boundary:
        keys.append((f"boundary {boundary}", f"boundary:{boundary}"))
    for what, key in keys:
        value = state.get(key.encode())
        if value is None:  # no record, or a tombstone: released
            continue
        try:
            q = decode(value, by_fp)
        except Exception as e:  # noqa: BLE001 - undecodable: fail closed
            return f"{what} is quarantined (undecodable quarantine record: {e})"
        if q["type"] == "Release" or (q["scope"] == "run" and q["run_id"] != run):
            continue
        return f"{what} is quarantined by {q['by']}: {q['reason']}"
    return None


def decode(frame: bytes, by_fp: dict) -> dict:
    if frame[:2] != b"\xc3\x01" or frame[2:10] not in by_fp:
        raise ValueError("not a frame of a known schema")
    body = BytesIO(frame[10:])
    record = fastavro.schemaless_reader(body, by_fp[frame[2:10]])
    if body.read():
        raise ValueError("trailing bytes")
    return record


# -- canonical arguments ------------------------------------------------------------------
def canonical(value: object) -> bytes:
    """RFC 8785 bytes for values without floats and with ASCII keys (where sorted compact
    JSON is RFC 8785); anything else needs a full RFC 8785 implementation."""

    def check(v: object) -> None:
        if isinstance(v, float) or (isinstance(v, int) and abs(v) > 2**53 - 1):
            raise ValueError("floats and big integers need a full RFC 8785 implementation")
        if isinstance(v, dict):
            for k, child in v.items():
                if not k.isascii():
                    raise ValueError("non-ASCII keys need RFC 8785's UTF-16 key order")
                check(child)
        elif isinstance(v, list):
            for child in v:
                check(child)

    check(value)
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def replace(node: object, path: list[str], fn) -> object:  # type: ignore[no-untyped-def]
    if isinstance(node, list):
        return [replace(item, path, fn) for item in node]
    if not isinstance(node, dict) or path[0] not in node:
        return node
    out = dict(node)
    out[path[0]] = fn(node[path[0]]) if len(path) == 1 else replace(node[path[0]], path[1:], fn)
    return out


def digest_only(value: object) -> str:
    return "blake3:" + blake3.blake3(canonical(value)).hexdigest()


def redacted(args: dict, tool: dict) -> dict:
    for path in tool.get("redact", []):
        args = replace(args, path.split("."), lambda _v: "[REDACTED]")  # type: ignore[assignment]
    for path in tool.get("digest_only", []):
        args = replace(args, path.split("."), digest_only)  # type: ignore[assignment]
    return args


# -- events ---------------------------------------------------------------------------------
_last = [0, 0]  # the last UUIDv7's (unix ms, 74 random bits), to keep ids increasing


def uuid7() -> str:
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10)) >> 6  # 74 bits
    if ms <= _last[0]:  # same millisecond (or the clock stepped back): count up
        ms, rand = _last[0], _last[1] + 1
        if rand >> 74:
            ms, rand = ms + 1, 0
    _last[:] = [ms, rand]
    n = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & (2**62 - 1))
    return str(uuid.UUID(int=n))


class Run:
    def __init__(self, schemas: dict, producer: Producer, topic: str, wf: str, run: str) -> None:
        self.schemas, self.producer, self.topic = schemas, producer, topic
        self.wf, self.run = wf, run
        parts = producer.list_topics(topic, timeout=10).topics[topic].partitions
        self.partition = zlib.crc32(wf.encode()) % len(parts)  # the key's partition
        self.count, self.last = 0, None
        self.written: list[dict] = []

    def event(self, type_name: str, **payload: object) -> dict:
        envelope = {
            "event_id": uuid7(), "type": type_name, "time": time.time_ns() // 1000,
            "source": SOURCE, "workflow_id": self.wf, "run_id": self.run, "step_id": None,
            "agent_id": AGENT, "tenant": None, "boundary": None, "parent_event_ids": [],
            "correlation_id": None, "principal": PRINCIPAL, "trace_id": None, "span_id": None,
        }  # fmt: skip
        return {**envelope, **payload}

    def send(self, event: dict, *, wait: bool) -> None:
        parsed, fp, _ = self.schemas[event["type"]]
        body = BytesIO()
        fastavro.schemaless_writer(body, parsed, event)
        when = datetime.fromtimestamp(event["time"] // 1_000_000, UTC)
        headers = [
            ("ce_specversion", b"1.0"),
            ("ce_id", event["event_id"].encode()),
            ("ce_type", f"dev.wakeline.{event['type']}.v1".encode()),
            ("ce_source", event["source"].encode()),
            ("ce_time", f"{when:%Y-%m-%dT%H:%M:%S}.{event['time'] % 1_000_000:06d}Z".encode()),
            ("ce_subject", event["workflow_id"].encode()),
            ("content-type", b"application/avro"),
        ]
        row = {"type": event["type"], "event_id": event["event_id"], "tool": event.get("tool")}

        def delivered(err: object, msg) -> None:  # type: ignore[no-untyped-def]
            _check(err, msg)
            row.update(partition=msg.partition(), offset=msg.offset())

        self.producer.produce(
            self.topic, b"\xc3\x01" + fp + body.getvalue(), self.wf.encode(),
            partition=self.partition, headers=headers, on_delivery=delivered,
        )  # fmt: skip
        self.count, self.last = self.count + 1, event["event_id"]
        self.written.append(row)
        if wait and self.producer.flush(30):
            raise SystemExit("not acknowledged: the tool must not run")
        self.producer.poll(0)

    def call(self, name: str, args: dict, outcome: tuple, refused: str | None) -> None:
        tool = TOOLS[name]
        logged = canonical(redacted(args, tool))
        intent = self.event(
            "ToolIntent",
            tool=name,
            args=logged.decode(),
            args_digest=blake3.blake3(logged).digest(),
            resources_read=[k.format(**args) for k in tool.get("reads", [])],
            resources_written=[k.format(**args) for k in tool.get("writes", [])],
            reversibility=tool["reversibility"],
            impact=tool["impact"],
            compensation=tool.get("compensation"),
            policy_decision="deny" if refused else "allow",
            policy_reason=f"quarantine: {refused}" if refused else NO_POLICY,
            durability="relaxed" if tool["reversibility"] == "read" else "strict",
            redacted_fields=sorted(tool.get("redact", []) + tool.get("digest_only", [])),
            approval_id=None,
            undo_window_us=tool.get("undo_window_us"),
            volatile_fields=[],
            expected_version=None,
            policy_rule=None,
            policy_version=None,
            policy_shadow=[],
            grant_id=None,
        )
        self.send(intent, wait=intent["durability"] == "strict")
        result = {"intent_id": intent["event_id"], "result_digest": None, "result_summary": None,
                  "error_type": None, "error_message": None, "external_ids": {}}  # fmt: skip
        if refused:
            result.update(status="denied", duration_us=0, error_type="WorkflowQuarantined",
                          error_message=refused)  # fmt: skip
        else:
            started = time.perf_counter_ns()  # the tool runs here
            status, value, extra = outcome
            result.update(status=status, duration_us=(time.perf_counter_ns() - started) // 1000)
            if status == "ok":
                result.update(result_digest=blake3.blake3(canonical(value)).digest(),
                              external_ids=extra)  # fmt: skip
            else:
                result.update(error_type=value, error_message=extra)
        self.send(self.event("ToolResult", **result), wait=False)

    def seal(self, outcome: str) -> None:
        seal = self.event(
            "WorkflowCompleted", event_count=self.count, last_event_id=self.last, outcome=outcome
        )
        self.send(seal, wait=True)


def main(schema_dir: str, bootstrap: str, prefix: str, wf: str, run_id: str) -> None:
    schemas = load_schemas(Path(schema_dir))
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 0})  # fmt: skip
    publish(producer, prefix + "schemas", schemas, ["ToolIntent", "ToolResult",
                                                    "WorkflowCompleted"])  # fmt: skip
    state = quarantines(bootstrap, prefix + "quarantines")
    run = Run(schemas, producer, prefix + "events", wf, run_id)
    outcome = "succeeded"
    for name, args, does in CALLS:
        refused = quarantined(state, schemas, wf, run_id, AGENT, None)  # no boundary here
        run.call(name, args, does, refused)
        if refused:
            outcome = "quarantined"
            break
    run.seal(outcome)
    if producer.flush(30):
        raise SystemExit("events not acknowledged")
    for row in run.written:
        print(json.dumps(row, sort_keys=True))


if __name__ == "__main__":
    main(*sys.argv[1:6])
