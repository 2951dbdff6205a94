"""What the benchmarks share: the figures a benchmark reports, each beside its target, in one
shape for `make bench`; a transport that drops frames; a latency wait.

A benchmark builds `Figure`s and calls `emit(figures, path)`: `path` (its `--figures FILE`
option, given by bench/run.py) receives them as JSON; bench/run.py gathers every benchmark's
into one table and bench/results.json, with the machine they ran on.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class Figure:
    """One measured value; `target` with `better` says what it must reach (None: reported
    only). `better` is "lower" (value <= target), "higher" (value >= target) or "equal"."""

    measure: str
    value: float
    unit: str
    target: float | None = None
    better: Literal["lower", "higher", "equal"] = "lower"
    note: str = ""

    @property
    def ok(self) -> bool | None:
        if self.target is None:
            return None
        if self.better == "lower":
            return self.value <= self.target
        if self.better == "higher":
            return self.value >= self.target
        return self.value == self.target

    @property
    def target_text(self) -> str:
        if self.target is None:
            return ""
        sign = {"lower": "<=", "higher": ">=", "equal": "=="}[self.better]
        return f"{sign} {self.target:,.6g}"


def emit(figures: list[Figure], path: str | Path | None) -> int:
    """Write `figures` to `path` (when given) and return the exit code: 1 if a target is
    missed, else 0."""
    if path:
        rows = [{**asdict(f), "ok": f.ok} for f in figures]
        Path(path).write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if any(f.ok is False for f in figures) else 0


def machine() -> dict[str, object]:
    """What the figures ran on: cores and load."""
    return {"cpus": os.cpu_count(), "load_average": list(os.getloadavg())}


class Drop:
    """A Transport that keeps nothing: an SDK call's cost without the broker or the spool."""

    def send(self, topic, key, value, headers, *, wait):  # noqa: ANN001
        pass

    async def send_async(self, topic, key, value, headers, *, wait):  # noqa: ANN001
        pass

    def flush(self, timeout: float = 30.0) -> int:
        return 0

    def close(self, timeout: float = 30.0) -> int:
        return 0


def wait_for(check: Any, timeout: float, what: str, every: float) -> float:
    """The `perf_counter` time at which `check()` first held; exits after `timeout` s."""
    deadline = time.perf_counter() + timeout
    while True:
        if check():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise SystemExit(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)
