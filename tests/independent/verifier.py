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


def body_event_id(value: bytes | None) -> str | None:
    """The first field of an event frame's Avro body (`event_id`, a string), or None."""
    if value is None or value[:2] != b"\xc3\x01":
        return None
    pos, shift, n = 10, 0, 0
    while pos < len(value):
        byte = value[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    else:
        return None
    length = (n >> 1) ^ -(n & 1)
    if length < 0 or pos + length > len(value):
        return None
    try:
        return value[pos : pos + length].decode("utf-8")
    except UnicodeDecodeError:
        return None


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
        if body_event_id(rec["value"]) != doc["event_id"]:
            raise Problem("the event id in the leaf's value is not the proof's event_id")
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
