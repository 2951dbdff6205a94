"""Builds small, realistic ledgers for the tests: real Avro events, segments, checkpoints."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field

from wakeline.ledger import BLAKE3, HashSuite
from wakeline.ledger.bundle import read_frames
from wakeline.ledger.checkpoints import Signer, generate_signer
from wakeline.ledger.records import LedgerRecord
from wakeline.ledger.segments import PartitionChain
from wakeline.ledger.service import export_bundle, sign_checkpoint
from wakeline.ledger.store import make_entries
from wakeline.ledger.store_memory import MemoryLedgerStore
from wakeline.schemas import cloudevents_headers, encode_event

ORIGIN = "wakeline.test/ledger"
BASE_US = 1_780_000_000_000_000


def _envelope(i: int, kind: str, wf: str, run: str) -> dict:
    return {
        "event_id": f"0190a0b0-0000-7000-8000-{i:012d}",
        "type": kind,
        "time": BASE_US + i * 1000,
        "source": "wakeline-test",
        "workflow_id": wf,
        "run_id": run,
        "agent_id": "billing-bot",
        "principal": "alice@example.com",
    }


def workflow_events(n_workflows: int, calls: int = 2, seal: bool = True) -> list[dict]:
    """Per workflow: `calls` intent/result pairs, then a WorkflowCompleted seal."""
    out: list[dict] = []
    i = 0
    for w in range(n_workflows):
        wf, run = f"wf-{w}", f"run-{w}"
        count = 0
        last = None
        for _ in range(calls):
            intent = _envelope(i, "ToolIntent", wf, run)
            intent.update(
                tool="stripe.charge",
                args='{"amount":1299}',
                args_digest=b"\x11" * 32,
                reversibility="compensable",
                impact="high",
                policy_decision="allow",
            )
            i += 1
            result = _envelope(i, "ToolResult", wf, run)
            result.update(intent_id=intent["event_id"], status="ok")
            i += 1
            out += [intent, result]
            count += 2
            last = result["event_id"]
        if seal:
            s = _envelope(i, "WorkflowCompleted", wf, run)
            s.update(event_count=count, last_event_id=last)
            i += 1
            out.append(s)
    return out


def record_of(event: dict, partition: int, offset: int) -> LedgerRecord:
    return LedgerRecord(
        partition=partition,
        offset=offset,
        timestamp=event["time"] // 1000,
        key=event["workflow_id"].encode(),
        value=encode_event(event),
        headers=tuple((k, v) for k, v in cloudevents_headers(event)),
    )


@dataclass
class Ledger:
    store: MemoryLedgerStore
    signer: Signer
    suite: HashSuite
    records: dict[int, list[LedgerRecord]] = field(default_factory=dict)

    @property
    def vkey(self) -> str:
        return self.signer.verifier.vkey()

    def bundle(self) -> bytes:
        out = io.BytesIO()
        export_bundle(self.store, out, public_keys=[self.vkey])
        return out.getvalue()


def build_ledger(
    events: list[dict],
    *,
    partitions: int = 2,
    segment_size: int = 4,
    checkpoint_every: int = 2,
    suite: HashSuite = BLAKE3,
    offset_step: int = 2,
    seed: int = 0,
    signer: Signer | None = None,
) -> Ledger:
    """Route events by workflow to partitions, seal segments of up to `segment_size`
    (randomly shorter, as time-closed segments are), checkpoint every few segments."""
    rng = random.Random(seed)
    signer = signer or generate_signer(ORIGIN)
    store = MemoryLedgerStore()
    by_part: dict[int, list[LedgerRecord]] = {}
    for ev in events:
        p = int(ev["workflow_id"].split("-")[1]) % partitions
        recs = by_part.setdefault(p, [])
        recs.append(record_of(ev, p, len(recs) * offset_step))
    chains = {p: PartitionChain(suite, p) for p in by_part}
    sealed = 0
    t = 1_780_000_000_000
    # interleave partitions segment by segment, as a builder consuming them would
    pos = dict.fromkeys(by_part, 0)
    while any(pos[p] < len(by_part[p]) for p in by_part):
        for p in sorted(by_part):
            recs = by_part[p]
            if pos[p] >= len(recs):
                continue
            k = rng.randint(1, segment_size)
            chunk = recs[pos[p] : pos[p] + k]
            pos[p] += len(chunk)
            leaves = [r.leaf_bytes() for r in chunk]
            header, hashes = chains[p].seal(leaves)
            store.append_segment(header, make_entries(header, leaves, hashes), chains[p].tree.nodes)
            sealed += 1
            if sealed % checkpoint_every == 0:
                t += 1000
                sign_checkpoint(store, [signer], origin=ORIGIN, force=True, now_ms=t)
    sign_checkpoint(store, [signer], origin=ORIGIN, force=True, now_ms=t + 1000)
    return Ledger(store, signer, suite, by_part)


@dataclass(frozen=True)
class Frame:
    kind: int
    start: int  # file position of the frame's type byte
    end: int  # one past its last payload byte
    payload: bytes


def frames(bundle: bytes) -> list[Frame]:
    out = []
    for kind, payload, pos in read_frames(io.BytesIO(bundle)):
        out.append(Frame(kind, pos, pos + 5 + len(payload), payload))
    return out
