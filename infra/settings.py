"""Settings: one frozen dataclass per concern, each with `from_env()`.

Constructors never read `os.environ`; only `from_env()` does, and it names the bad variable
when a value does not parse. External services win: `WAKELINE_BOOTSTRAP` and `WAKELINE_DSN`
point everything at a real cluster and database; without them the local stack under
`WAKELINE_HOME` (default `./.wakeline`) is used.

Each component declares the variables it reads next to its settings dataclass, as a
`Variable` (name, parser, default, doc) in a `declare(...)` call; `wakeline config` lists
them and the unknown-variable check is assembled from them. A new variable is one line in
its component's declaration, then one `VAR.read(env)` where it is used.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wakeline.errors import ConfigError

DEFAULT_HOME = ".wakeline"
DEFAULT_KAFKA_PORT = 19092
DEFAULT_CONTROLLER_PORT = 19093
DEFAULT_PREFIX = "wakeline."
DEFAULT_PARTITIONS = 12

# ------------------------------------------------------------------------------ declarations

#: a parser turns the raw text of a variable into its value, or raises ValueError whose
#: message completes "WAKELINE_PARTITIONS='three' ..." (e.g. "is not a whole number")
Parser = Callable[[str], Any]


def integer(lo: int = 1, hi: int = 2**31 - 1) -> Parser:
    """A whole number in lo..hi."""

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("is not a whole number") from None
        if not lo <= value <= hi:
            raise ValueError(f"is out of range {lo}..{hi}")
        return value

    return parse


def number(lo: float | None = None, *, above: float | None = None) -> Parser:
    """A finite decimal number, at least `lo` or strictly more than `above`."""

    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("is not a finite number")
        if lo is not None and value < lo:
            raise ValueError(f"is below {lo:g}")
        if above is not None and value <= above:
            raise ValueError(f"must be more than {above:g}")
        return value

    return parse


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def boolean(raw: str) -> bool:
    """1/0, true/false, yes/no, on/off (any case)."""
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise ValueError(f"is not one of {'/'.join(_TRUE + _FALSE)}")


def text(raw: str) -> str:
    """The text as it is."""
    return raw


def choice(*options: str, case: bool = False) -> Parser:
    """One of `options` (case-insensitive unless `case`; the canonical spelling is returned)."""

    def parse(raw: str) -> str:
        for option in options:
            if raw == option or (not case and raw.lower() == option.lower()):
                return option
        raise ValueError(f"is not one of {', '.join(options)}")

    return parse


@dataclass(frozen=True)
class Variable:
    """One environment variable a component reads.

    `default` is the value when the variable is unset (or empty, unless `keep_empty`); a
    callable default is computed from the rest of the environment (e.g. a port one above
    another). `secret` values are never shown; passwords inside any shown value (a DSN's,
    a `sasl.password=`) are masked anyway.
    """

    name: str
    parse: Parser
    default: Any
    doc: str
    secret: bool = False
    keep_empty: bool = False

    def is_set(self, env: Mapping[str, str]) -> bool:
        raw = env.get(self.name)
        return raw is not None and (raw != "" or self.keep_empty)

    def read(self, env: Mapping[str, str]) -> Any:
        """The parsed value in `env`, else the default; ConfigError names the variable."""
        if not self.is_set(env):
            return self.default(env) if callable(self.default) else self.default
        raw = env[self.name]
        try:
            return self.parse(raw)
        except ValueError as e:
            raise ConfigError(f"{self.name}={raw!r} {e}") from None

    def shown(self, value: Any) -> str:
        """`value` as `wakeline config` prints it: secrets as ***, passwords masked."""
        if self.secret and value not in (None, ""):
            return "***"
        if value is None:
            return "none"
        if isinstance(value, Mapping):
            value = ",".join(f"{k}={v}" for k, v in value.items())
        return mask_passwords(str(value))


@dataclass(frozen=True)
class Component:
    """A part of Wakeline and the variables it reads."""

    name: str
    doc: str
    variables: tuple[Variable, ...]


#: modules that declare components; the unknown-variable check imports them all, so it
#: does not depend on which of them the running program happened to import
COMPONENT_MODULES = (
    "wakeline.infra.settings",
    "wakeline.processors.settings",
    "wakeline.processors.checkpointing",
    "wakeline.cli.main",
    "wakeline.cli.ledger",
    "wakeline.compensator.settings",
    "wakeline.infra.detection",
    "wakeline.compensator.notify",
    "wakeline.policy.engine",
    "wakeline.policy.approvals",
)

#: the entry-point group of packages outside Wakeline that declare components (a handler
#: module's own variables): each entry names a module, imported like COMPONENT_MODULES
PLUGIN_GROUP = "wakeline.settings"

_COMPONENTS: dict[str, Component] = {}
_plugins_loaded = False


def declare(name: str, doc: str, *variables: Variable) -> Component:
    """Register component `name` and its variables (on import of the declaring module)."""
    for var in variables:
        if not var.name.startswith("WAKELINE_"):
            raise ValueError(f"{var.name}: every variable is named WAKELINE_*")
        for other in _COMPONENTS.values():
            if other.name != name and var.name in {v.name for v in other.variables}:
                raise ValueError(f"{var.name} is declared by both {other.name} and {name}")
    component = Component(name, doc, tuple(variables))
    _COMPONENTS[name] = component
    return component


def components() -> tuple[Component, ...]:
    """Every declared component, in the order of COMPONENT_MODULES, then those of the
    installed packages' `wakeline.settings` entry points."""
    global _plugins_loaded
    for module in COMPONENT_MODULES:
        importlib.import_module(module)
    if not _plugins_loaded:
        _plugins_loaded = True
        for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
            try:
                entry.load()
            except Exception as e:  # noqa: BLE001 - any failure of a plug-in: name it
                _plugins_loaded = False
                raise ConfigError(
                    f"{entry.value} (entry point {entry.name!r} of {PLUGIN_GROUP}) cannot be "
                    f"imported to learn its settings: {type(e).__name__}: {e}"
                ) from e
    return tuple(_COMPONENTS.values())


def known_variables() -> frozenset[str]:
    """The name of every variable some component declares."""
    return frozenset(v.name for c in components() for v in c.variables)


def unknown_variables(env: Mapping[str, str]) -> dict[str, str | None]:
    """Each WAKELINE_* name in `env` that no component declares, with the closest known name."""
    names = {k for k in env if k.startswith("WAKELINE_")}
    if names <= {v.name for c in _COMPONENTS.values() for v in c.variables}:
        return {}  # all declared by what is imported already: no need to import the rest
    known = known_variables()
    tails = sorted(k.removeprefix("WAKELINE_") for k in known)  # the shared prefix is no hint

    def closest(name: str) -> str | None:
        close = difflib.get_close_matches(name.removeprefix("WAKELINE_"), tails, n=1)
        return "WAKELINE_" + close[0] if close else None

    return {k: closest(k) for k in sorted(names - known)}


def check_known(env: Mapping[str, str]) -> None:
    """ConfigError for a WAKELINE_* variable no component declares (a typo, most likely)."""
    unknown = unknown_variables(env)
    if unknown:
        name, close = next(iter(unknown.items()))
        hint = f"; did you mean {close}?" if close else ""
        raise ConfigError(
            f"unknown setting {name}{hint} (`wakeline config` lists every known variable)"
        )


def describe(env: Mapping[str, str]) -> dict[str, Any]:
    """Every declared variable with its value in `env` and where it came from, by component;
    and the unknown WAKELINE_* names. What `wakeline config` prints."""
    unknown = unknown_variables(env)
    known_env = {k: v for k, v in env.items() if k not in unknown}  # so defaults still resolve
    out: list[dict[str, Any]] = []
    for component in components():
        rows = []
        for var in component.variables:
            row: dict[str, Any] = {
                "name": var.name,
                "source": "environment" if var.is_set(env) else "default",
                "doc": var.doc,
            }
            try:
                value = var.read(known_env)
            except ConfigError as e:
                value, row["error"] = env.get(var.name), mask_passwords(str(e))
            plain = value is None or isinstance(value, (bool, int, float))
            row["value"] = value if plain and not var.secret else var.shown(value)
            rows.append(row)
        out.append({"name": component.name, "doc": component.doc, "variables": rows})
    return {
        "components": out,
        "unknown": [{"name": k, "did_you_mean": v} for k, v in unknown.items()],
    }


_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]*(?=@)", re.IGNORECASE)
_KEY_PASSWORD = re.compile(
    r"(?P<head>[\w.-]*(?:password|passwd|secret)[\w.-]*\s*=\s*)[^\s,&]+", re.IGNORECASE
)


def mask_passwords(value: str) -> str:
    """`value` with the password of a URL (`user:pw@host`) and any `password=...` as ***."""
    value = _URL_PASSWORD.sub(r"\g<head>***", value)
    return _KEY_PASSWORD.sub(r"\g<head>***", value)


# ------------------------------------------------------------------------------ components


def path(raw: str) -> Path:
    """A file or directory path (`~` expanded)."""
    return Path(raw).expanduser()


def _topic_prefix(raw: str) -> str:
    if raw and not all(c.isalnum() or c in "._-" for c in raw):
        raise ValueError("may hold only letters, digits, '.', '_', '-'")
    return raw


def _parse_kv(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"has entry {part!r} that is not key=value")
        out[key.strip()] = value.strip()
    return out


HOME = Variable(
    "WAKELINE_HOME",
    lambda raw: path(raw).absolute(),
    lambda env: Path(DEFAULT_HOME).absolute(),
    "state dir of the local stack, the spools and the signing key",
)
KAFKA_PORT = Variable(
    "WAKELINE_KAFKA_PORT", integer(hi=65535), DEFAULT_KAFKA_PORT, "port of the local broker"
)
CONTROLLER_PORT = Variable(
    "WAKELINE_CONTROLLER_PORT",
    integer(hi=65535),
    lambda env: KAFKA_PORT.read(env) + 1,
    "KRaft controller port of the local broker (default: WAKELINE_KAFKA_PORT + 1)",
)
KAFKA_HEAP = Variable("WAKELINE_KAFKA_HEAP", text, "512m", "JVM heap of the local broker")
declare(
    "stack",
    "the local Kafka and PostgreSQL under WAKELINE_HOME (`wakeline stack`)",
    HOME,
    KAFKA_PORT,
    CONTROLLER_PORT,
    KAFKA_HEAP,
)


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
        check_known(env)
        kafka_port = KAFKA_PORT.read(env)
        controller_port = CONTROLLER_PORT.read(env)
        if controller_port == kafka_port:
            raise ConfigError("WAKELINE_CONTROLLER_PORT must differ from WAKELINE_KAFKA_PORT")
        return cls(
            home=HOME.read(env),
            kafka_port=kafka_port,
            controller_port=controller_port,
            kafka_heap=KAFKA_HEAP.read(env),
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
    def resources(self) -> str:
        """Tool calls re-keyed by resource key, for the race detector (processors/races.py)."""
        return self.prefix + "resources"

    @property
    def approvals(self) -> str:
        """Signed approval decisions, compacted, keyed `<request id>/<approver>`: what a
        waiting SDK call follows (each is also on the workflow's partition of events)."""
        return self.prefix + "approvals"

    @property
    def grants(self) -> str:
        """Standing grants and their revocations, compacted: a Grant keyed by its grant id,
        a GrantRevoked by `<grant id>/revoked/<revoker>` (each also on `<prefix>events`)."""
        return self.prefix + "grants"

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
            self.resources,
            self.approvals,
            self.grants,
            self.schemas,
            self.dlq,
        )


BOOTSTRAP = Variable(
    "WAKELINE_BOOTSTRAP",
    text,
    lambda env: StackSettings.from_env(env).bootstrap,
    "Kafka bootstrap servers; when set, that cluster is used and no local broker is started",
)
TOPIC_PREFIX = Variable(
    "WAKELINE_TOPIC_PREFIX",
    _topic_prefix,
    DEFAULT_PREFIX,
    "prefix of every topic name (may be empty)",
    keep_empty=True,
)
PARTITIONS = Variable(
    "WAKELINE_PARTITIONS",
    integer(hi=10_000),
    DEFAULT_PARTITIONS,
    "partitions of the topics `wakeline init` creates",
)
KAFKA_CONFIG = Variable(
    "WAKELINE_KAFKA_CONFIG",
    _parse_kv,
    lambda env: {},
    "extra librdkafka settings, key=value,key=value (SASL, TLS)",
)
declare(
    "kafka",
    "the broker every component talks to, and the topics",
    BOOTSTRAP,
    TOPIC_PREFIX,
    PARTITIONS,
    KAFKA_CONFIG,
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
        check_known(env)
        return cls(
            bootstrap=BOOTSTRAP.read(env),
            topics=Topics(TOPIC_PREFIX.read(env)),
            partitions=PARTITIONS.read(env),
            external=BOOTSTRAP.is_set(env),
            extra=KAFKA_CONFIG.read(env),
        )

    def client_config(self, **overrides: object) -> dict[str, object]:
        """A librdkafka config dict: bootstrap, the extras, then the caller's overrides."""
        conf: dict[str, object] = {"bootstrap.servers": self.bootstrap}
        conf.update(self.extra)
        conf.update(overrides)
        return conf

    def producer_config(self, **overrides: object) -> dict[str, object]:
        """`client_config` for a producer of workflow-keyed records: the partitioner pinned
        (`pin_partitioner`), whatever librdkafka's default is."""
        return pin_partitioner(self.client_config(**overrides))


#: How every Wakeline producer places a record: librdkafka's `consistent_random`, which for a
#: non-empty key is CRC-32 (IEEE) of the key bytes modulo the partition count. Events are keyed
#: by workflow id, and pairing, seals and ordering need every event of a workflow, whoever
#: writes it (agent, worker, compensator, operator; in any language), on one partition:
#: schemas/README.md gives the rule to producers in other languages.
PARTITIONER = "consistent_random"


def pin_partitioner(conf: dict[str, object]) -> dict[str, object]:
    """`conf` with `partitioner` set to `PARTITIONER`; ConfigError if it names another (a
    `murmur2_random` producer would put a workflow's events on a different partition)."""
    got = conf.get("partitioner", PARTITIONER)
    if got != PARTITIONER:
        raise ConfigError(
            f"partitioner={got!r}: Wakeline producers must use {PARTITIONER!r} (CRC-32 of "
            "the workflow id modulo the partition count), or a workflow's events land on "
            "different partitions (schemas/README.md, Emitting from another language)"
        )
    conf["partitioner"] = PARTITIONER
    return conf


DSN = Variable(
    "WAKELINE_DSN",
    text,
    lambda env: local_dsn(StackSettings.from_env(env).pg_dir),
    "PostgreSQL connection URI; when set, that database is used and no local one is started",
)
declare("database", "the PostgreSQL that holds the ledger", DSN)


@dataclass(frozen=True)
class DatabaseSettings:
    """How to reach PostgreSQL: the DSN of `WAKELINE_DSN` or of the local stack."""

    dsn: str
    external: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DatabaseSettings:
        env = os.environ if env is None else env
        check_known(env)
        return cls(dsn=DSN.read(env), external=DSN.is_set(env))


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
