"""Run every benchmark and print one table: each figure beside its target (`make bench`).

    .venv/bin/python bench/run.py [--only NAME ...] [--quick] [--out bench/results.json]

Each benchmark runs in a process of its own (as `python bench/NAME.py --figures FILE`), one
after the other, on the stack `make bench` started; their own output goes to the terminal as
they run. The table at the end, and `bench/results.json`, hold every figure with its target,
whether it was met, and the machine it ran on (cores, load average before and after each
benchmark). `--quick` runs each with small counts, to check the harness, not to measure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: benchmark -> (its arguments for a real run, for a --quick run)
BENCHES: dict[str, tuple[list[str], list[str]]] = {
    "emit": ([], ["--calls", "2000", "--seconds", "1"]),
    "ledger": ([], ["--events", "20000", "--seconds", "3", "--only", "default"]),
    "verify": ([], ["--events", "50000"]),
    "compensate": ([], ["--runs", "5", "--plans", "1", "--actions", "10"]),
    "detect": ([], ["--backlog", "20000", "--runs", "5"]),
    "races": ([], ["--events", "20000"]),
    "policy": ([], ["--quick"]),
    "approvals": ([], ["--quick"]),
    "blast": ([], ["--quick"]),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="these benchmarks only")
    ap.add_argument("--quick", action="store_true", help="small counts: check, not measure")
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    args = ap.parse_args(argv)
    names = [n for n in BENCHES if (HERE / f"{n}.py").exists() and n in (args.only or BENCHES)]
    results: dict[str, object] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "quick": args.quick,
        "benchmarks": {},
    }
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            full, quick = BENCHES[name]
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(HERE / f"{name}.py"), *(quick if args.quick else full)]
            print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
            load_before = os.getloadavg()
            t0 = time.perf_counter()
            rc = subprocess.call([*cmd, "--figures", str(out)])
            entry: dict[str, object] = {
                "exit_code": rc,
                "seconds": round(time.perf_counter() - t0, 1),
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
                "figures": json.loads(out.read_text()) if out.exists() else [],
            }
            results["benchmarks"][name] = entry  # type: ignore[index]
            if rc != 0 and not entry["figures"]:
                failed.append(name)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(f"{'benchmark':<11} {'measure':<58} {'value':>18}  {'target':>20}  ok")
    missed = 0
    for name, entry in results["benchmarks"].items():  # type: ignore[attr-defined]
        if not entry["figures"]:
            print(f"{name:<11} {'(no figures: exit code ' + str(entry['exit_code']) + ')':<58}")
        for f in entry["figures"]:
            mark = {True: "yes", False: "NO", None: ""}[f["ok"]]
            missed += f["ok"] is False
            value = f"{f['value']:,.2f} {f['unit']}" if f["value"] < 1000 else (
                f"{f['value']:,.0f} {f['unit']}")  # fmt: skip
            target = _target(f)
            print(f"{name:<11} {f['measure'][:58]:<58} {value:>18}  {target:>20}  {mark}")
    cpus = results["machine"]["cpus"]  # type: ignore[index]
    print(f"\n{cpus} CPUs; load averages per benchmark and every figure in {args.out}")
    if missed or failed:
        print(f"targets missed: {missed}; benchmarks that failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


def _target(f: dict[str, object]) -> str:
    if f["target"] is None:
        return ""
    sign = {"lower": "<=", "higher": ">=", "equal": "=="}[str(f["better"])]
    return f"{sign} {f['target']:,.6g} {f['unit']}"


if __name__ == "__main__":
    sys.exit(main())
