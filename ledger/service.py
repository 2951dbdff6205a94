"""Operations the CLI and the ledger builder call: checkpoint, export, proof for an event."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Sequence
from typing import Any, BinaryIO

from .bundle import BundleWriter
from .checkpoints import Checkpoint, PartitionHead, Signer, open_note, parse_body, sign_note
from .checkpoints import split_note as _split
from .errors import ChainConflict, FormatError, ProofError, SignatureError
from .hashing import suite_named
from .proofs import consistency_proof, inclusion_proof, verify_consistency, verify_inclusion
from .records import parse_leaf
from .sources import store_identity
from .store import LedgerStore

log = logging.getLogger(__name__)

PROOF_FORMAT = "wakeline-proof/v1"


DEFAULT_ORIGIN = "wakeline/ledger"


def current_heads(store: LedgerStore) -> tuple[str | None, tuple[PartitionHead, ...]]:
    """(suite name, every partition's latest head) as the store holds them."""
    heads = []
    suite = None
    for p in store.partitions():
        last = store.last_segment(p)
        if last is None:
            continue
        h = last[0]
        suite = h.suite.name
        heads.append(PartitionHead(p, h.tree_size, h.tree_root, h.hash()))
    return suite, tuple(heads)


def sign_checkpoint(
    store: LedgerStore,
    signers: Signer | Sequence[Signer],
    *,
    origin: str | None = None,
    force: bool = False,
    now_ms: int | None = None,
    attempts: int = 3,
) -> bytes | None:
    """Sign and store a checkpoint of every partition's newest segment; return the note, or
    None when nothing changed since the latest checkpoint (unless `force`) or nothing is
    ledgered. Any process may sign: two racing for one sequence number are told apart by the
    store (ChainConflict) and the loser retries on top of the winner's checkpoint."""
    if isinstance(signers, Signer):
        signers = [signers]
    for attempt in range(attempts):
        latest = store.latest_checkpoint()
        prev = parse_body(_split(latest)[0]) if latest is not None else None
        suite, heads = current_heads(store)
        if suite is None:
            return None
        if prev is not None and not force and _same_heads(prev.heads, heads):
            return None
        cp = Checkpoint(
            origin=origin or (prev.origin if prev else DEFAULT_ORIGIN),
            suite=suite,
            seq=prev.seq + 1 if prev else 0,
            time_ms=now_ms if now_ms is not None else time.time_ns() // 1_000_000,
            prev=prev.hash() if prev else None,
            heads=heads,
        )
        note = sign_note(cp.body(), signers)
        try:
            store.add_checkpoint(note)
        except ChainConflict as e:
            log.info("checkpoint raced, retrying attempt=%d reason=%s", attempt, e)
            continue
        log.info(
            "checkpoint signed seq=%d partitions=%d leaves=%d",
            cp.seq, len(heads), sum(h.tree_size for h in heads),
        )  # fmt: skip
        return note
    raise ChainConflict(f"checkpoint lost the race {attempts} times in a row")


def _same_heads(a: tuple[PartitionHead, ...], b: tuple[PartitionHead, ...]) -> bool:
    return sorted(a, key=lambda h: h.partition) == sorted(b, key=lambda h: h.partition)


def export_bundle(
    store: LedgerStore,
    out: BinaryIO,
    *,
    public_keys: Sequence[str] = (),
    schemas: Sequence[tuple[bytes, str]] | None = None,
    origin: str | None = None,
) -> dict[str, int]:
    """Stream everything `store` holds into a bundle; returns counts written.

    `schemas` are (fingerprint, parsing canonical form) pairs; by default the current
    packaged schemas of wakeline.schemas.
    """
    store_origin, suite = store_identity(store)
    if schemas is None:
        schemas = _packaged_schemas()
    counts = {"segments": 0, "entries": 0, "checkpoints": 0}
    keys = _signing_keys(store, public_keys)
    with BundleWriter(out, origin or store_origin, suite) as w:
        for k in keys:
            w.key(k)
        for fp, pcf in schemas:
            w.schema(fp, pcf)
        for p in store.partitions():
            for h in store.headers(p):
                first = h.first_leaf_index
                entries = [
                    (e.leaf_hash, e.leaf) for e in store.entries(p, first, first + h.leaf_count)
                ]
                w.segment(h.to_bytes(), entries)
                counts["segments"] += 1
                counts["entries"] += len(entries)
        for note in store.checkpoints():
            w.checkpoint(note)
            counts["checkpoints"] += 1
    return counts


def _signing_keys(store: LedgerStore, public_keys: Sequence[str]) -> list[str]:
    """Those of `public_keys` that signed at least one of the store's checkpoints: a bundle
    carries exactly the keys its notes are signed with (docs/ledger-format.md §7)."""
    from .checkpoints import parse_vkey

    pending = {k: parse_vkey(k) for k in public_keys}
    used: list[str] = []
    for note in store.checkpoints():
        if not pending:
            break
        for text, v in list(pending.items()):
            try:
                open_note(note, [v])
            except (SignatureError, FormatError):
                continue
            used.append(text)
            del pending[text]
    return [k for k in public_keys if k in used]


def _packaged_schemas() -> list[tuple[bytes, str]]:
    try:
        from wakeline.schemas import packaged_schemas
    except ImportError:
        return []
    return [(i.fingerprint, i.canonical_form) for i in packaged_schemas().values()]


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def event_proof(store: LedgerStore, event_id: str) -> dict[str, Any]:
    """A self-contained inclusion proof of one event against the newest signed checkpoint
    that covers it (docs/ledger-format.md §Event proof)."""
    entry = store.entry_by_event_id(event_id)
    if entry is None:
        raise ProofError(f"event {event_id} is not in the ledger")
    note = None
    size = None
    for candidate in store.checkpoints():
        cp = parse_body(_split(candidate)[0])
        head = cp.head(entry.partition)
        if head is not None and head.tree_size > entry.leaf_index:
            note, size, root = candidate, head.tree_size, head.root  # newest covering one
    if note is None or size is None:
        raise ProofError(
            f"event {event_id} (partition {entry.partition} leaf {entry.leaf_index}) is not yet "
            "covered by a signed checkpoint; run `wakeline ledger checkpoint`"
        )
    hashes = store.leaf_hashes(entry.partition, size)
    suite = parse_body(_split(note)[0]).suite
    proof = inclusion_proof(suite_named(suite), hashes, entry.leaf_index, size)
    return {
        "format": PROOF_FORMAT,
        "suite": suite,
        "event_id": event_id,
        "partition": entry.partition,
        "offset": entry.offset,
        "leaf_index": entry.leaf_index,
        "tree_size": size,
        "leaf": _b64(entry.leaf),
        "leaf_hash": _b64(entry.leaf_hash),
        "root": _b64(root),
        "inclusion_proof": [_b64(h) for h in proof],
        "checkpoint": note.decode("utf-8"),
    }


def check_event_proof(doc: dict[str, Any], trusted_keys: Sequence[str]) -> None:
    """Check a document made by `event_proof`; raises ProofError, SignatureError or
    FormatError on any failure."""
    from .checkpoints import parse_vkey

    if doc.get("format") != PROOF_FORMAT:
        raise FormatError(f"proof format {doc.get('format')!r}, want {PROOF_FORMAT!r}")
    try:
        leaf = base64.b64decode(doc["leaf"], validate=True)
        proof = [base64.b64decode(h, validate=True) for h in doc["inclusion_proof"]]
        body, _ = open_note(
            doc["checkpoint"].encode("utf-8"), [parse_vkey(k) for k in trusted_keys]
        )
        index = doc["leaf_index"]
        if type(index) is not int:
            raise TypeError(f"leaf_index is {type(index).__name__}, want an integer")
    except (KeyError, ValueError, TypeError) as e:
        raise FormatError(f"proof document is malformed: {e}") from e
    cp = parse_body(body)
    suite = suite_named(cp.suite)
    record = parse_leaf(leaf)
    if record.event_id != doc.get("event_id"):
        raise ProofError(f"leaf holds event {record.event_id}, proof is for {doc.get('event_id')}")
    head = cp.head(record.partition)
    if head is None:
        raise ProofError(f"checkpoint has no partition {record.partition}")
    leaf_hash = suite.leaf_hash(leaf)
    verify_inclusion(suite, index, head.tree_size, leaf_hash, proof, head.root)
    # Every field a reader might quote must be what the signed note and the leaf say: a
    # document that verifies must not be able to show a false offset, root or size.
    claimed = {
        "suite": (doc.get("suite"), cp.suite),
        "partition": (doc.get("partition"), record.partition),
        "offset": (doc.get("offset"), record.offset),
        "tree_size": (doc.get("tree_size"), head.tree_size),
        "root": (doc.get("root"), _b64(head.root)),
        "leaf_hash": (doc.get("leaf_hash"), _b64(leaf_hash)),
    }
    for field, (found, want) in claimed.items():
        if found != want:
            raise ProofError(f"proof field {field} is {found!r}, the signed data says {want!r}")


CONSISTENCY_FORMAT = "wakeline-consistency/v1"


def checkpoint_consistency(store: LedgerStore, old_note: bytes) -> dict[str, Any]:
    """Proofs that the checkpoint an auditor holds (`old_note`) is a prefix of the store's
    newest one: per partition, an RFC 6962 consistency proof between the two tree sizes."""
    new_note = store.latest_checkpoint()
    if new_note is None:
        raise ProofError("the ledger has no checkpoint yet")
    old = parse_body(_split(old_note)[0])
    new = parse_body(_split(new_note)[0])
    suite = suite_named(new.suite)
    parts = []
    for head in old.heads:
        now = new.head(head.partition)
        if now is None:
            raise ProofError(f"newest checkpoint has no partition {head.partition}")
        proof: list[bytes] = []
        if 0 < head.tree_size < now.tree_size:
            hashes = store.leaf_hashes(head.partition, now.tree_size)
            proof = consistency_proof(suite, hashes, head.tree_size, now.tree_size)
        parts.append(
            {
                "partition": head.partition,
                "size1": head.tree_size,
                "size2": now.tree_size,
                "proof": [_b64(h) for h in proof],
            }
        )
    return {
        "format": CONSISTENCY_FORMAT,
        "old_checkpoint": old_note.decode("utf-8"),
        "new_checkpoint": new_note.decode("utf-8"),
        "partitions": parts,
    }


def check_checkpoint_consistency(doc: dict[str, Any], trusted_keys: Sequence[str]) -> None:
    """Check a document made by `checkpoint_consistency`: both notes signed by a trusted
    key, same origin and suite, and every partition's consistency proof verifies."""
    from .checkpoints import parse_vkey

    if doc.get("format") != CONSISTENCY_FORMAT:
        raise FormatError(f"format {doc.get('format')!r}, want {CONSISTENCY_FORMAT!r}")
    keys = [parse_vkey(k) for k in trusted_keys]
    try:
        old = parse_body(open_note(doc["old_checkpoint"].encode("utf-8"), keys)[0])
        new = parse_body(open_note(doc["new_checkpoint"].encode("utf-8"), keys)[0])
        parts = {int(p["partition"]): p for p in doc["partitions"]}
        proofs = {
            n: [base64.b64decode(h, validate=True) for h in p["proof"]] for n, p in parts.items()
        }
    except (KeyError, ValueError, TypeError) as e:
        raise FormatError(f"consistency document is malformed: {e}") from e
    if (old.origin, old.suite) != (new.origin, new.suite):
        raise ProofError("the two checkpoints are of different logs or suites")
    suite = suite_named(new.suite)
    for head in old.heads:
        now = new.head(head.partition)
        if now is None or head.partition not in parts:
            raise ProofError(f"partition {head.partition} is missing from the newer checkpoint")
        if now.tree_size < head.tree_size:
            raise ProofError(
                f"partition {head.partition} shrank: {head.tree_size} -> {now.tree_size}"
            )
        listed = parts[head.partition]
        if (listed.get("size1"), listed.get("size2")) != (head.tree_size, now.tree_size):
            raise ProofError(
                f"partition {head.partition}: the document says sizes "
                f"{listed.get('size1')!r} -> {listed.get('size2')!r}, the signed notes say "
                f"{head.tree_size} -> {now.tree_size}"
            )
        if head.tree_size == 0:
            continue
        verify_consistency(
            suite, head.tree_size, now.tree_size, proofs[head.partition], head.root, now.root
        )
