"""Settings of the stream processors: one frozen dataclass, read from the environment once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from wakeline.errors import ConfigError
from wakeline.infra.settings import (
    Variable,
    boolean,
    check_known,
    declare,
    integer,
    number,
    text,
)


@dataclass(frozen=True)
class BuilderSettings:
    """How the ledger builder batches, seals segments and signs checkpoints.

    A segment closes when it holds `segment_max_leaves` leaves or its first leaf has waited
    `segment_max_age_s`, whichever comes first; the age bound is what caps the latency from
    production to a persisted segment.
    """

    #: consumer group of the builder; None means "<topic prefix>ledger-builder"
    group_id: str | None = None
    #: records asked of `Consumer.consume` per call
    batch_size: int = 5000
    poll_timeout_s: float = 0.05
    segment_max_leaves: int = 20_000
    segment_max_age_s: float = 0.25
    #: sign a checkpoint this often (0 = only on demand)
    checkpoint_interval_s: float = 60.0
    hash_suite: str = "blake3"
    #: run the ledger builder in this worker
    builder: bool = True
    #: run the audit publisher (audit + DLQ records per ledgered record) in this worker
    audit: bool = True
    #: run the loop and race detectors (processors/loops.py, races.py) in this worker (with
    #: the audit publisher); `wakeline worker --no-detectors` or WAKELINE_DETECTORS=0 to not
    detectors: bool = True
    #: run the approval queue's processor (processors/approvals.py) with the audit publisher:
    #: what `wakeline approvals` reads
    approvals: bool = True
    #: results whose intent is remembered for the summary ("called X for Y: ok")
    intent_cache_size: int = 200_000
    #: the most a derived record (audit, DLQ) may weigh: key + value + headers; under
    #: librdkafka's default `message.max.bytes` (1,000,000) and the broker's (1,048,588),
    #: with room for the batch overhead; keep it under the topics' `max.message.bytes`
    max_record_bytes: int = 900_000
    #: a partition whose backlog has not moved for this long is reported as stalled
    stall_after_s: float = 60.0
    #: serve Prometheus metrics on this port (0 = off); the default worker's audit child
    #: serves its own on the next port up
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size}, want >= 1")
        if self.segment_max_leaves < 1:
            raise ConfigError(f"segment_max_leaves={self.segment_max_leaves}, want >= 1")
        if self.segment_max_age_s <= 0:
            raise ConfigError(f"segment_max_age_s={self.segment_max_age_s}, want > 0")
        from wakeline.ledger.hashing import SUITES

        if self.hash_suite not in SUITES:
            raise ConfigError(f"hash suite {self.hash_suite!r}, want one of {sorted(SUITES)}")
        if not (self.builder or self.audit):
            raise ConfigError("a worker with neither the builder nor the auditor does nothing")
        if self.max_record_bytes < 16_384:
            raise ConfigError(f"max_record_bytes={self.max_record_bytes}, want >= 16384")
        if self.stall_after_s <= 0:
            raise ConfigError(f"stall_after_s={self.stall_after_s}, want > 0")
        if self.checkpoint_interval_s < 0:
            raise ConfigError(f"checkpoint_interval_s={self.checkpoint_interval_s}, want >= 0")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port={self.metrics_port}, want 0 (off) to 65535")
        if self.metrics_port and not self.metrics_host:
            raise ConfigError("metrics_host is empty; want an address to bind, e.g. 127.0.0.1")

    def group_for(self, topic_prefix: str) -> str:
        return self.group_id or f"{topic_prefix}ledger-builder"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BuilderSettings:
        env = os.environ if env is None else env
        check_known(env)
        return cls(
            group_id=GROUP.read(env),
            batch_size=BATCH.read(env),
            segment_max_leaves=SEGMENT_MAX_LEAVES.read(env),
            segment_max_age_s=SEGMENT_MAX_AGE_MS.read(env) / 1000,
            checkpoint_interval_s=CHECKPOINT_INTERVAL_S.read(env),
            hash_suite=HASH_SUITE.read(env),
            max_record_bytes=MAX_RECORD_BYTES.read(env),
            stall_after_s=STALL_AFTER_S.read(env),
            detectors=DETECTORS.read(env),
            metrics_port=METRICS_PORT.read(env),
            metrics_host=METRICS_HOST.read(env),
        )


# the variables BuilderSettings.from_env reads; defaults are the dataclass defaults
GROUP = Variable(
    "WAKELINE_BUILDER_GROUP",
    text,
    None,
    "consumer group of the ledger builder (default: <topic prefix>ledger-builder)",
)
BATCH = Variable(
    "WAKELINE_BUILDER_BATCH",
    integer(),
    BuilderSettings.batch_size,
    "records asked of Kafka per consume call",
)
SEGMENT_MAX_LEAVES = Variable(
    "WAKELINE_SEGMENT_MAX_LEAVES",
    integer(),
    BuilderSettings.segment_max_leaves,
    "a segment closes at this many leaves",
)
SEGMENT_MAX_AGE_MS = Variable(
    "WAKELINE_SEGMENT_MAX_AGE_MS",
    integer(),
    round(BuilderSettings.segment_max_age_s * 1000),
    "a segment closes when its first leaf has waited this many ms (caps ledger latency)",
)
CHECKPOINT_INTERVAL_S = Variable(
    "WAKELINE_CHECKPOINT_INTERVAL_S",
    number(lo=0),
    BuilderSettings.checkpoint_interval_s,
    "sign a checkpoint this often, in seconds (0 = only on SIGUSR1)",
)
HASH_SUITE = Variable(
    "WAKELINE_HASH_SUITE",
    text,
    BuilderSettings.hash_suite,
    "hash suite of new segments: blake3 or sha256",
)
MAX_RECORD_BYTES = Variable(
    "WAKELINE_MAX_RECORD_BYTES",
    integer(lo=16_384),
    BuilderSettings.max_record_bytes,
    "the most a derived (audit, DLQ) record may weigh; keep it under the broker's limits",
)
DETECTORS = Variable(
    "WAKELINE_DETECTORS",
    boolean,
    BuilderSettings.detectors,
    "run the loop and race detectors in the worker (docs/detection.md)",
)
STALL_AFTER_S = Variable(
    "WAKELINE_STALL_AFTER_S",
    number(above=0),
    BuilderSettings.stall_after_s,
    "a partition whose backlog has not moved for this many seconds is reported as stalled",
)
METRICS_PORT = Variable(
    "WAKELINE_METRICS_PORT",
    integer(lo=0, hi=65535),
    BuilderSettings.metrics_port,
    "serve Prometheus metrics on this port, 0 = off (the audit child of the default "
    "two-process worker uses the next port)",
)
METRICS_HOST = Variable(
    "WAKELINE_METRICS_HOST",
    text,
    BuilderSettings.metrics_host,
    "address the metrics endpoint binds (loopback by default; 0.0.0.0 for every interface)",
)
BUILDER = declare(
    "builder",
    "the worker's ledger builder and audit publisher (`wakeline worker`)",
    GROUP,
    BATCH,
    SEGMENT_MAX_LEAVES,
    SEGMENT_MAX_AGE_MS,
    CHECKPOINT_INTERVAL_S,
    HASH_SUITE,
    MAX_RECORD_BYTES,
    STALL_AFTER_S,
    DETECTORS,
    METRICS_PORT,
    METRICS_HOST,
)
