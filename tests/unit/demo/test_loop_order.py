"""The demo's check that a quarantine refunded a loop's charges each once, newest first."""

from __future__ import annotations

import pytest

from wakeline.demo.detection import _late

CHARGES = ["c1", "c2", "c3", "c4", "c5"]  # oldest first


@pytest.mark.parametrize(
    ("undone", "late"),
    [
        (["c5", "c4", "c3", "c2", "c1"], 0),  # the plan held every charge
        (["c3", "c2", "c1", "c5", "c4"], 2),  # two joined it later, newest first
        (["c3", "c2", "c1", "c4", "c5"], 2),  # ... one replan each
    ],
)
def test_newest_first_with_late_calls(undone: list[str], late: int) -> None:
    assert _late(CHARGES, undone) == late


@pytest.mark.parametrize(
    "undone",
    [
        ["c4", "c5", "c3", "c2", "c1"],  # an older charge before a newer one of the plan
        ["c5", "c4", "c3", "c2"],  # one never refunded
        ["c5", "c4", "c3", "c2", "c1", "c1"],  # one refunded twice
        ["c2", "c1", "c5", "c3", "c4"],  # a late batch out of order
    ],
)
def test_anything_else_is_refused(undone: list[str]) -> None:
    assert _late(CHARGES, undone) is None
