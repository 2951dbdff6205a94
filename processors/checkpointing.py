"""Signed checkpoints over every partition's latest segment, on an interval and on demand.

A checkpoint reads only what PostgreSQL holds, so any worker may sign one; two workers
racing for the same sequence number are told apart by the store (ChainConflict), and the
loser retries on top of the winner's checkpoint. Nothing is signed when no partition moved.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

from wakeline.infra.settings import StackSettings
from wakeline.ledger.checkpoints import (
    Checkpoint,
    PartitionHead,
    Signer,
    ensure_signer,
    parse_body,
    sign_note,
    split_note,
)
from wakeline.ledger.errors import ChainConflict
from wakeline.ledger.store import LedgerStore

log = logging.getLogger(__name__)

DEFAULT_ORIGIN = "wakeline/ledger"
DEFAULT_KEY_NAME = "wakeline-ledger"


def signing_key_path(env: Mapping[str, str] | None = None) -> Path:
    """WAKELINE_SIGNING_KEY, else `<WAKELINE_HOME>/keys/ledger.key` (created on first use)."""
    env = os.environ if env is None else env
    if env.get("WAKELINE_SIGNING_KEY"):
        return Path(env["WAKELINE_SIGNING_KEY"]).expanduser()
    return StackSettings.from_env(env).home / "keys" / "ledger.key"


def load_signer(path: Path, name: str = DEFAULT_KEY_NAME) -> Signer:
    return ensure_signer(path, name)


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
    signer: Signer,
    *,
    origin: str | None = None,
    force: bool = False,
    now_ms: int | None = None,
    attempts: int = 3,
) -> bytes | None:
    """Sign and store a checkpoint of what the store holds; return the note, or None when
    nothing changed since the latest checkpoint (unless `force`) or nothing is ledgered."""
    for attempt in range(attempts):
        latest = store.latest_checkpoint()
        prev = parse_body(split_note(latest)[0]) if latest is not None else None
        suite, heads = current_heads(store)
        if suite is None:
            return None
        if prev is not None and not force and _same(prev.heads, heads):
            return None
        cp = Checkpoint(
            origin=origin or (prev.origin if prev else DEFAULT_ORIGIN),
            suite=suite,
            seq=prev.seq + 1 if prev else 0,
            time_ms=now_ms if now_ms is not None else time.time_ns() // 1_000_000,
            prev=prev.hash() if prev else None,
            heads=heads,
        )
        note = sign_note(cp.body(), [signer])
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


def _same(a: tuple[PartitionHead, ...], b: tuple[PartitionHead, ...]) -> bool:
    return sorted(a, key=lambda h: h.partition) == sorted(b, key=lambda h: h.partition)
