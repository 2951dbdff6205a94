"""`wakeline worker`: the faust worker hosting the ledger builder and audit publisher."""

from __future__ import annotations

import click


@click.command("worker")
@click.option(
    "--segment-max-leaves",
    type=click.IntRange(min=1),
    default=None,
    help="Close a segment at this many leaves (WAKELINE_SEGMENT_MAX_LEAVES).",
)
@click.option(
    "--segment-max-age-ms",
    type=click.IntRange(min=1),
    default=None,
    help="Close a segment when its first leaf is this old (WAKELINE_SEGMENT_MAX_AGE_MS).",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=None,
    help="Records per consume call (WAKELINE_BUILDER_BATCH).",
)
@click.option(
    "--checkpoint-interval-s",
    type=click.FloatRange(min=0),
    default=None,
    help="Sign a checkpoint this often; 0 = only on SIGUSR1.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics at http://HOST:PORT/metrics; 0 = off (the default; "
    "WAKELINE_METRICS_PORT). The default worker's audit child serves its own on PORT + 1.",
)
@click.option(
    "--metrics-host",
    default=None,
    help="Address the metrics endpoint binds (WAKELINE_METRICS_HOST, default 127.0.0.1).",
)
@click.option("--no-audit", is_flag=True, help="Do not run the audit publisher here.")
@click.option("--no-builder", is_flag=True, help="Do not run the ledger builder here.")
@click.option(
    "--detectors/--no-detectors",
    default=None,
    help="Run the loop and race detectors, with the audit publisher (on unless "
    "WAKELINE_DETECTORS=0; rules: WAKELINE_DETECTION_RULES, docs/detection.md).",
)
@click.option(
    "--approvals/--no-approvals",
    default=True,
    help="Keep the approval queue `wakeline approvals` reads (with the audit publisher; on "
    "by default).",
)
@click.option(
    "--single-process",
    is_flag=True,
    help="Run builder and audit publisher in this one process (default: the audit "
    "publisher runs in a child process that dies with this one).",
)
@click.option("-l", "--loglevel", default="warn",
              type=click.Choice(["crit", "error", "warn", "info", "debug"]),
              help="faust worker log level.")  # fmt: skip
def worker(
    segment_max_leaves: int | None,
    segment_max_age_ms: int | None,
    batch: int | None,
    checkpoint_interval_s: float | None,
    metrics_port: int | None,
    metrics_host: str | None,
    no_audit: bool,
    no_builder: bool,
    detectors: bool | None,
    approvals: bool,
    single_process: bool,
    loglevel: str,
) -> None:
    """Run the stream processors until stopped (SIGTERM/SIGINT; SIGUSR1 signs a checkpoint).

    By default the audit publisher runs in a child process (`--no-builder`, one core and
    GIL of its own) that dies with this one; `--single-process` keeps both here. Run
    several for more throughput: they share the events topic's partitions (builder) and
    the ledger topic's (audit publisher). `--no-audit` / `--no-builder` run one role only.
    The loop and race detectors run with the audit publisher (`--no-detectors`: not here).
    `--metrics-port N` serves Prometheus metrics on N (the audit child's on N + 1).
    """
    from wakeline.processors.shutdown import install_boot_handlers

    install_boot_handlers()  # a stop signal while booting exits cleanly (0)

    from wakeline.cli.main import run_guarded
    from wakeline.processors.child import AuditChild
    from wakeline.processors.runner import run_from_env

    overrides = {
        "segment_max_leaves": segment_max_leaves,
        "segment_max_age_s": segment_max_age_ms / 1000 if segment_max_age_ms else None,
        "batch_size": batch,
        "checkpoint_interval_s": checkpoint_interval_s,
        "audit": False if no_audit else None,
        "builder": False if no_builder else None,
        "detectors": detectors,
        "approvals": False if not approvals else None,
        "metrics_port": metrics_port,
        "metrics_host": metrics_host,
    }

    def run() -> None:
        child = None
        if not (no_audit or no_builder or single_process):
            # the builder stays here; only this process signs checkpoints
            # the detectors run there too: the builder's process is the busier one
            args = ["--checkpoint-interval-s", "0", "-l", loglevel, *_child_metrics(metrics_port)]
            if detectors is not None:
                args.append("--detectors" if detectors else "--no-detectors")
            if not approvals:
                args.append("--no-approvals")
            if metrics_host is not None:
                args += ["--metrics-host", metrics_host]
            child = AuditChild(args, nice=10)
            overrides["audit"] = False
            overrides["detectors"] = False
        run_from_env(overrides, loglevel=loglevel, audit_child=child)

    run_guarded(run)


def _child_metrics(port: int | None) -> list[str]:
    """The audit child's `--metrics-port`: always given, so it never takes this process's
    port from the environment it inherits; the next port up, or 0 when metrics are off."""
    import os

    from wakeline.errors import ConfigError
    from wakeline.processors.settings import METRICS_PORT

    if port is None:
        port = METRICS_PORT.read(os.environ)
    if port == 65535:
        raise ConfigError("metrics port 65535 leaves no port for the audit child; pick another")
    return ["--metrics-port", str(port + 1 if port else 0)]
