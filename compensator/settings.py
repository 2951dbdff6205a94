"""Settings of the compensator (`wakeline compensator`), read from the environment once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from wakeline.errors import ConfigError
from wakeline.infra.settings import Variable, check_known, declare, integer, number, text


@dataclass(frozen=True)
class CompensatorSettings:
    #: modules declaring compensating actions (and, optionally, the tool registry)
    handlers: tuple[str, ...] = ()
    #: consumer group on the events topic; None means "<topic prefix>compensator"
    group_id: str | None = None
    #: a static group member id (Kafka's group.instance.id): a restarted process with the
    #: same id gets its partitions back at once, without waiting for the session timeout
    instance_id: str | None = None
    #: seconds an attempt holds its action; renewed every third of it while the handler runs.
    #: After a crash, the next owner waits this long before it runs the action again.
    lease_s: float = 30.0
    #: transient failures of one action before it is escalated
    max_attempts: int = 5
    #: first and largest pause between attempts (exponential, with jitter)
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    #: plans run at once (each runs its actions one after the other, newest first)
    workers: int = 4
    #: a call with no result yet is escalated as "outcome unknown" only once its intent is
    #: this old: a call still running when the quarantine came usually reports within it
    unknown_grace_s: float = 5.0
    #: the most a DLQ record may weigh
    max_record_bytes: int = 900_000

    def __post_init__(self) -> None:
        if self.lease_s < 1:
            raise ConfigError(f"lease_s={self.lease_s}, want >= 1")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts={self.max_attempts}, want >= 1")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ConfigError(
                f"backoff {self.backoff_initial_s}..{self.backoff_max_s} s, want 0 < initial <= max"
            )
        if self.workers < 1:
            raise ConfigError(f"workers={self.workers}, want >= 1")

    def group_for(self, topic_prefix: str) -> str:
        return self.group_id or f"{topic_prefix}compensator"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CompensatorSettings:
        env = os.environ if env is None else env
        check_known(env)
        raw = HANDLERS.read(env) or ""
        return cls(
            handlers=tuple(m.strip() for m in raw.split(",") if m.strip()),
            group_id=GROUP.read(env),
            instance_id=INSTANCE_ID.read(env),
            lease_s=LEASE_S.read(env),
            max_attempts=MAX_ATTEMPTS.read(env),
            backoff_initial_s=BACKOFF_INITIAL_S.read(env),
            backoff_max_s=BACKOFF_MAX_S.read(env),
            workers=WORKERS.read(env),
            unknown_grace_s=UNKNOWN_GRACE_S.read(env),
        )


HANDLERS = Variable(
    "WAKELINE_COMPENSATOR_HANDLERS",
    text,
    None,
    "comma-separated modules declaring compensating actions (added to --handlers)",
)
GROUP = Variable(
    "WAKELINE_COMPENSATOR_GROUP",
    text,
    None,
    "consumer group of the compensator (default: <topic prefix>compensator)",
)
INSTANCE_ID = Variable(
    "WAKELINE_COMPENSATOR_INSTANCE_ID",
    text,
    None,
    "static group membership id of this compensator process (restarts take over at once)",
)
LEASE_S = Variable(
    "WAKELINE_COMPENSATOR_LEASE_S",
    number(lo=1),
    CompensatorSettings.lease_s,
    "seconds an attempt holds its action (renewed while it runs; a crashed holder's lapses)",
)
MAX_ATTEMPTS = Variable(
    "WAKELINE_COMPENSATOR_MAX_ATTEMPTS",
    integer(),
    CompensatorSettings.max_attempts,
    "transient failures of one compensating action before it is escalated",
)
BACKOFF_INITIAL_S = Variable(
    "WAKELINE_COMPENSATOR_BACKOFF_INITIAL_S",
    number(above=0),
    CompensatorSettings.backoff_initial_s,
    "first pause before retrying a compensating action that failed transiently",
)
BACKOFF_MAX_S = Variable(
    "WAKELINE_COMPENSATOR_BACKOFF_MAX_S",
    number(above=0),
    CompensatorSettings.backoff_max_s,
    "largest pause between retries of a compensating action",
)
WORKERS = Variable(
    "WAKELINE_COMPENSATOR_WORKERS",
    integer(),
    CompensatorSettings.workers,
    "plans the compensator runs at once",
)
UNKNOWN_GRACE_S = Variable(
    "WAKELINE_COMPENSATOR_UNKNOWN_GRACE_S",
    number(lo=0),
    CompensatorSettings.unknown_grace_s,
    "seconds a call without a result may still report before it is escalated as unknown",
)
COMPENSATOR = declare(
    "compensator",
    "the compensation daemon (`wakeline compensator`)",
    HANDLERS,
    GROUP,
    INSTANCE_ID,
    LEASE_S,
    MAX_ATTEMPTS,
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    WORKERS,
    UNKNOWN_GRACE_S,
)
