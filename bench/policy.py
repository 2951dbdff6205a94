"""What a policy decision costs per tool call in the SDK, for a 100-rule policy, offline.

1. `PolicyGate.decide` on a `GateCall` (what the Emitter runs before every call): p50/p99
   of single calls, in µs, for a call allowed by the last rule of the file, one denied by
   an argument predicate, and one no rule matches (the default, deny); a denial builds its
   exception, hence the difference. The plain top-to-bottom scan (`Policy.trace`, what
   `wakeline policy explain` uses) of the first for comparison.
2. Whole `ctx.call` of a relaxed tool through a transport that drops the frames: the
   engine's 100 rules against allow-all (no policy), p50 per call and the difference.

Target: decision p50 <= 10 µs for 100 rules. Options: --calls N, --rules R.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

from figures import Drop, Figure, emit  # bench/figures.py: the script's own folder is on sys.path

from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.policy.engine import Policy
from wakeline.producers import Emitter, ToolRegistry
from wakeline.producers.gates import GateCall, PolicyGate, PolicyRequest
from wakeline.producers.registry import ToolSpec
from wakeline.producers.workflow import NOTHING

TARGET_P50_US = 10.0


def policy_text(n: int) -> str:
    """`n` rules like a real file: exact tool names, `svc.*` prefixes, other globs, and
    catch-alls with conditions on who asks and the arguments; some in shadow mode."""
    out = ['# First match wins: rules are read top to bottom.\n[policy]\ndefault = "deny"\n']
    for i in range(n):
        kind = i % 10
        lines = [f'[[rule]]\nname = "r{i}"']
        if kind < 4:
            lines.append(f'tool = "svc{i}.exact"')
        elif kind < 8:
            lines.append(f'tool = "svc{i}.*"')
            lines.append('impact = ">=medium"')
        elif kind == 8:
            lines.append(f'tool = "*.op{i}"')
        else:
            lines.append(f'agent = "team{i}-*"')
            lines.append(f'args = ["amount > {i * 10}", \'currency in ["USD","EUR"]\']')
        if i % 7 == 3:
            lines.append('mode = "shadow"')
        lines.append(f'outcome = "{"allow" if i % 3 else "deny"}"')
        out.append("\n".join(lines) + "\n")
    # what the benchmark's calls hit, at the end of the file
    out.append(
        '[[rule]]\nname = "payments-large"\ntool = "pay.charge"\n'
        'args = ["amount > 500", \'currency in ["USD","EUR"]\']\noutcome = "deny"\n'
    )
    out.append('[[rule]]\nname = "payments"\ntool = "pay.*"\noutcome = "allow"\n')
    return "\n".join(out)


def gate_call(spec: ToolSpec, args: dict) -> GateCall:
    return GateCall(spec, args, "{}", b"\0" * 32, "wf-1", "run-1", "billing-bot",
                    "alice@example.com", "acme", "prod", NOTHING)  # fmt: skip


def percentiles(samples: list[int]) -> tuple[float, float]:
    samples.sort()
    p50 = samples[len(samples) // 2] / 1000
    p99 = samples[int(len(samples) * 0.99)] / 1000
    return p50, p99


def time_calls(fn, calls: int) -> tuple[float, float]:  # noqa: ANN001
    for _ in range(min(calls, 2000)):  # warm the candidate cache and the branch predictors
        fn()
    clock = time.perf_counter_ns
    samples = []
    gc.disable()
    try:
        for _ in range(calls):
            t0 = clock()
            fn()
            samples.append(clock() - t0)
    finally:
        gc.enable()
    return percentiles(samples)


def clock_overhead_us() -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(20_000):
        t0 = clock()
        samples.append(clock() - t0)
    return statistics.median(samples) / 1000


def whole_calls(policy: Policy | None, calls: int) -> tuple[float, float]:
    registry = ToolRegistry()
    registry.declare("pay.charge", reversibility="compensable", impact="high", durability="relaxed")
    kafka = KafkaSettings(bootstrap="127.0.0.1:1", topics=Topics("bench."))
    with tempfile.TemporaryDirectory() as tmp:
        kw = {} if policy is None else {"policy": policy}
        emitter = Emitter(kafka, spool_dir=Path(tmp) / "spool", registry=registry,
                          quarantine_gate=False, loop_guard=False, publish_schemas=False,
                          transport=Drop(), **kw)  # fmt: skip
        ctx = emitter.workflow("wf-bench", agent_id="billing-bot", principal="alice@example.com")
        args = {"amount": 20, "currency": "USD"}

        def one() -> None:
            ctx.call("pay.charge", noop, args)

        try:
            return time_calls(one, calls)
        finally:
            emitter.close(5)


def noop(**_: object) -> None:
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--rules", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="few calls: check, not measure")
    parser.add_argument("--figures", help="write the figures for bench/run.py to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls = 2_000

    policy = Policy.parse(policy_text(args.rules - 2), "bench")
    assert len(policy.rules) == args.rules
    gate = PolicyGate(policy)
    spec = ToolSpec("pay.charge", "compensable", "high")
    late = gate_call(spec, {"amount": 20, "currency": "USD"})
    large = gate_call(spec, {"amount": 900, "currency": "EUR"})
    nothing = gate_call(ToolSpec("other.tool", "irreversible", "high"), {"amount": 1})
    assert gate.decide(late).decision.rule == "payments"  # type: ignore[union-attr]
    assert gate.decide(large).decision.rule == "payments-large"  # type: ignore[union-attr]
    assert gate.decide(nothing).decision.rule == "default"  # type: ignore[union-attr]
    request = PolicyRequest(spec, late.args, "{}", b"", "wf-1", "billing-bot",
                            "alice@example.com", "acme", "prod")  # fmt: skip

    rows: list[tuple[str, float, float, str]] = []
    for name, call in (("decide: allow, last rule", late), ("decide: deny, predicate", large),
                       ("decide: default (deny)", nothing)):  # fmt: skip
        p50, p99 = time_calls(lambda c=call: gate.decide(c), args.calls)
        rows.append((name, p50, p99, "PolicyGate.decide on a GateCall"))
    p50, p99 = time_calls(lambda: policy(request), args.calls)
    rows.append(("engine alone: last rule", p50, p99, "Policy(request), no gate"))
    p50, p99 = time_calls(lambda: policy.trace(request), max(args.calls // 10, 1000))
    rows.append(("linear scan: last rule", p50, p99, "Policy.trace, for comparison"))
    base50, base99 = whole_calls(None, args.calls // 2)
    rows.append(("ctx.call allow-all", base50, base99, "relaxed; frames dropped"))
    pol50, pol99 = whole_calls(policy, args.calls // 2)
    rows.append(("ctx.call 100 rules", pol50, pol99, f"{pol50 - base50:+.1f} µs p50 vs allow-all"))

    print(f"wakeline policy decision benchmark  rules={len(policy.rules)}  calls={args.calls}")
    print(f"(per-call timing; the clock itself reads ~{clock_overhead_us():.2f} µs)")
    print(f"{'measure':<26} {'p50 µs':>8} {'p99 µs':>8}  {'target':>8}  {'ok':<4} note")
    print("-" * 84)
    for name, p50, p99, note in rows:
        target = name.startswith("decide")
        tgt = f"<= {TARGET_P50_US:g}" if target else ""
        ok = ("yes" if p50 <= TARGET_P50_US else "NO") if target else ""
        print(f"{name:<26} {p50:>8.2f} {p99:>8.2f}  {tgt:>8}  {ok:<4} {note}")
    figures = []
    for name, p50, p99, _note in rows:
        decide = name.startswith("decide")
        figures.append(Figure(f"policy {name}, p50 ({len(policy.rules)} rules)", p50, "µs",
                              TARGET_P50_US if decide else None))  # fmt: skip
        figures.append(Figure(f"policy {name}, p99 ({len(policy.rules)} rules)", p99, "µs"))
    return emit(figures, args.figures)


if __name__ == "__main__":
    raise SystemExit(main())
