"""Approval round trip: `wakeline approvals approve` -> the waiting call starts (p50/p99).

    .venv/bin/python bench/approvals.py [--runs 50] [--quick] [--figures F]

On the stack `make bench` starts: a `wakeline worker` (its approval queue fills PostgreSQL),
an SDK process whose policy requires one approver's signed approval for `pay.charge`, and
the approver. Each run starts a call that waits, waits until the queue holds its request,
then runs the `approve` command in this process (click's runner: the command's own work,
PostgreSQL read, the binding check, the Ed25519 signature, the two produces) and times from
just before the command to the first line of the tool. A fresh `wakeline` process adds the
interpreter's start-up on top (reported once, not in the figure). Target: p99 <= 500 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import psycopg
from click.testing import CliRunner
from figures import Figure, emit  # bench/figures.py: the script's own folder is on sys.path

from wakeline.cli.main import cli
from wakeline.infra import topics
from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.policy import queue
from wakeline.policy.approvals import generate_key, public_key_text, save_private_key
from wakeline.policy.engine import Policy
from wakeline.producers import Emitter, ToolRegistry, ToolSpec
from wakeline.producers.approvals import Approvals
from wakeline.testkit.harness import create_database, drop_database, start_worker, stop_worker

TARGET_P99_S = 0.500
APPROVER = "alice@example.com"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def policy_text(public_key: str) -> str:
    return f"""
[policy]
name = "bench"

[approvers.finance]
members = {{ "{APPROVER}" = "{public_key}" }}

[[rule]]
name = "charges"
tool = "pay.charge"
outcome = "require_approval"
approvers = "finance"
timeout = "60s"
"""


def wait_for_request(dsn: str, workflow_id: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            with conn.cursor() as cur:
                for r in queue.list_requests(cur, now_us=time.time_ns() // 1000):
                    if r.workflow_id == workflow_id and r.intent is not None:
                        return r.request_id
            time.sleep(0.005)
    raise SystemExit(f"the queue never held the request of {workflow_id}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--quick", action="store_true", help="a few runs: check, not measure")
    ap.add_argument("--figures", help="write the figures for bench/run.py to this file")
    args = ap.parse_args(argv)
    runs = 5 if args.quick else args.runs
    kafka = replace(KafkaSettings.from_env(), topics=Topics(f"ba{uuid.uuid4().hex[:8]}.wakeline."))
    topics.ensure_topics(kafka)
    dsn = create_database()
    tmp = Path(tempfile.mkdtemp(prefix="wl-bench-approvals-"))
    os.environ.update({"WAKELINE_TOPIC_PREFIX": kafka.topics.prefix, "WAKELINE_DSN": dsn,
                       "WAKELINE_KEYS_DIR": str(tmp / "keys")})  # fmt: skip
    key = generate_key()
    save_private_key(APPROVER, key)
    policy = Policy.parse(policy_text(public_key_text(key)), "bench")
    worker = start_worker(kafka, dsn, "--checkpoint-interval-s", "0",
                          log_path=str(tmp / "worker.log"))  # fmt: skip
    approvals = Approvals(kafka, poll_interval_s=0.01)
    emitter = Emitter(kafka, spool_dir=tmp / "spool", policy=policy, authorizer=approvals,
                      registry=ToolRegistry([ToolSpec("pay.charge", "compensable", "high")]),
                      loop_guard=False)  # fmt: skip
    times: list[float] = []
    try:
        assert approvals.wait_ready(30) and emitter.gate is not None and emitter.gate.wait_ready(30)
        runner = CliRunner()
        for i in range(runs + 1):  # the first run warms the queue, the producer, the readers
            wf = f"bench-approve-{uuid.uuid4().hex[:8]}"
            started: list[float] = []
            ctx = emitter.workflow(wf, agent_id="billing-bot", principal="ops@example.com")

            def charge(amount: int, started: list[float] = started) -> str:
                started.append(time.perf_counter())
                return "ch_1"

            call = threading.Thread(target=ctx.call, args=("pay.charge", charge, {"amount": i}))
            call.start()
            rid = wait_for_request(dsn, wf)
            t0 = time.perf_counter()
            out = runner.invoke(cli, ["approvals", "approve", rid, "--as", APPROVER])
            if out.exit_code != 0:
                raise SystemExit(f"approve failed: {out.output}")
            call.join(30)
            if not started:
                raise SystemExit(f"the approved call of {wf} never started")
            if i:
                times.append(started[0] - t0)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import wakeline.cli.main"], check=True)
        startup = time.perf_counter() - t
    finally:
        emitter.close(10)
        approvals.close()
        stop_worker(worker)
        with contextlib.suppress(Exception):
            topics.delete_topics(kafka)
        drop_database(dsn)
    p50, p99 = pct(times, 0.5), pct(times, 0.99)
    print(f"approval round trip over {len(times)} runs: p50 {p50 * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms, max {max(times) * 1000:.1f} ms, "
          f"mean {statistics.mean(times) * 1000:.1f} ms (target p99 <= 500 ms)")  # fmt: skip
    print(f"a fresh `wakeline` process adds its start-up: {startup * 1000:.0f} ms here")
    return emit([
        Figure("approve -> the waiting call starts, p50", p50 * 1000, "ms"),
        Figure("approve -> the waiting call starts, p99", p99 * 1000, "ms", TARGET_P99_S * 1000),
    ], args.figures)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
