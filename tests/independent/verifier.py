"""An independent verifier of Wakeline export bundles, event proofs and consistency proofs.

Written only from docs/ledger-format.md, RFC 6962 / RFC 9162 and the C2SP signed-note and
tlog-checkpoint specifications. It deliberately imports nothing from `wakeline`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass, field

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MAGIC = b"\x89WKLBDL\n"
SUITES = {"sha256": 1, "blake3": 2}
HEADER_SIZE = 166
MAX_FRAME = 64 * 1024 * 1024
META, KEY, SCHEMA, SEGMENT, ENTRY, CHECKPOINT, END = range(1, 8)
EM_DASH = "\u2014"


class Problem(Exception):
    pass


@dataclass
class Result:
    ok: bool
    problem: str | None = None
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


def key_id(name: str, pub: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + b"\x01" + pub).digest()[:4]


def parse_vkey(vkey: str) -> tuple[str, bytes, bytes]:
    """name+<hex key id>+base64(0x01 ‖ pubkey) -> (name, key id, pubkey)."""
    parts = vkey.strip().split("+", 2)  # the base64 may itself contain "+"
    if len(parts) != 3:
        raise Problem("malformed verifier key")
    name, hexid, b64 = parts
    raw = base64.b64decode(b64, validate=True)
    if len(raw) != 33 or raw[0] != 1:
        raise Problem("verifier key is not Ed25519")
    kid = bytes.fromhex(hexid)
    if kid != key_id(name, raw[1:]):
        raise Problem("verifier key id does not match")
    return name, kid, raw[1:]


def open_note(note: bytes, vkeys: list[str]) -> bytes:
    """C2SP signed note: return the body if a trusted key signed it."""
    text = note.decode("utf-8")
    sep = text.rfind("\n\n")
    if sep < 0 or not text.endswith("\n"):
        raise Problem("malformed note")
    body = text[: sep + 1].encode()
    trusted = {}
    for vk in vkeys:
        name, kid, pub = parse_vkey(vk)
        trusted[(name, kid)] = pub
    good = 0
    for line in text[sep + 2 :].splitlines():
        if not line.startswith(EM_DASH + " "):
            raise Problem("malformed signature line")
        name, _, b64 = line[2:].rpartition(" ")
        raw = base64.b64decode(b64, validate=True)
        kid, sig = raw[:4], raw[4:]
        pub = trusted.get((name, kid))
        if pub is None:
            continue  # an unknown signer (witness, rotated key): ignored
        try:
            Ed25519PublicKey.from_public_bytes(pub).verify(sig, body)
        except InvalidSignature as e:
            raise Problem(f"bad signature by trusted key {name}") from e
        good += 1
    if not good:
        raise Problem("no trusted signature on the note")
    return body


def _canon_int(s: str) -> int:
    if not s.isdigit() or (len(s) > 1 and s[0] == "0"):
        raise Problem(f"non-canonical number {s!r}")
    return int(s)


def parse_body(body: bytes) -> dict:
    lines = body.decode("utf-8").split("\n")
    if lines[-1] != "":
        raise Problem("checkpoint body does not end in a newline")
    lines = lines[:-1]
    if len(lines) < 6 or lines[1] != "wakeline-checkpoint/v1":
        raise Problem("not a wakeline checkpoint")
    out = {"origin": lines[0]}
    for i, kw in ((2, "suite"), (3, "seq"), (4, "time"), (5, "prev")):
        k, _, v = lines[i].partition(" ")
        if k != kw:
            raise Problem(f"checkpoint line {i + 1} is not {kw!r}")
        out[kw] = v
    out["seq"] = _canon_int(out["seq"])
    out["time"] = _canon_int(out["time"])
    out["prev"] = None if out["prev"] == "-" else base64.b64decode(out["prev"], validate=True)
    heads = {}
    for ln in lines[6:]:
        p, size, root, hh = ln.split(" ")
        heads[_canon_int(p)] = (_canon_int(size), base64.b64decode(root, validate=True),
                                base64.b64decode(hh, validate=True))  # fmt: skip
    if list(heads) != sorted(heads):
        raise Problem("partition lines not sorted")
    out["heads"] = heads
    if encode_body(out) != body:
        raise Problem("checkpoint body does not re-encode to the same bytes")
    return out


def encode_body(c: dict) -> bytes:
    b64 = lambda x: base64.b64encode(x).decode()  # noqa: E731
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


# ---------------------------------------------------------------- bundle


def read_frames(data: bytes) -> list[tuple[int, bytes]]:
    if data[:8] != MAGIC:
        raise Problem("bad magic")
    if data[8:9] != b"\x01":
        raise Problem("unknown bundle version")
    pos, frames = 9, []
    while pos < len(data):
        if pos + 5 > len(data):
            raise Problem("truncated frame header")
        kind, n = struct.unpack(">BI", data[pos : pos + 5])
        if n > MAX_FRAME:
            raise Problem("frame longer than 64 MiB")
        if pos + 5 + n > len(data):
            raise Problem("truncated frame")
        frames.append((kind, data[pos + 5 : pos + 5 + n]))
        pos += 5 + n
        if kind == END:
            break
    if not frames or frames[-1][0] != END:
        raise Problem("bundle incomplete: no END frame")
    if pos != len(data):
        raise Problem("bytes after END")
    return frames


def verify_bundle(data: bytes, trusted_keys: list[str] | None = None) -> Result:
    res = Result(ok=False)
    try:
        _verify_bundle(data, trusted_keys, res)
    except Problem as e:
        res.problem = str(e)
        return res
    except (ValueError, UnicodeDecodeError, struct.error, KeyError, IndexError) as e:
        res.problem = f"malformed: {e!r}"
        return res
    res.ok = True
    return res


def _verify_bundle(data: bytes, trusted_keys: list[str] | None, res: Result) -> None:
    frames = read_frames(data)
    kinds = [k for k, _ in frames]
    if kinds[0] != META:
        raise Problem("first frame is not META")
    meta = json.loads(frames[0][1].decode())
    if json.dumps(meta, sort_keys=True, separators=(",", ":")).encode() != frames[0][1]:
        raise Problem("META is not canonical JSON")
    if set(meta) != {"format", "origin", "suite"} or meta["format"] != 1:
        raise Problem("bad META")
    suite, origin = meta["suite"], meta["origin"]
    code = SUITES[suite]
    # order: META KEY* SCHEMA* (SEGMENT ENTRY*)* CHECKPOINT* END
    rank = {META: 0, KEY: 1, SCHEMA: 2, SEGMENT: 3, ENTRY: 3, CHECKPOINT: 4, END: 5}
    last = 0
    for k in kinds[1:]:
        if k not in rank or rank[k] < last:
            raise Problem(f"frame type {k} out of order")
        last = rank[k]
    counts = [kinds.count(k) for k in (KEY, SCHEMA, SEGMENT, ENTRY, CHECKPOINT)]
    if list(struct.unpack(">5Q", frames[-1][1])) != counts:
        raise Problem("END counts differ from the frames")
    keys = [p.decode() for k, p in frames if k == KEY]
    for k in keys:
        parse_vkey(k)
    for k, p in frames:
        if k == SCHEMA and crc64_avro(p[8:]) != p[:8]:
            raise Problem("schema fingerprint mismatch")

    # segments and entries
    # per partition: list of leaf hashes, the chain of (tree_size, tree_root, header hash)
    leaves: dict[int, list[bytes]] = {}
    ends: dict[int, dict[int, tuple[bytes, bytes]]] = {}
    prev_hash: dict[int, bytes] = {}
    last_offset: dict[int, int] = {}
    i, body = 0, [f for f in frames if f[0] in (SEGMENT, ENTRY)]
    last_part = -1
    while i < len(body):
        k, hb = body[i]
        if k != SEGMENT:
            raise Problem("ENTRY without a SEGMENT")
        h = parse_header(hb)
        p, num = h["partition"], h["number"]
        where = f"partition {p} segment {num}"
        if h["version"] != 1 or h["suite"] != code:
            raise Problem(f"{where}: bad version or suite")
        if p < last_part:
            raise Problem("partitions not ascending")
        last_part = p
        hashes = leaves.setdefault(p, [])
        seg = [e for _, e in body[i + 1 : i + 1 + h["leaf_count"]] if True]
        kinds_here = [kk for kk, _ in body[i + 1 : i + 1 + h["leaf_count"]]]
        if h["leaf_count"] < 1 or len(seg) != h["leaf_count"] or SEGMENT in kinds_here:
            raise Problem(f"{where}: leaf count differs from the header")
        i += 1 + h["leaf_count"]
        want_num = len(ends.get(p, {}))
        if num != want_num:
            raise Problem(f"{where}: segment number, want {want_num}")
        if h["first_leaf_index"] != len(hashes):
            raise Problem(f"{where}: first_leaf_index")
        if h["prev_hash"] != prev_hash.get(p, bytes(32)):
            raise Problem(f"{where}: prev_hash does not link to the previous header")
        seg_hashes, recs = [], []
        for e in seg:
            stored, leaf = e[:32], e[32:]
            lh = leaf_hash(suite, leaf)
            if lh != stored:
                raise Problem(f"{where}: leaf hash of leaf {len(hashes) + len(seg_hashes)}")
            r = parse_leaf(leaf)
            if r["partition"] != p:
                raise Problem(f"{where}: leaf of another partition")
            if p in last_offset and r["offset"] <= last_offset[p]:
                raise Problem(f"{where}: offsets not increasing")
            last_offset[p] = r["offset"]
            seg_hashes.append(lh)
            recs.append(r)
        if (h["first_offset"], h["last_offset"]) != (recs[0]["offset"], recs[-1]["offset"]):
            raise Problem(f"{where}: offsets")
        ts = [r["timestamp"] for r in recs]
        if (h["min_ts"], h["max_ts"]) != (min(ts), max(ts)):
            raise Problem(f"{where}: time range")
        seg_root = mth(suite, seg_hashes)
        if seg_root != h["segment_root"]:
            raise Problem(f"{where}: segment root")
        hashes.extend(seg_hashes)
        tree_root = mth(suite, hashes)
        if h["tree_size"] != len(hashes):
            raise Problem(f"{where}: tree size")
        if h["tree_root"] != tree_root:
            raise Problem(f"{where}: tree root")
        hh = H(suite, b"\x02" + hb)
        prev_hash[p] = hh
        ends.setdefault(p, {})[len(hashes)] = (tree_root, hh)
        res.segment_roots[(p, num)] = seg_root
        res.tree_roots[(p, num)] = tree_root
        res.header_hashes[(p, num)] = hh

    # checkpoints
    notes = [p for k, p in frames if k == CHECKPOINT]
    if not notes:
        raise Problem("no checkpoint")
    vkeys = list(trusted_keys) if trusted_keys else keys
    if not vkeys:
        raise Problem("no key to check signatures with")
    prev = None
    signed_by: set[str] = set()
    last_heads: dict[int, tuple[int, bytes, bytes]] = {}
    for note in notes:
        body_b = open_note(note, vkeys)
        for k in keys:  # which bundle keys signed at least one note
            try:
                open_note(note, [k])
                signed_by.add(k)
            except Problem:
                pass
        c = parse_body(body_b)
        if c["origin"] != origin or c["suite"] != suite:
            raise Problem("checkpoint of another origin or suite")
        if prev is None:
            if c["prev"] is not None and c["seq"] == 0:
                raise Problem("checkpoint 0 names a predecessor")
        else:
            pseq, phash = prev
            if c["seq"] != pseq + 1 or c["prev"] != phash:
                raise Problem(f"checkpoint {c['seq']}: chain")
        prev = (c["seq"], H(suite, b"\x03" + body_b))
        for p, (size, root, hh) in c["heads"].items():
            if p in last_heads:
                osize, oroot, _ = last_heads[p]
                if size < osize or (size == osize and root != oroot):
                    raise Problem(f"checkpoint {c['seq']}: partition {p} not consistent")
            end = ends.get(p, {}).get(size)
            if end is None:
                if size > len(leaves.get(p, [])):
                    raise Problem(f"checkpoint {c['seq']}: covers leaves the bundle lacks")
                raise Problem(f"checkpoint {c['seq']}: size {size} is not a segment end")
            if end[0] != root:
                raise Problem(f"checkpoint {c['seq']}: partition {p} root")
            if end[1] != hh:
                raise Problem(f"checkpoint {c['seq']}: partition {p} header hash")
            last_heads[p] = (size, root, hh)
        res.checkpoints += 1
    unused = set(keys) - signed_by
    if unused:
        raise Problem("bundle carries a key that signed none of its checkpoints")


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
