"""Pure ledger core: hashing, Merkle tree, segments, proofs, checkpoints, stores (DESIGN §5).

Never imports Kafka or faust. Auditors' scripts need only `verify_inclusion`,
`verify_consistency`, the suites `BLAKE3` / `SHA256` and `ProofError`.
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

__all__ = [
    "BLAKE3",
    "CHECKPOINT_PREFIX",
    "DEFAULT_SUITE",
    "LEAF_PREFIX",
    "NODE_PREFIX",
    "SEGMENT_PREFIX",
    "SHA256",
    "ChainConflict",
    "FormatError",
    "HashSuite",
    "MerkleTree",
    "ProofError",
    "RootMismatch",
    "SignatureError",
    "consistency_proof",
    "inclusion_proof",
    "root_of",
    "suite_named",
    "verify_consistency",
    "verify_inclusion",
]
