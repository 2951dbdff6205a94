"""An independent verifier of Wakeline export bundles, event proofs and consistency proofs.

Written only from docs/ledger-format.md, RFC 6962 / RFC 9162, the C2SP signed-note and
tlog-checkpoint specifications and the Avro specification (Parsing Canonical Form, single-
object encoding; fastavro only to decode event bodies). It deliberately imports nothing
from `wakeline`. A bundle's verdict is the worst of its findings, each with the check name
and verdict of docs/ledger-format.md §9.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
from dataclasses import dataclass, field

import blake3
import fastavro
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MAGIC = b"\x89WKLBDL\n"
SUITES = {"sha256": 1, "blake3": 2}
HEADER_SIZE = 166
MAX_FRAME = 64 * 1024 * 1024
META, KEY, SCHEMA, SEGMENT, ENTRY, CHECKPOINT, END = range(1, 8)
EM_DASH = "\u2014"


class Problem(Exception):
    def __init__(self, message: str, check: str | None = None) -> None:
        super().__init__(message)
        self.check = check


@dataclass
class Finding:
    verdict: str
    check: str
    message: str
    partition: int | None = None
    segment: int | None = None
    leaf_index: int | None = None
    offset: int | None = None
    field: str | None = None


@dataclass
class Result:
    ok: bool
    problem: str | None = None
    verdict: str = "sound"
    first: Finding | None = None
    findings: list[Finding] = field(default_factory=list)
    undecodable: int = 0
    redelivered: int = 0
    # recomputed values, for comparison with the project's
    segment_roots: dict[tuple[int, int], bytes] = field(default_factory=dict)
    tree_roots: dict[tuple[int, int], bytes] = field(default_factory=dict)
    header_hashes: dict[tuple[int, int], bytes] = field(default_factory=dict)
    checkpoints: int = 0


def H(suite: str, data: bytes) -> bytes:
    if suite == "sha256":
        return hashlib.sha256(data).digest()
    if suite == "blake3":
        return blake3.blake3(data).digest()
    raise Problem(f"unknown suite {suite!r}")


def leaf_hash(suite: str, leaf: bytes) -> bytes:
    return H(suite, b"\x00" + leaf)


def node(suite: str, left: bytes, right: bytes) -> bytes:
    return H(suite, b"\x01" + left + right)


def mth(suite: str, hashes: list[bytes]) -> bytes:
    """RFC 6962 §2.1 over already-computed leaf hashes."""
    n = len(hashes)
    if n == 0:
        return H(suite, b"")
    if n == 1:
        return hashes[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node(suite, mth(suite, hashes[:k]), mth(suite, hashes[k:]))


# ---------------------------------------------------------------- RFC 9162 proofs


def verify_inclusion(
    suite: str, index: int, size: int, lh: bytes, proof: list[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2."""
    if index >= size:
        raise Problem("leaf index beyond tree size")
    fn, sn, r = index, size - 1, lh
    for p in proof:
        if sn == 0:
            raise Problem("inclusion proof too long")
        if fn & 1 or fn == sn:
            r = node(suite, p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node(suite, r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise Problem("inclusion proof too short")
    if r != root:
        raise Problem("inclusion proof does not lead to the root")


def verify_consistency(
    suite: str, size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes
) -> None:
    """RFC 9162 §2.1.4.2."""
    if size1 > size2:
        raise Problem("old size larger than new size")
    if size1 == size2:
        if proof or root1 != root2:
            raise Problem("equal sizes need an empty proof and equal roots")
        return
    if size1 == 0:
        raise Problem("consistency from size 0 proves nothing")
    if not proof:
        raise Problem("empty consistency proof")
    if size1 & (size1 - 1) == 0:  # power of two: prepend first_hash
        proof = [root1, *proof]
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            raise Problem("consistency proof too long")
        if fn & 1 or fn == sn:
            fr = node(suite, c, fr)
            sr = node(suite, c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node(suite, sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise Problem("consistency proof too short")
    if fr != root1 or sr != root2:
        raise Problem("consistency proof does not reproduce the roots")


# ---------------------------------------------------------------- leaves and headers


def parse_leaf(leaf: bytes) -> dict:
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(leaf):
            raise Problem("leaf too short")
        out = leaf[pos : pos + n]
        pos += n
        return out

    def blob() -> bytes | None:
        (n,) = struct.unpack(">i", take(4))
        if n == -1:
            return None
        if n < 0:
            raise Problem("negative blob length")
        return take(n)

    if take(1) != b"\x01":
        raise Problem("leaf version is not 1")
    (partition,) = struct.unpack(">I", take(4))
    (offset,) = struct.unpack(">Q", take(8))
    (timestamp,) = struct.unpack(">q", take(8))
    key, value = blob(), blob()
    (count,) = struct.unpack(">I", take(4))
    headers = []
    for _ in range(count):
        (n,) = struct.unpack(">I", take(4))
        name = take(n).decode("utf-8")
        headers.append((name, blob()))
    if pos != len(leaf):
        raise Problem("bytes after the last leaf header")
    return {"partition": partition, "offset": offset, "timestamp": timestamp,
            "key": key, "value": value, "headers": headers}  # fmt: skip


def parse_header(b: bytes) -> dict:
    if len(b) != HEADER_SIZE:
        raise Problem(f"segment header is {len(b)} bytes, want {HEADER_SIZE}")
    ver, suite, part, num, first, count, fo, lo, tmin, tmax = struct.unpack(">BBIQQQQQqq", b[:62])
    (tree_size,) = struct.unpack(">Q", b[94:102])
    return {"version": ver, "suite": suite, "partition": part, "number": num,
            "first_leaf_index": first, "leaf_count": count, "first_offset": fo,
            "last_offset": lo, "min_ts": tmin, "max_ts": tmax, "segment_root": b[62:94],
            "tree_size": tree_size, "tree_root": b[102:134], "prev_hash": b[134:166]}  # fmt: skip


# ---------------------------------------------------------------- keys and notes


def b64(x: bytes) -> str:
    return base64.b64encode(x).decode()


def unb64(s: str, what: str, check: str) -> bytes:
    """Standard, padded and canonical base64 (§5: re-encoding gives the same text)."""
    try:
        raw = base64.b64decode(s, validate=True)
    except ValueError as e:
        raise Problem(f"{what} is not base64", check) from e
    if b64(raw) != s:
        raise Problem(f"{what} is not canonical base64", check)
    return raw


def key_id(name: str, pub: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + b"\x01" + pub).digest()[:4]


def parse_vkey(vkey: str) -> tuple[str, bytes, bytes]:
    """name+<hex key id>+base64(0x01 ‖ pubkey) -> (name, key id, pubkey)."""
    parts = vkey.strip().split("+", 2)  # the base64 may itself contain "+"
    if len(parts) != 3:
        raise Problem("malformed verifier key", "key.format")
    name, hexid, text = parts
    if not name or any(c.isspace() for c in name):
        raise Problem("bad key name", "key.format")
    raw = unb64(text, "verifier key", "key.format")
    if len(raw) != 33 or raw[0] != 1:
        raise Problem("verifier key is not Ed25519", "key.format")
    if hexid != key_id(name, raw[1:]).hex():
        raise Problem("verifier key id does not match", "key.format")
    return name, bytes.fromhex(hexid), raw[1:]


def split_note(note: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """C2SP signed note -> (body, [(key name, key id ‖ signature)]); Problem if malformed."""
    fmt = "checkpoint.format"
    try:
        text = note.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Problem("note is not UTF-8", fmt) from e
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise Problem("control character in the note", fmt)
    sep = text.rfind("\n\n")
    if sep < 0 or not text.endswith("\n"):
        raise Problem("malformed note", fmt)
    sigs = []
    rest = text[sep + 2 :]
    if not rest:
        raise Problem("no signature lines", fmt)
    for line in rest[:-1].split("\n"):
        if not line.startswith(EM_DASH + " "):
            raise Problem("malformed signature line", fmt)
        fields = line[2:].split(" ")
        if len(fields) != 2:
            raise Problem("signature line is not '— name base64'", fmt)
        raw = unb64(fields[1], "signature", fmt)
        if len(raw) < 5:
            raise Problem("signature too short", fmt)
        sigs.append((fields[0], raw))
    return text[: sep + 1].encode(), sigs


def _verifies(pub: bytes, sig: bytes, body: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, body)
    except InvalidSignature:
        return False
    return True


def open_note(note: bytes, vkeys: list[str]) -> bytes:
    """Return the body if a trusted key signed it."""
    body, sigs = split_note(note)
    trusted = {}
    for vk in vkeys:
        name, kid, pub = parse_vkey(vk)
        trusted[(name, kid)] = pub
    good = 0
    for name, raw in sigs:
        pub = trusted.get((name, raw[:4]))
        if pub is None:
            continue  # an unknown signer (witness, rotated key): ignored
        if not _verifies(pub, raw[4:], body):
            raise Problem(f"bad signature by trusted key {name}", "checkpoint.signature")
        good += 1
    if not good:
        raise Problem("no trusted signature on the note", "checkpoint.signature")
    return body


def _canon_int(s: str) -> int:
    if not s.isascii() or not s.isdigit() or (len(s) > 1 and s[0] == "0"):
        raise Problem(f"non-canonical number {s!r}", "checkpoint.format")
    return int(s)


def _hash32(s: str, what: str) -> bytes:
    raw = unb64(s, what, "checkpoint.format")
    if len(raw) != 32:
        raise Problem(f"{what} is not 32 bytes", "checkpoint.format")
    return raw


def parse_body(body: bytes) -> dict:
    fmt = "checkpoint.format"
    try:
        lines = body.decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise Problem("checkpoint body is not UTF-8", fmt) from e
    if lines[-1] != "":
        raise Problem("checkpoint body does not end in a newline", fmt)
    lines = lines[:-1]
    if len(lines) < 6 or lines[1] != "wakeline-checkpoint/v1":
        raise Problem("not a wakeline checkpoint", fmt)
    out: dict = {"origin": lines[0]}
    for i, kw in ((2, "suite"), (3, "seq"), (4, "time"), (5, "prev")):
        k, _, v = lines[i].partition(" ")
        if k != kw:
            raise Problem(f"checkpoint line {i + 1} is not {kw!r}", fmt)
        out[kw] = v
    if out["suite"] not in SUITES:
        raise Problem("unknown suite", fmt)
    out["seq"] = _canon_int(out["seq"])
    out["time"] = _canon_int(out["time"])
    out["prev"] = None if out["prev"] == "-" else _hash32(out["prev"], "prev")
    heads: dict[int, tuple[int, bytes, bytes]] = {}
    order = []
    for ln in lines[6:]:
        f = ln.split(" ")
        if len(f) != 4:
            raise Problem("partition line has not 4 fields", fmt)
        p = _canon_int(f[0])
        order.append(p)
        heads[p] = (_canon_int(f[1]), _hash32(f[2], "root"), _hash32(f[3], "header hash"))
    if order != sorted(set(order)):
        raise Problem("partition lines not strictly ascending", fmt)
    out["heads"] = heads
    if encode_body(out) != body:
        raise Problem("checkpoint body does not re-encode to the same bytes", fmt)
    return out


def encode_body(c: dict) -> bytes:
    lines = [
        c["origin"],
        "wakeline-checkpoint/v1",
        f"suite {c['suite']}",
        f"seq {c['seq']}",
        f"time {c['time']}",
        "prev " + ("-" if c["prev"] is None else b64(c["prev"])),
    ]
    for p, (size, root, hh) in sorted(c["heads"].items()):
        lines.append(f"{p} {size} {b64(root)} {b64(hh)}")
    return ("\n".join(lines) + "\n").encode()


# ---------------------------------------------------------------- Avro: canonical form, decoding

PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
PCF_KEYS = ("name", "type", "fields", "symbols", "items", "values", "size")


def pcf(schema: object) -> str:
    """Parsing Canonical Form (Avro specification: PRIMITIVES, FULLNAMES, STRIP, ORDER,
    STRINGS, INTEGERS, WHITESPACE)."""
    return _pcf(schema, "", set())


def _full(name: str, ns: str) -> str:
    return name if "." in name or not ns else f"{ns}.{name}"


def _pcf(s: object, ns: str, defined: set[str]) -> str:
    dump = lambda x: json.dumps(x, ensure_ascii=False)  # noqa: E731
    if isinstance(s, str):
        return dump(s if s in PRIMITIVES else _full(s, ns))
    if isinstance(s, list):
        return "[" + ",".join(_pcf(x, ns, defined) for x in s) + "]"
    if not isinstance(s, dict) or "type" not in s:
        raise Problem("not an Avro schema", "schema.canonical_form")
    t = s["type"]
    if isinstance(t, (dict, list)):
        return _pcf(t, ns, defined)
    if t in PRIMITIVES:
        return dump(t)  # attributes such as logicalType are stripped
    parts = []
    if t in ("record", "error", "enum", "fixed"):
        name = s["name"]
        if "." not in name:
            name = _full(name, s.get("namespace", ns) or "")
        if name in defined:
            raise Problem("named type defined twice", "schema.canonical_form")
        defined.add(name)
        ns = name.rpartition(".")[0]
        parts.append('"name":' + dump(name))
    elif t not in ("array", "map"):
        return dump(_full(t, ns))  # a reference to a named type
    parts.append('"type":' + dump("record" if t == "error" else t))
    if t in ("record", "error"):
        fields = []
        for f in s["fields"]:
            fields.append(
                '{"name":' + dump(f["name"]) + ',"type":' + _pcf(f["type"], ns, defined) + "}"
            )
        parts.append('"fields":[' + ",".join(fields) + "]")
    if t == "enum":
        parts.append('"symbols":' + "[" + ",".join(dump(x) for x in s["symbols"]) + "]")
    if t == "array":
        parts.append('"items":' + _pcf(s["items"], ns, defined))
    if t == "map":
        parts.append('"values":' + _pcf(s["values"], ns, defined))
    if t == "fixed":
        parts.append('"size":' + str(int(s["size"])))
    return "{" + ",".join(parts) + "}"


def schema_problem(text: bytes) -> str | None:
    """Why a SCHEMA frame's text is not a valid Avro schema in Parsing Canonical Form."""
    try:
        decoded = text.decode("utf-8")
        if pcf(json.loads(decoded)) != decoded:
            return "schema text is not in Parsing Canonical Form"
        fastavro.parse_schema(json.loads(decoded), named_schemas={})  # the rest of validity
    except Problem as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - not JSON, or not a schema fastavro accepts
        return f"not an Avro schema: {e!r}"
    return None


def decode_event(value: bytes | None, schemas: dict[bytes, object]) -> dict | None:
    """A single-object frame decoded with a carried schema using all its bytes, or None."""
    if value is None or value[:2] != b"\xc3\x01" or value[2:10] not in schemas:
        return None
    bio = io.BytesIO(value[10:])
    try:
        ev = fastavro.schemaless_reader(bio, schemas[value[2:10]], None)
    except Exception:  # noqa: BLE001 - anything fastavro refuses is "does not decode"
        return None
    if bio.tell() != len(value) - 10 or not isinstance(ev, dict):
        return None
    return ev


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
        run = self.runs.setdefault((p, ev.get("workflow_id"), ev.get("run_id")), [0, None, set()])
        if eid in run[2]:
            self.res.redelivered += 1
            return
        kind = ev.get("type")
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
            if ev.get("event_count") != run[0]:
                self.add("tampered", "pairing.seal_count", "seal count", **at)
            elif ev.get("last_event_id") != run[1]:
                self.add("tampered", "pairing.seal_last_event", "seal last event", **at)
        run[0] += 1
        run[1] = eid
        run[2].add(eid)

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
        res.first = min(top, key=lambda f: f.check.startswith("pairing."))
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


# ---------------------------------------------------------------- CRC-64-AVRO


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (0xC15D213AA4D7A795 & -(fp & 1))
        table.append(fp)
    return table


_TABLE = _crc_table()


def crc64_avro(data: bytes) -> bytes:
    fp = 0xC15D213AA4D7A795
    for b in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ b) & 0xFF]
    return fp.to_bytes(8, "little")


# ---------------------------------------------------------------- proof documents


def _b64(s: str) -> bytes:
    return base64.b64decode(s, validate=True)


def check_event_proof(doc: dict, vkeys: list[str]) -> Result:
    try:
        if doc.get("format") != "wakeline-proof/v1":
            raise Problem("not a wakeline-proof/v1 document")
        suite = doc["suite"]
        c = parse_body(open_note(doc["checkpoint"].encode(), vkeys))
        if c["suite"] != suite:
            raise Problem("proof suite differs from the checkpoint's")
        head = c["heads"].get(doc["partition"])
        if head is None:
            raise Problem("checkpoint has no line for the partition")
        size, root, _ = head
        leaf = _b64(doc["leaf"])
        rec = parse_leaf(leaf)
        ids = [v for n, v in rec["headers"] if n == "ce_id"]
        if ids != [doc["event_id"].encode()]:
            raise Problem("leaf's ce_id is not the event id")
        if rec["partition"] != doc["partition"] or rec["offset"] != doc["offset"]:
            raise Problem("leaf partition/offset differ from the document")
        lh = leaf_hash(suite, leaf)
        if _b64(doc["leaf_hash"]) != lh:
            raise Problem("leaf_hash differs from H(0x00 ‖ leaf)")
        if doc["tree_size"] != size or _b64(doc["root"]) != root:
            raise Problem("tree_size/root differ from the checkpoint")
        proof = [_b64(x) for x in doc["inclusion_proof"]]
        verify_inclusion(suite, doc["leaf_index"], size, lh, proof, root)
    except Problem as e:
        return Result(False, str(e))
    except (KeyError, ValueError, TypeError) as e:
        return Result(False, f"malformed: {e!r}")
    return Result(True)


def check_consistency_doc(doc: dict, vkeys: list[str]) -> Result:
    try:
        if doc.get("format") != "wakeline-consistency/v1":
            raise Problem("not a wakeline-consistency/v1 document")
        old = parse_body(open_note(doc["old_checkpoint"].encode(), vkeys))
        new = parse_body(open_note(doc["new_checkpoint"].encode(), vkeys))
        if old["suite"] != new["suite"] or old["origin"] != new["origin"]:
            raise Problem("checkpoints of different logs")
        proofs = {e["partition"]: e for e in doc["partitions"]}
        for p, (size1, root1, _) in old["heads"].items():
            if p not in new["heads"]:
                raise Problem(f"partition {p} missing from the new checkpoint")
            size2, root2, _ = new["heads"][p]
            entry = proofs.get(p)
            if entry is None:
                raise Problem(f"no proof for partition {p}")
            proof = [_b64(x) for x in entry["proof"]]
            verify_consistency(old["suite"], size1, size2, proof, root1, root2)
    except Problem as e:
        return Result(False, str(e))
    except (KeyError, ValueError, TypeError) as e:
        return Result(False, f"malformed: {e!r}")
    return Result(True)
