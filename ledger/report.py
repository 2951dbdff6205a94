"""The verifier's report: findings with a verdict, a check name and where
(docs/ledger-format.md §9).

Verdicts, worst first: tampered, unusable, incomplete; none means sound. A `warning` finding
names a position worth a look and never changes the verdict. Exit codes: 0 sound,
10 tampered, 11 incomplete, 12 unusable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SOUND, TAMPERED, INCOMPLETE, UNUSABLE = "sound", "tampered", "incomplete", "unusable"
WARNING = "warning"
EXIT_CODES = {SOUND: 0, TAMPERED: 10, INCOMPLETE: 11, UNUSABLE: 12}
SEVERITY = {WARNING: 0, SOUND: 0, INCOMPLETE: 1, UNUSABLE: 2, TAMPERED: 3}
MAX_FINDINGS = 100
MAX_WARNINGS = 20  # warning findings listed; the rest are counted in the stats


@dataclass(frozen=True)
class Finding:
    verdict: str
    check: str
    message: str
    partition: int | None = None
    segment: int | None = None
    leaf_index: int | None = None
    offset: int | None = None
    event_id: str | None = None
    field: str | None = None
    expected: str | None = None
    found: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        where = [
            f"{k} {v}"
            for k, v in (
                ("partition", self.partition),
                ("segment", self.segment),
                ("leaf", self.leaf_index),
                ("offset", self.offset),
                ("event", self.event_id),
                ("field", self.field),
            )
            if v is not None
        ]
        text = f"{self.verdict}: [{self.check}] {self.message}"
        if where:
            text += " (" + ", ".join(where) + ")"
        if self.expected is not None or self.found is not None:
            text += f"; expected {self.expected}, found {self.found}"
        return text


@dataclass
class VerifyReport:
    verdict: str = SOUND
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    origin: str | None = None
    suite: str | None = None
    trusted_keys: list[str] = field(default_factory=list)
    keys_pinned: bool = False
    suppressed: int = 0

    @property
    def first(self) -> Finding | None:
        """The first finding of the worst kind: what the auditor should look at first.

        Integrity findings outrank pairing and approval findings of the same kind: a deleted
        leaf also orphans a result, but the broken commitment is the cause."""
        worst = [f for f in self.findings if f.verdict == self.verdict]
        if not worst:
            return None
        return min(worst, key=lambda f: f.check.startswith(("pairing.", "approval.")))

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    @property
    def ok(self) -> bool:
        return self.verdict == SOUND

    def checks(self) -> list[str]:
        return [f.check for f in self.findings]

    def to_dict(self) -> dict[str, Any]:
        first = self.first
        return {
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "first": first.to_dict() if first else None,
            "findings": [f.to_dict() for f in self.findings],
            "findings_not_listed": self.suppressed,
            "warnings": list(self.warnings),
            "stats": dict(self.stats),
            "origin": self.origin,
            "suite": self.suite,
            "trusted_keys": list(self.trusted_keys),
            "keys_pinned": self.keys_pinned,
        }
