"""Checkpoints: every partition's (tree size, root, header hash), as a C2SP signed note.

Note text = body + "\\n" + signature lines. The body (docs/ledger-format.md §Checkpoint):

    <origin>
    wakeline-checkpoint/v1
    suite <blake3|sha256>
    seq <n>                       0, 1, 2, ... one per checkpoint of this ledger
    time <ms since epoch>
    prev <base64 of the previous checkpoint's hash, or "-" for seq 0>
    <partition> <tree size> <base64 tree root> <base64 segment header hash>   one per partition

Checkpoint hash = H(CHECKPOINT_PREFIX || body). Signature lines follow the signed-note
format: "— <key name> base64(4-byte key id || Ed25519 signature of the body)". The key id is
SHA-256(name || "\\n" || 0x01 || public key)[:4], as in golang.org/x/mod/sumdb/note, whose
verifier key strings ("name+hexid+base64(0x01||pubkey)") and signer key strings
("PRIVATE+KEY+name+hexid+base64(0x01||seed)") are used unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from .errors import FormatError, SignatureError
from .hashing import CHECKPOINT_PREFIX, HASH_SIZE, SUITES, HashSuite, suite_named

FORMAT_LINE = "wakeline-checkpoint/v1"
ALG_ED25519 = 1
SIG_PREFIX = "\u2014 "  # em dash and a space


@dataclass(frozen=True, slots=True)
class PartitionHead:
    partition: int
    tree_size: int
    root: bytes
    header_hash: bytes


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    suite: str
    seq: int
    time_ms: int
    prev: bytes | None
    heads: tuple[PartitionHead, ...]

    def body(self) -> bytes:
        lines = [
            self.origin,
            FORMAT_LINE,
            f"suite {self.suite}",
            f"seq {self.seq}",
            f"time {self.time_ms}",
            "prev " + (_b64(self.prev) if self.prev is not None else "-"),
        ]
        for h in sorted(self.heads, key=lambda h: h.partition):
            lines.append(f"{h.partition} {h.tree_size} {_b64(h.root)} {_b64(h.header_hash)}")
        return ("\n".join(lines) + "\n").encode("utf-8")

    def hash(self) -> bytes:
        return checkpoint_hash(suite_named(self.suite), self.body())

    def head(self, partition: int) -> PartitionHead | None:
        for h in self.heads:
            if h.partition == partition:
                return h
        return None


def checkpoint_hash(suite: HashSuite, body: bytes) -> bytes:
    return suite.prefixed(CHECKPOINT_PREFIX, body)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: str, what: str, size: int | None = None) -> bytes:
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise FormatError(f"{what} is not base64: {s!r}") from e
    if _b64(raw) != s:
        raise FormatError(f"{what} is not canonical base64: {s!r}")
    if size is not None and len(raw) != size:
        raise FormatError(f"{what} has {len(raw)} bytes, want {size}")
    return raw


def _uint(s: str, what: str) -> int:
    if not s.isdigit() or (len(s) > 1 and s[0] == "0") or not s.isascii():
        raise FormatError(f"{what} is not a canonical decimal number: {s!r}")
    return int(s)


def parse_body(body: bytes) -> Checkpoint:
    """Parse a checkpoint body strictly: re-encoding it must give the same bytes."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError("checkpoint body is not UTF-8") from e
    if not text.endswith("\n"):
        raise FormatError("checkpoint body does not end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 6:
        raise FormatError(f"checkpoint body has {len(lines)} lines, want at least 6")
    origin, fmt = lines[0], lines[1]
    if fmt != FORMAT_LINE:
        raise FormatError(f"checkpoint format line is {fmt!r}, want {FORMAT_LINE!r}")
    fields = {}
    for line, key in zip(lines[2:6], ("suite", "seq", "time", "prev"), strict=True):
        name, _, value = line.partition(" ")
        if name != key:
            raise FormatError(f"checkpoint line {line!r}, want {key!r}")
        fields[key] = value
    if fields["suite"] not in SUITES:
        raise FormatError(f"checkpoint names unknown suite {fields['suite']!r}")
    prev = None if fields["prev"] == "-" else _unb64(fields["prev"], "prev hash", HASH_SIZE)
    heads = []
    for line in lines[6:]:
        parts = line.split(" ")
        if len(parts) != 4:
            raise FormatError(f"checkpoint partition line {line!r} has {len(parts)} fields, want 4")
        heads.append(
            PartitionHead(
                _uint(parts[0], "partition"),
                _uint(parts[1], "tree size"),
                _unb64(parts[2], "tree root", HASH_SIZE),
                _unb64(parts[3], "header hash", HASH_SIZE),
            )
        )
    cp = Checkpoint(
        origin,
        fields["suite"],
        _uint(fields["seq"], "seq"),
        _uint(fields["time"], "time"),
        prev,
        tuple(heads),
    )
    if cp.body() != body:
        raise FormatError("checkpoint body is not in canonical form (order, spacing, numbers)")
    return cp


# ------------------------------------------------------------------------------- keys


def _key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + public).digest()[:4]


def _check_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise FormatError(f"key name {name!r} must be non-empty, without spaces or '+'")


@dataclass(frozen=True)
class Verifier:
    name: str
    key_id: bytes
    public: bytes

    def vkey(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{_b64(bytes([ALG_ED25519]) + self.public)}"

    def verify(self, body: bytes, sig: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(sig, body)
        except InvalidSignature:
            return False
        return True


def parse_vkey(text: str) -> Verifier:
    """A verifier key string `name+hexid+base64(0x01||pubkey)`."""
    parts = text.strip().split("+", 2)  # base64 may itself hold '+'
    if len(parts) != 3:
        raise FormatError(f"verifier key {text!r} is not name+id+key")
    name, hex_id, b64 = parts
    _check_name(name)
    raw = _unb64(b64, "verifier key")
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise FormatError("verifier key is not an Ed25519 key (want 0x01 and 32 bytes)")
    public = raw[1:]
    if len(hex_id) != 8 or hex_id != _key_id(name, public).hex():
        raise FormatError(f"verifier key id {hex_id!r} does not match its name and key")
    return Verifier(name, bytes.fromhex(hex_id), public)


@dataclass(frozen=True)
class Signer:
    name: str
    private: Ed25519PrivateKey

    @property
    def public(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, _key_id(self.name, self.public), self.public)

    def skey(self) -> str:
        seed = self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        kid = _key_id(self.name, self.public).hex()
        return f"PRIVATE+KEY+{self.name}+{kid}+{_b64(bytes([ALG_ED25519]) + seed)}"

    def signature_line(self, body: bytes) -> str:
        sig = self.private.sign(body)
        return f"{SIG_PREFIX}{self.name} {_b64(_key_id(self.name, self.public) + sig)}\n"


def generate_signer(name: str) -> Signer:
    _check_name(name)
    return Signer(name, Ed25519PrivateKey.generate())


def parse_skey(text: str) -> Signer:
    parts = text.strip().split("+", 4)
    if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
        raise FormatError("signing key is not PRIVATE+KEY+name+id+key")
    name, hex_id, b64 = parts[2:]
    _check_name(name)
    raw = _unb64(b64, "signing key")
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise FormatError("signing key is not an Ed25519 key")
    signer = Signer(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
    if signer.verifier.key_id.hex() != hex_id:
        raise FormatError("signing key id does not match its name and key")
    return signer


def load_signer(path: Path) -> Signer:
    try:
        return parse_skey(path.read_text())
    except OSError as e:
        raise FormatError(f"cannot read signing key {path}: {e.strerror}") from e


def ensure_signer(path: Path, name: str) -> Signer:
    """Load the signing key at `path`, generating it (mode 0600) on first use."""
    if path.exists():
        return load_signer(path)
    signer = generate_signer(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(signer.skey() + "\n")
    path.with_name(path.name + ".pub").write_text(signer.verifier.vkey() + "\n")
    return signer


# ------------------------------------------------------------------------------- notes


def sign_note(body: bytes, signers: Iterable[Signer]) -> bytes:
    signers = list(signers)
    if not signers:
        raise SignatureError("a note needs at least one signer")
    return body + b"\n" + "".join(s.signature_line(body) for s in signers).encode("utf-8")


def split_note(note: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(body, [(key name, keyid||sig)]) of a signed note; FormatError if malformed."""
    try:
        text = note.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError("note is not UTF-8") from e
    if any(c < " " and c != "\n" for c in text):
        raise FormatError("note holds control characters")
    i = text.rfind("\n\n")
    if i < 0:
        raise FormatError("note has no blank line before its signatures")
    body, sigs = text[: i + 1], text[i + 2 :]
    if not sigs.endswith("\n"):
        raise FormatError("note does not end with a newline")
    out = []
    for line in sigs[:-1].split("\n"):
        if not line.startswith(SIG_PREFIX):
            raise FormatError(f"signature line {line!r} does not start with an em dash")
        name, sep, b64 = line[len(SIG_PREFIX) :].partition(" ")
        if not sep or " " in b64:
            raise FormatError(f"signature line {line!r} is not '— name signature'")
        raw = _unb64(b64, "signature")
        if len(raw) < 5:
            raise FormatError("signature is too short")
        out.append((name, raw))
    return body.encode("utf-8"), out


def open_note(note: bytes, verifiers: Iterable[Verifier]) -> tuple[bytes, list[str]]:
    """Verify a signed note; return (body, names of the trusted keys that signed it).

    Signatures by unknown keys are ignored (key rotation, witnesses); a signature by a known
    key that does not verify, or no known signature at all, raises SignatureError.
    """
    body, sigs = split_note(note)
    known = {(v.name, v.key_id): v for v in verifiers}
    signed_by = []
    for name, raw in sigs:
        v = known.get((name, raw[:4]))
        if v is None:
            continue
        if not v.verify(body, raw[4:]):
            raise SignatureError(f"signature by {name} ({raw[:4].hex()}) does not verify")
        signed_by.append(name)
    if not signed_by:
        names = ", ".join(f"{n}+{r[:4].hex()}" for n, r in sigs)
        raise SignatureError(f"no signature by a trusted key (signed by: {names})")
    return body, signed_by
