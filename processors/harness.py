"""Running `wakeline worker` as a child process: for crash tests and the benchmark.

The child gets the topic prefix, partition count and database through the environment,
exactly as an operator would run it, and its options on the command line.
"""

from __future__ import annotations

import os
import subprocess
import sys

from wakeline.infra.settings import KafkaSettings

_WORKER = "import sys\nfrom wakeline.cli.worker import worker\nworker(sys.argv[1:])\n"


def worker_env(kafka: KafkaSettings, dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAKELINE_")}
    keep = ("WAKELINE_HOME", "WAKELINE_KAFKA_PORT", "WAKELINE_SIGNING_KEY", "WAKELINE_KAFKA_CONFIG")
    env.update({k: os.environ[k] for k in keep if k in os.environ})
    env.update(
        {
            "WAKELINE_BOOTSTRAP": kafka.bootstrap,
            "WAKELINE_TOPIC_PREFIX": kafka.topics.prefix,
            "WAKELINE_PARTITIONS": str(kafka.partitions),
            "WAKELINE_DSN": dsn,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def start_worker(
    kafka: KafkaSettings, dsn: str, *args: str, log_path: str | None = None
) -> subprocess.Popen:
    """Start `wakeline worker <args>`; its output goes to `log_path` (or is discarded)."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            [sys.executable, "-c", _WORKER, *args],
            env=worker_env(kafka, dsn), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]


def stop_worker(proc: subprocess.Popen, timeout: float = 30) -> int:
    """SIGTERM, then SIGKILL if it does not exit in `timeout`; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
