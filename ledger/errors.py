"""Typed ledger errors. Messages say got/want; `RootMismatch` carries both hashes."""

from __future__ import annotations

from wakeline.errors import LedgerError


class ProofError(LedgerError):
    """An inclusion or consistency proof does not verify."""


class RootMismatch(ProofError):
    """A computed root differs from the expected one."""

    def __init__(self, expected: bytes, calculated: bytes, what: str = "root") -> None:
        super().__init__(
            f"{what} mismatch: calculated {calculated.hex()}, expected {expected.hex()}"
        )
        self.expected = expected
        self.calculated = calculated


class FormatError(LedgerError):
    """Bytes that should hold a leaf, header, note or bundle frame do not parse."""


class SignatureError(LedgerError):
    """A signed note carries no valid signature by a trusted key, or a bad one."""


class ChainConflict(LedgerError):
    """A segment or checkpoint does not extend what the store already holds."""
