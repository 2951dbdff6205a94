"""Every RFC 6962 vector of tests/vectors/rfc6962 against the SHA256 suite.

The vectors live in the repository (origin and licence: tests/vectors/rfc6962/README.md); a
checkout without them fails here, it never passes with zero cases.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from wakeline.ledger import SHA256, ProofError, verify_consistency, verify_inclusion

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "rfc6962"


def _cases(kind: str) -> list[Path]:
    # no vectors: one case naming the missing file, so the run fails instead of skipping
    return sorted((VECTORS / kind).rglob("*.json")) or [VECTORS / kind / "missing.json"]


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value or "")


def _proof(value: list[str] | None) -> list[bytes]:
    return [_b64(p) for p in value or []]


def test_vectors_are_present() -> None:
    # missing vectors must fail loudly, not pass with zero (skipped) parametrized cases
    assert VECTORS.is_dir(), f"RFC 6962 vectors missing: {VECTORS}"
    assert len(_cases("inclusion")) > 50
    assert len(_cases("consistency")) > 50


@pytest.mark.parametrize("path", _cases("inclusion"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_inclusion_vector(path: Path) -> None:
    case = json.loads(path.read_text())
    args = (
        SHA256,
        case["leafIdx"],
        case["treeSize"],
        _b64(case["leafHash"]),
        _proof(case["proof"]),
        _b64(case["root"]),
    )
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        assert verify_inclusion(*args) is None


@pytest.mark.parametrize("path", _cases("consistency"), ids=lambda p: str(p.relative_to(VECTORS)))
def test_consistency_vector(path: Path) -> None:
    case = json.loads(path.read_text())
    args = (
        SHA256,
        case["size1"],
        case["size2"],
        _proof(case["proof"]),
        _b64(case["root1"]),
        _b64(case["root2"]),
    )
    if case["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        assert verify_consistency(*args) is None
