"""The independent verifier's bundle reader: frames, segments, checkpoints and pairing, with
the check names, verdicts, ranking and order of docs/ledger-format.md §7 and §9. Written from
that document alone; the primitives (hashes, leaves, notes, Avro) are in verifier.py.
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass, field

import blake3
import fastavro
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .verifier import (
    CHECKPOINT,
    END,
    ENTRY,
    KEY,
    MAGIC,
    MAX_FRAME,
    META,
    SCHEMA,
    SEGMENT,
    SUITES,
    Finding,
    H,
    Problem,
    Result,
    _verifies,
    crc64_avro,
    decode_event,
    encode_body,
    leaf_hash,
    mth,
    open_note,
    parse_body,
    parse_header,
    parse_leaf,
    parse_vkey,
    schema_problem,
    split_note,
)

# ---------------------------------------------------------------- bundle

RANK = {"warning": 0, "incomplete": 1, "unusable": 2, "tampered": 3}
ORDER = {META: 0, KEY: 1, SCHEMA: 2, SEGMENT: 3, ENTRY: 3, CHECKPOINT: 4, END: 5}


def read_frames(data: bytes) -> tuple[list[tuple[int, bytes]], tuple[str, str, str] | None]:
    """The frames read whole, and how reading ended: None after a clean END, else the
    (verdict, check, message) that stopped it (§7)."""
    if len(data) < 9 and (MAGIC + b"\x01").startswith(data[:8]):
        return [], ("incomplete", "bundle.truncated", "ends inside the magic")
    if data[:8] != MAGIC or data[8] != 1:
        return [], ("unusable", "bundle.format", "bad magic or version")
    pos, frames = 9, []
    while True:
        if pos == len(data):
            return frames, ("incomplete", "bundle.truncated", "no END frame")
        if pos + 5 > len(data):
            return frames, ("incomplete", "bundle.truncated", "ends inside a frame header")
        kind, n = struct.unpack(">BI", data[pos : pos + 5])
        if kind not in ORDER or n > MAX_FRAME:
            return frames, ("unusable", "bundle.format", f"bad frame type {kind} / length {n}")
        if pos + 5 + n > len(data):
            return frames, ("incomplete", "bundle.truncated", "ends inside a frame")
        payload = data[pos + 5 : pos + 5 + n]
        pos += 5 + n
        if kind == END:
            frames.append((kind, payload))
            if pos != len(data):  # the END frame was read, then the bytes after it
                return frames, ("unusable", "bundle.format", "bytes after END")
            return frames, None
        frames.append((kind, payload))


@dataclass
class _Part:
    hashes: list = field(default_factory=list)
    next_number: int = 0
    prev_hash: bytes = bytes(32)
    last_offset: int = -1
    diverged: bool = False
    ends: dict = field(default_factory=dict)  # tree size -> (tree root, header hash)
    claimed: int = 0


class _Verifier:
    def __init__(self, trusted_keys: list[str] | None, res: Result) -> None:
        self.res = res
        self.pinned = list(trusted_keys or [])
        self.keys: list[tuple[str, str, bytes, bytes]] = []  # vkey, name, key id, pubkey
        self.schemas: dict[bytes, object] = {}
        self.parts: dict[int, _Part] = {}
        self.prev_cp: dict | None = None
        self.used: set[str] = set()
        self.keys_warned = False
        # pairing, per partition (§9)
        self.pending: dict[tuple[int, str], tuple[int, int]] = {}
        self.answered: dict[tuple[int, str], str] = {}
        self.runs: dict[tuple, list] = {}  # (partition, workflow, run) -> [count, last, ids]
        # approvals (§9): waiting intents, and requests with the decisions recorded for them
        self.waiting: dict[tuple[int, str], dict] = {}
        self.requests: dict[tuple[int, str], tuple[dict, list]] = {}

    def add(self, verdict: str, check: str, message: str, **where) -> None:
        self.res.findings.append(Finding(verdict, check, message, **where))

    # -------------------------------------------------------------- segments

    def segment(self, suite: str, hb: bytes, entries: list[bytes]) -> None:
        try:
            h = parse_header(hb)
            if h["version"] != 1 or h["suite"] not in SUITES.values():
                raise Problem("bad version or suite code")
        except Problem as e:
            self.add("tampered", "segment.format", str(e))
            return
        p, num = h["partition"], h["number"]
        at = {"partition": p, "segment": num}
        part = self.parts.setdefault(p, _Part())
        if h["suite"] != SUITES[suite]:
            self.add("tampered", "segment.suite", "another suite", **at)
        if h["prev_hash"] != part.prev_hash:
            self.add("tampered", "segment.chain", "prev_hash does not link", **at)
        if num != part.next_number:
            self.add("tampered", "segment.number", "segment number", **at)
        if not part.diverged and h["first_leaf_index"] != len(part.hashes):
            self.add("tampered", "segment.first_leaf_index", "first_leaf_index", **at)
            part.diverged = True
        base = h["first_leaf_index"]
        seg_hashes, offsets, stamps = [], [], []
        for i, e in enumerate(entries):
            stored, leaf = e[:32], e[32:]
            lh = leaf_hash(suite, leaf)
            seg_hashes.append(lh)
            if lh != stored:
                self.add("tampered", "entry.leaf_hash", "leaf hash", leaf_index=base + i, **at)
            if len(leaf) < 21:
                self.add("tampered", "entry.format", "leaf too short", leaf_index=base + i, **at)
                offsets.append(-1)
                continue
            ver, lp, off, ts = struct.unpack(">BIQq", leaf[:21])
            offsets.append(off)
            if ver != 1:
                self.add("tampered", "entry.format", "leaf version", leaf_index=base + i, **at)
            elif lp != p:
                self.add("tampered", "entry.partition", "leaf of another partition",
                         leaf_index=base + i, **at)  # fmt: skip
            if off <= part.last_offset:
                self.add("tampered", "entry.offset_order", "offsets not increasing",
                         leaf_index=base + i, offset=off, **at)  # fmt: skip
            part.last_offset = off
            stamps.append(ts)
        for i, (e, off) in enumerate(zip(entries, offsets, strict=True)):
            self.pair(p, num, base + i, off, e[32:])
        k = len(entries)
        if k != h["leaf_count"]:
            self.add("tampered", "segment.leaf_count", "leaf count differs", **at)
            part.diverged = True
        elif k:
            if (h["first_offset"], h["last_offset"]) != (offsets[0], offsets[-1]):
                self.add("tampered", "segment.offsets", "offsets", **at)
            if (h["min_ts"], h["max_ts"]) != (min(stamps), max(stamps)):
                self.add("tampered", "segment.time_range", "time range", **at)
        seg_root = mth(suite, seg_hashes)
        if seg_root != h["segment_root"]:
            self.add("tampered", "segment.root", "segment root", **at)
        part.hashes.extend(seg_hashes)
        hh = H(suite, b"\x02" + hb)
        if not part.diverged:
            tree_root = mth(suite, part.hashes)
            if h["tree_size"] != len(part.hashes):
                self.add("tampered", "segment.tree_size", "tree size", **at)
                part.diverged = True
            elif h["tree_root"] != tree_root:
                self.add("tampered", "segment.tree_root", "tree root", **at)
                part.diverged = True
            else:
                part.ends[len(part.hashes)] = (tree_root, hh)
                self.res.tree_roots[(p, num)] = tree_root
        part.next_number = num + 1
        part.prev_hash = hh
        part.claimed = h["tree_size"]
        self.res.segment_roots[(p, num)] = seg_root
        self.res.header_hashes[(p, num)] = hh

    # -------------------------------------------------------------- pairing and headers

    def pair(self, p: int, num: int, index: int, offset: int, leaf: bytes) -> None:
        try:
            rec = parse_leaf(leaf)
        except (Problem, struct.error, UnicodeDecodeError):
            return
        ev = decode_event(rec["value"], self.schemas)
        if ev is None:
            self.res.undecodable += 1
            return
        at = {"partition": p, "segment": num, "leaf_index": index, "offset": offset}
        for name, want in (("ce_id", ev.get("event_id")),
                           ("ce_type", f"dev.wakeline.{ev.get('type')}.v1"),
                           ("ce_subject", ev.get("workflow_id"))):  # fmt: skip
            got = [v for n, v in rec["headers"] if n == name]
            if not (len(got) == 1 and want is not None and got[0] == want.encode()):
                self.add("warning", "event.header_mismatch", name, field=name, **at)
        eid = ev.get("event_id")
        run = self.runs.setdefault((p, ev.get("workflow_id"), ev.get("run_id")), [{}, set()])
        if eid in run[1]:
            self.res.redelivered += 1
            return
        kind = ev.get("type")
        mine = run[0].setdefault(ev.get("source"), [0, None])  # what this writer wrote
        if kind == "ToolIntent":
            self.pending[(p, eid)] = (index, offset)
        elif kind == "ToolResult":
            intent = (p, ev.get("intent_id"))
            if intent in self.pending:
                del self.pending[intent]
                self.answered[intent] = eid
            elif intent in self.answered:
                self.add("tampered", "pairing.duplicate_result", "second result", **at)
            else:
                self.add("tampered", "pairing.orphan_result", "no intent before it", **at)
        elif kind == "WorkflowCompleted":
            if ev.get("event_count") != mine[0]:
                self.add("tampered", "pairing.seal_count", "seal count", **at)
            elif ev.get("last_event_id") != mine[1]:
                self.add("tampered", "pairing.seal_last_event", "seal last event", **at)
        mine[0] += 1
        mine[1] = eid
        run[1].add(eid)
        self.approval(p, kind, ev, at)

    # -------------------------------------------------------------- approvals (§9)

    def approval(self, p: int, kind: str | None, ev: dict, at: dict) -> None:
        if kind == "ToolIntent":
            if ev.get("policy_decision") == "require_approval":
                self.waiting[(p, ev["event_id"])] = ev
        elif kind == "ApprovalRequested":
            if (p, ev["event_id"]) in self.requests:
                self.add("tampered", "approval.duplicate_request", "request id reused", **at)
                return
            self.requests[(p, ev["event_id"])] = (ev, [])
            intent = self.waiting.get((p, ev.get("intent_id")))
            if intent is None:
                self.add("tampered", "approval.orphan", "request of no waiting intent", **at)
            elif binding(intent, ev.get("policy_version")) != ev["intent_digest"]:
                self.add("tampered", "approval.unbound", "request binds another call", **at)
        elif kind in ("ApprovalGranted", "ApprovalDenied"):
            if ev.get("timed_out") and not ev.get("signature"):
                return
            got = self.requests.get((p, ev["request_id"]))
            if got is None:
                self.add("tampered", "approval.orphan", "decision of no request", **at)
                return
            req, decisions = got
            if len(ev["intent_digest"]) != 32 or ev["intent_digest"] != req["intent_digest"]:
                self.add("tampered", "approval.unbound", "decision over another binding", **at)
                return
            decisions.append(ev)
            if not signature_holds(ev):
                self.add("tampered", "approval.bad_signature", "signature", **at)
            elif listed_key(req, ev["approver"]) != ev.get("public_key"):
                self.add("tampered", "approval.wrong_key", "key not listed", **at)
        elif kind == "ToolResult":
            intent = self.waiting.pop((p, ev.get("intent_id")), None)
            if intent is None or ev.get("status") not in ("ok", "error"):
                return
            if intent.get("grant_id"):
                return
            started = ev["time"] - (ev.get("duration_us") or 0)
            for (q, rid), (req, decisions) in self.requests.items():
                if q != p or req.get("intent_id") != intent["event_id"]:
                    continue
                if intent.get("approval_id") not in (None, rid):
                    continue
                if binding(intent, req.get("policy_version")) != req["intent_digest"]:
                    continue
                valid = [d for d in decisions if signature_holds(d)
                         and listed_key(req, d["approver"]) == d.get("public_key")]  # fmt: skip
                if any(d["type"] == "ApprovalDenied" for d in valid):
                    continue
                yes = {d["approver"] for d in valid if d["expires_at"] > started}
                if len(yes) >= max(1, req.get("quorum") or 1):
                    return
            self.add("tampered", "approval.quorum_missing", "ran without a quorum", **at)

    # -------------------------------------------------------------- checkpoints

    def checkpoint(self, note: bytes, origin: str, suite: str) -> None:
        vkeys = self.pinned or [k[0] for k in self.keys]
        if not vkeys:
            if not self.keys_warned:
                self.add("unusable", "checkpoint.keys", "no key to check signatures with")
                self.keys_warned = True
            return
        try:  # which carried keys signed this note, trusted or not (§7)
            body, sigs = split_note(note)
            for vk, name, kid, pub in self.keys:
                if any(n == name and r[:4] == kid and _verifies(pub, r[4:], body) for n, r in sigs):
                    self.used.add(vk)
        except Problem:
            pass
        try:
            c = parse_body(open_note(note, vkeys))
        except Problem as e:
            self.add("tampered", e.check or "checkpoint.format", str(e))
            return
        if c["origin"] != origin:
            self.add("tampered", "checkpoint.origin", "another origin")
        if c["suite"] != suite:
            self.add("tampered", "checkpoint.suite", "another suite")
        prev = self.prev_cp
        if (c["seq"] == 0) != (c["prev"] is None):
            self.add("tampered", "checkpoint.chain", "prev '-' exactly when seq 0")
        elif prev is None:
            if c["seq"] != 0:
                self.add("incomplete", "checkpoint.first_seq", "first checkpoint not seq 0")
        elif c["seq"] != prev["seq"] + 1 or c["prev"] != H(suite, b"\x03" + encode_body(prev)):
            self.add("tampered", "checkpoint.chain", "does not follow the previous one")
        if prev is not None:
            for p in prev["heads"]:
                if p not in c["heads"]:
                    self.add("tampered", "checkpoint.consistency", "partition gone", partition=p)
        for p, (size, root, hh) in c["heads"].items():
            if prev is not None and p in prev["heads"]:
                osize, oroot, _ = prev["heads"][p]
                if size < osize:
                    self.add("tampered", "checkpoint.consistency", "shrank", partition=p)
                if size == osize and root != oroot:
                    self.add("tampered", "checkpoint.consistency", "same size", partition=p)
            if size == 0:
                self.add("tampered", "checkpoint.head", "size 0", partition=p)
                continue
            part = self.parts.get(p)
            if part is None or size > part.claimed:
                self.add("incomplete", "checkpoint.coverage", "more than the input", partition=p)
                continue
            end = part.ends.get(size)
            if end is None:
                if not part.diverged:
                    self.add("tampered", "checkpoint.head", "not a segment end", partition=p)
                continue
            if end[0] != root:
                self.add("tampered", "checkpoint.root", "root", partition=p)
            if end[1] != hh:
                self.add("tampered", "checkpoint.header_hash", "header hash", partition=p)
        self.prev_cp = c
        self.res.checkpoints += 1


def _canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def binding(intent: dict, policy_version: str | None) -> bytes | None:
    """The binding of an intent for a policy version (§9); None when the intent records
    another version."""
    if intent.get("policy_version") not in (None, policy_version):
        return None
    body = {k: intent[k] for k in ("agent_id", "principal", "run_id", "tool", "workflow_id")}
    body.update(args_digest=intent["args_digest"].hex(), intent_id=intent["event_id"],
                policy_version=policy_version or "")  # fmt: skip
    return blake3.blake3(b"wakeline/approval-binding/v1\n" + _canonical(body)).digest()


def signature_holds(d: dict) -> bool:
    """The decision's signature verifies over its statement with the key it carries (§9)."""
    deny = d["type"] == "ApprovalDenied"
    statement = b"wakeline/approval-statement/v1\n" + _canonical({
        "approver": d["approver"], "binding": d["intent_digest"].hex(),
        "decision": "deny" if deny else "approve",
        "expires_at": 0 if deny else d["expires_at"], "request_id": d["request_id"],
    })  # fmt: skip
    pub, sig = d.get("public_key"), d.get("signature")
    if not pub or not sig or len(pub) != 32:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, statement)
    except (InvalidSignature, ValueError):
        return False
    return True


def listed_key(request: dict, approver: str) -> bytes | None:
    """The raw key a request lists for `approver` (None: none, or one that does not read)."""
    text = (request.get("approver_keys") or {}).get(approver)
    if not isinstance(text, str) or not text.startswith("ed25519:"):
        return None
    try:
        raw = base64.b64decode(text[len("ed25519:") :], validate=True)
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


def verify_bundle(data: bytes, trusted_keys: list[str] | None = None) -> Result:
    res = Result(ok=False)
    v = _Verifier(trusted_keys, res)
    frames, ending = read_frames(data)
    stopped = _walk(v, frames, ending)
    if ending is None and not stopped:  # read to END: the end-of-input checks (§9)
        for vk, *_ in v.keys:
            if vk not in v.used:
                v.add("tampered", "key.unused", "carried key signed none of the checkpoints")
        for (p, eid), (index, offset) in sorted(
            v.pending.items(), key=lambda kv: (kv[0][0], kv[1])
        ):
            v.add("incomplete", "pairing.unanswered_intent", f"intent {eid}", partition=p,
                  leaf_index=index, offset=offset)  # fmt: skip
        if v.prev_cp is None:
            v.add("incomplete", "checkpoint.missing", "no valid checkpoint")
    worst = max((RANK[f.verdict] for f in res.findings), default=0)
    if worst:
        res.verdict = next(k for k, r in RANK.items() if r == worst)
        top = [f for f in res.findings if f.verdict == res.verdict]
        res.first = min(top, key=lambda f: f.check.startswith(("pairing.", "approval.")))
        res.problem = f"{res.first.check}: {res.first.message}"
    res.ok = res.verdict == "sound"
    return res


def _walk(v: _Verifier, frames: list[tuple[int, bytes]], ending: tuple | None) -> bool:
    """Feed the frames in order; True when reading stopped on a finding (§7)."""
    stage, origin, suite, counts = -1, "", "", [0] * 5
    i = 0
    while i < len(frames):
        kind, payload = frames[i]
        if kind == ENTRY or ORDER[kind] < stage or (stage == -1) != (kind == META):
            v.add("unusable", "bundle.format", f"frame type {kind} out of order")
            return True
        stage = ORDER[kind]
        if kind == META:
            try:
                meta = json.loads(payload.decode())
                canon = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                if set(meta) != {"format", "origin", "suite"} or meta["format"] != 1:
                    raise ValueError("bad META fields")
                if not isinstance(meta["origin"], str) or not isinstance(meta["suite"], str):
                    raise ValueError("bad META types")
                if canon.encode() != payload:
                    raise ValueError("META is not canonical JSON")
            except (ValueError, UnicodeDecodeError, TypeError) as e:
                v.add("unusable", "bundle.format", f"META: {e}")
                return True
            origin, suite = meta["origin"], meta["suite"]
            if suite not in SUITES:
                v.add("unusable", "meta.suite", "unknown suite")
                return True
        elif kind == KEY:
            counts[0] += 1
            text = payload.decode("utf-8", "replace")
            try:
                v.keys.append((text, *parse_vkey(text)))
            except (Problem, ValueError) as e:
                v.add("tampered", "key.format", str(e))
        elif kind == SCHEMA:
            counts[1] += 1
            problem = schema_problem(payload[8:])
            if problem is not None:
                v.add("tampered", "schema.canonical_form", problem)
            if crc64_avro(payload[8:]) != payload[:8]:
                v.add("tampered", "schema.fingerprint", "schema fingerprint mismatch")
            if problem is None:
                v.schemas[payload[:8]] = fastavro.parse_schema(
                    json.loads(payload[8:]), named_schemas={}
                )
        elif kind == SEGMENT:
            j = i + 1
            while j < len(frames) and frames[j][0] == ENTRY:
                j += 1
            if j == len(frames) and ending is not None:
                break  # cut or broken before the frame after its entries: not checked
            counts[2] += 1
            counts[3] += j - i - 1
            v.segment(suite, payload, [e for _, e in frames[i + 1 : j]])
            i = j
            continue
        elif kind == CHECKPOINT:
            counts[4] += 1
            v.checkpoint(payload, origin, suite)
        elif kind == END:
            if ending is not None:
                break  # bytes after END: the END frame is not taken
            if len(payload) != 40:
                v.add("unusable", "bundle.format", "END is not 40 bytes")
                return True
            if list(struct.unpack(">5Q", payload)) != counts:
                v.add("tampered", "bundle.trailer", "END counts differ from the frames")
        i += 1
    if ending is not None:
        v.add(*ending)
        return True
    return False
