"""Settings: one frozen dataclass per concern, each with `from_env()`.

Constructors never read `os.environ`; only `from_env()` does, and it names the bad variable
when a value does not parse. External services win: `WAKELINE_BOOTSTRAP` and `WAKELINE_DSN`
point everything at a real cluster and database; without them the local stack under
`WAKELINE_HOME` (default `./.wakeline`) is used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from wakeline.errors import ConfigError

DEFAULT_HOME = ".wakeline"
DEFAULT_KAFKA_PORT = 19092
DEFAULT_CONTROLLER_PORT = 19093
DEFAULT_PREFIX = "wakeline."
DEFAULT_PARTITIONS = 12

#: every variable Wakeline reads; from_env() rejects unknown WAKELINE_* names so typos show
KNOWN_VARIABLES = frozenset(
    {
        "WAKELINE_HOME",
        "WAKELINE_BOOTSTRAP",
        "WAKELINE_DSN",
        "WAKELINE_KAFKA_PORT",
        "WAKELINE_CONTROLLER_PORT",
        "WAKELINE_KAFKA_HEAP",
        "WAKELINE_TOPIC_PREFIX",
        "WAKELINE_PARTITIONS",
        "WAKELINE_KAFKA_CONFIG",
        "WAKELINE_SIGNING_KEY",
        "WAKELINE_LOG_LEVEL",
        # the ledger builder (wakeline.processors.settings.BuilderSettings)
        "WAKELINE_BUILDER_GROUP",
        "WAKELINE_BUILDER_BATCH",
        "WAKELINE_SEGMENT_MAX_LEAVES",
        "WAKELINE_SEGMENT_MAX_AGE_MS",
        "WAKELINE_CHECKPOINT_INTERVAL_S",
        "WAKELINE_HASH_SUITE",
    }
)


def _check_known(env: Mapping[str, str]) -> None:
    unknown = sorted(k for k in env if k.startswith("WAKELINE_") and k not in KNOWN_VARIABLES)
    if unknown:
        raise ConfigError(
            f"unknown setting {unknown[0]}; known: {', '.join(sorted(KNOWN_VARIABLES))}"
        )


def env_int(
    env: Mapping[str, str], name: str, default: int, *, lo: int = 1, hi: int = 2**31 - 1
) -> int:
    """The whole number in `env[name]` (default when unset or empty); ConfigError names it."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is out of range {lo}..{hi}")
    return value


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("WAKELINE_HOME") or DEFAULT_HOME).expanduser().absolute()


@dataclass(frozen=True)
class StackSettings:
    """Where the local stack lives and which loopback ports it binds."""

    home: Path
    kafka_port: int = DEFAULT_KAFKA_PORT
    controller_port: int = DEFAULT_CONTROLLER_PORT
    kafka_heap: str = "512m"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StackSettings:
        env = os.environ if env is None else env
        _check_known(env)
        kafka_port = env_int(env, "WAKELINE_KAFKA_PORT", DEFAULT_KAFKA_PORT, hi=65535)
        controller_port = env_int(env, "WAKELINE_CONTROLLER_PORT", kafka_port + 1, hi=65535)
        if controller_port == kafka_port:
            raise ConfigError("WAKELINE_CONTROLLER_PORT must differ from WAKELINE_KAFKA_PORT")
        return cls(
            home=_home(env),
            kafka_port=kafka_port,
            controller_port=controller_port,
            kafka_heap=env.get("WAKELINE_KAFKA_HEAP") or "512m",
        )

    @property
    def kafka_dir(self) -> Path:
        return self.home / "kafka"

    @property
    def pg_dir(self) -> Path:
        return self.home / "pg"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"


@dataclass(frozen=True)
class Topics:
    """Topic names (docs/architecture.md, Topics) under one configurable prefix."""

    prefix: str = DEFAULT_PREFIX

    @property
    def events(self) -> str:
        return self.prefix + "events"

    @property
    def ledger(self) -> str:
        return self.prefix + "ledger"

    @property
    def audit(self) -> str:
        return self.prefix + "audit"

    @property
    def alerts(self) -> str:
        return self.prefix + "alerts"

    @property
    def quarantines(self) -> str:
        return self.prefix + "quarantines"

    @property
    def schemas(self) -> str:
        return self.prefix + "schemas"

    @property
    def dlq(self) -> str:
        return self.prefix + "dlq"

    def all(self) -> tuple[str, ...]:
        return (
            self.events,
            self.ledger,
            self.audit,
            self.alerts,
            self.quarantines,
            self.schemas,
            self.dlq,
        )


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach the broker and which topics to use.

    `extra` holds librdkafka properties (from `WAKELINE_KAFKA_CONFIG`, `k=v,k=v`) for
    security settings of a real cluster: SASL, TLS, and so on.
    """

    bootstrap: str
    topics: Topics = field(default_factory=Topics)
    partitions: int = DEFAULT_PARTITIONS
    external: bool = False
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSettings:
        env = os.environ if env is None else env
        _check_known(env)
        external = bool(env.get("WAKELINE_BOOTSTRAP"))
        bootstrap = env.get("WAKELINE_BOOTSTRAP") or StackSettings.from_env(env).bootstrap
        prefix = env.get("WAKELINE_TOPIC_PREFIX", DEFAULT_PREFIX)
        if prefix and not all(c.isalnum() or c in "._-" for c in prefix):
            raise ConfigError(
                f"WAKELINE_TOPIC_PREFIX={prefix!r} may hold only letters, digits, '.', '_', '-'"
            )
        return cls(
            bootstrap=bootstrap,
            topics=Topics(prefix),
            partitions=env_int(env, "WAKELINE_PARTITIONS", DEFAULT_PARTITIONS, hi=10_000),
            external=external,
            extra=_parse_kv(env.get("WAKELINE_KAFKA_CONFIG", "")),
        )

    def client_config(self, **overrides: object) -> dict[str, object]:
        """A librdkafka config dict: bootstrap, the extras, then the caller's overrides."""
        conf: dict[str, object] = {"bootstrap.servers": self.bootstrap}
        conf.update(self.extra)
        conf.update(overrides)
        return conf


def _parse_kv(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"WAKELINE_KAFKA_CONFIG entry {part!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class DatabaseSettings:
    """How to reach PostgreSQL. `dsn` is None until resolved for the local stack."""

    dsn: str
    external: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DatabaseSettings:
        env = os.environ if env is None else env
        _check_known(env)
        if env.get("WAKELINE_DSN"):
            return cls(dsn=env["WAKELINE_DSN"], external=True)
        return cls(dsn=local_dsn(StackSettings.from_env(env).pg_dir), external=False)


def local_dsn(pg_dir: Path) -> str:
    """The psycopg URI of the embedded PostgreSQL in `pg_dir`.

    It listens only on a Unix socket whose directory PostgreSQL records in postmaster.pid
    (line 5); when the cluster is not running the socket defaults to the data dir itself,
    which is what a later `stack up` will use for a short enough path.
    """
    socket_dir = pg_dir
    pid_file = pg_dir / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        if len(lines) >= 5 and lines[4].strip():
            socket_dir = Path(lines[4].strip())
    except OSError:
        pass
    return f"postgresql://postgres@/postgres?host={socket_dir}"
