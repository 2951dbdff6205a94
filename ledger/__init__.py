"""Pure ledger core: hashing, Merkle tree, segments, proofs, checkpoints, stores
(docs/ledger-format.md).

Never imports Kafka, faust or click. Auditors' scripts need only `verify_inclusion`,
`verify_consistency`, the suites `BLAKE3` / `SHA256` and `ProofError`; the byte formats are
in docs/ledger-format.md. `PostgresLedgerStore` lives in `wakeline.ledger.store_postgres`
(imported on demand so that psycopg is loaded only by those who use it).
"""

from __future__ import annotations

from .errors import ChainConflict, FormatError, ProofError, RootMismatch, SignatureError
from .hashing import (
    BLAKE3,
    CHECKPOINT_PREFIX,
    DEFAULT_SUITE,
    LEAF_PREFIX,
    NODE_PREFIX,
    SEGMENT_PREFIX,
    SHA256,
    HashSuite,
    suite_named,
)
from .merkle import MerkleTree, root_of
from .proofs import consistency_proof, inclusion_proof, verify_consistency, verify_inclusion
from .records import LedgerRecord, leaf_bytes, parse_leaf
from .segments import PartitionChain, SegmentHeader
from .store import Entry, LedgerStore
from .store_memory import MemoryLedgerStore
from .verify import EXIT_CODES, Finding, LedgerVerifier, VerifyReport


def __getattr__(name: str) -> object:
    if name == "PostgresLedgerStore":
        from .store_postgres import PostgresLedgerStore

        return PostgresLedgerStore
    if name in ("verify_bundle", "verify_store"):
        from . import sources

        return getattr(sources, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BLAKE3",
    "CHECKPOINT_PREFIX",
    "DEFAULT_SUITE",
    "EXIT_CODES",
    "LEAF_PREFIX",
    "NODE_PREFIX",
    "SEGMENT_PREFIX",
    "SHA256",
    "ChainConflict",
    "Entry",
    "Finding",
    "FormatError",
    "HashSuite",
    "LedgerRecord",
    "LedgerStore",
    "LedgerVerifier",
    "MemoryLedgerStore",
    "MerkleTree",
    "PartitionChain",
    "PostgresLedgerStore",
    "ProofError",
    "RootMismatch",
    "SegmentHeader",
    "SignatureError",
    "VerifyReport",
    "consistency_proof",
    "inclusion_proof",
    "leaf_bytes",
    "parse_leaf",
    "root_of",
    "suite_named",
    "verify_bundle",
    "verify_consistency",
    "verify_inclusion",
    "verify_store",
]
