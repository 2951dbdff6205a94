"""The demo's own namespace: a topic prefix and a database made fresh for each run.

The demo never reads or writes the configured topics and database: whatever else is on the
stack (a test's orphan result, an experiment killed mid-call) is neither verified by it nor
touched. A run's namespace is `demo.<run>.<configured prefix>` on the configured broker and a
database `wl_demo_<run>` on the configured PostgreSQL server (a new prefix needs a new
database: the builder refuses a database that ledgered another prefix's topics).

Each namespace is recorded in `$WAKELINE_HOME/demo/namespaces.json` before it is used; the
next run removes the recorded ones (their topics, their database) before it makes its own,
so runs do not pile up, and only what a demo made is ever removed. One demo runs at a time
per WAKELINE_HOME (a lock file), since the runs share that directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from psycopg import conninfo

from wakeline.errors import WakelineError
from wakeline.infra.settings import DatabaseSettings, KafkaSettings, Topics

DB_PREFIX = "wl_demo"


class NamespaceError(WakelineError):
    """The demo could not make (or find) a namespace of its own."""


@dataclass(frozen=True)
class Namespace:
    run: str
    kafka: KafkaSettings
    database: DatabaseSettings
    admin_dsn: str  # the configured database: where CREATE / DROP DATABASE ran

    def record(self) -> dict[str, str]:
        return {
            "run": self.run,
            "bootstrap": self.kafka.bootstrap,
            "prefix": self.kafka.topics.prefix,
            "dsn": self.database.dsn,
            "admin_dsn": self.admin_dsn,
        }


@contextlib.contextmanager
def exclusive(out_dir: Path) -> Iterator[None]:
    """Hold `out_dir/.lock` for the run; NamespaceError if another demo holds it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise NamespaceError(
                f"another `wakeline demo` is running on {out_dir} (WAKELINE_HOME); wait for it, "
                "or give this one a WAKELINE_HOME of its own"
            ) from e
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _records_path(out_dir: Path) -> Path:
    return out_dir / "namespaces.json"


def _read(out_dir: Path) -> list[dict[str, str]]:
    try:
        return list(json.loads(_records_path(out_dir).read_text()))
    except FileNotFoundError:
        return []
    except ValueError as e:
        raise NamespaceError(
            f"{_records_path(out_dir)} is not the JSON list the demo writes ({e}); remove it "
            "(the demo then no longer knows its earlier runs' topics and databases)"
        ) from e


def _write(out_dir: Path, records: list[dict[str, str]]) -> None:
    path = _records_path(out_dir)
    tmp = path.with_suffix(".tmp")
    # the DSNs may hold a password: owner-only, like the env file
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(records, f, indent=1)
    tmp.replace(path)


def _remove(kafka: KafkaSettings, record: dict[str, str]) -> None:
    from wakeline.infra import topics
    from wakeline.testkit.harness import drop_database

    where = replace(kafka, bootstrap=record["bootstrap"], topics=Topics(record["prefix"]))
    topics.delete_topics(where, timeout=10, under_prefix=True)
    drop_database(record["dsn"], record["admin_dsn"], check=True)
    _delete_groups(where)


def _delete_groups(kafka: KafkaSettings) -> None:
    """The consumer groups of the run's processes (`<prefix>ledger-builder`, ...), if the
    broker lets us: a group left behind holds only committed offsets, which expire."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(kafka.client_config(log_level=0))
    with contextlib.suppress(KafkaException):
        listed = admin.list_consumer_groups(request_timeout=10).result()
        prefix = kafka.topics.prefix
        groups = [g.group_id for g in listed.valid if g.group_id.startswith(prefix)]
        if groups:
            for fut in admin.delete_consumer_groups(groups, request_timeout=10).values():
                fut.result()


def refuse_demo_namespace(kafka: KafkaSettings, database: DatabaseSettings) -> None:
    """NamespaceError if the configured namespace is a demo run's (a shell that sourced
    env.sh): the run would remove it, and the database it makes its own beside, first."""
    db_name = str(conninfo.conninfo_to_dict(database.dsn).get("dbname") or "")
    if kafka.topics.prefix.startswith("demo.") or db_name.startswith(DB_PREFIX + "_"):
        raise NamespaceError(
            f"WAKELINE_TOPIC_PREFIX ({kafka.topics.prefix!r}) or WAKELINE_DSN (database "
            f"{db_name!r}) points at a demo run's namespace (a shell that sourced "
            "WAKELINE_HOME/demo/env.sh): unset them, or open a new shell, to run the demo"
        )


def remove_previous(kafka: KafkaSettings, out_dir: Path) -> tuple[list[str], list[str]]:
    """Remove the recorded namespaces of earlier runs; (runs removed, runs that could not be,
    each with the reason). What could not be removed stays recorded for the next run."""
    removed, failed, left = [], [], []
    for record in _read(out_dir):
        try:
            _remove(kafka, record)
            removed.append(record["run"])
        except Exception as e:  # noqa: BLE001 - reported, and retried by the next run
            failed.append(f"{record['run']} ({type(e).__name__}: {e})")
            left.append(record)
    _write(out_dir, left)
    return removed, failed


def create(kafka: KafkaSettings, database: DatabaseSettings, out_dir: Path) -> Namespace:
    """A new database next to the configured one and the topics under a new prefix, as
    `wakeline init` makes them; recorded (for the next run to remove) as soon as the database
    exists."""
    import psycopg

    from wakeline.infra.provision import initialise
    from wakeline.testkit.harness import create_database

    try:
        dsn = create_database(DB_PREFIX, database.dsn)
    except psycopg.Error as e:
        server = conninfo.conninfo_to_dict(database.dsn)
        who = server.get("user") or "the connecting role"
        raise NamespaceError(
            f"the demo needs a database of its own, and PostgreSQL refused to make one "
            f"({type(e).__name__}: {str(e).strip()}). Let {who} create databases "
            f"(ALTER ROLE {who} CREATEDB), or point WAKELINE_DSN at a server where it may; "
            "the demo never writes to the configured database itself"
        ) from e
    run = conninfo.conninfo_to_dict(dsn)["dbname"].removeprefix(DB_PREFIX + "_")
    ns = Namespace(
        run=run,
        kafka=replace(kafka, topics=Topics(f"demo.{run}.{kafka.topics.prefix}")),
        database=DatabaseSettings(dsn, external=database.external),
        admin_dsn=database.dsn,
    )
    _write(out_dir, [*_read(out_dir), ns.record()])
    try:
        initialise(ns.kafka, ns.database)  # topics, and the event schemas published
    except WakelineError as e:
        raise NamespaceError(
            f"the demo needs topics of its own under the prefix {ns.kafka.topics.prefix!r} on "
            f"{kafka.bootstrap}, and could not make them: {e}. If the broker refused, give the "
            "client the right to create and delete topics starting with 'demo.' (its "
            "credentials: WAKELINE_KAFKA_CONFIG)"
        ) from e
    return ns


def discard(ns: Namespace, out_dir: Path) -> None:
    """Remove this run's namespace now (and its record), e.g. at the end of a run."""
    _remove(ns.kafka, ns.record())
    _write(out_dir, [r for r in _read(out_dir) if r["run"] != ns.run])


def write_env(ns: Namespace, out_dir: Path) -> Path:
    """`out_dir/env.sh`: the exports that point wakeline at this run's namespace."""
    env = {
        "WAKELINE_TOPIC_PREFIX": ns.kafka.topics.prefix,
        "WAKELINE_DSN": ns.database.dsn,
        "WAKELINE_PARTITIONS": str(ns.kafka.partitions),
        "WAKELINE_KEYS_DIR": str(out_dir / "keys"),  # the demo's approver key
        "WAKELINE_HOME": str(out_dir.parent),
    }
    # how the demo reached the stack (the local one's ports, or an external broker)
    for name in (
        "WAKELINE_KAFKA_PORT",
        "WAKELINE_CONTROLLER_PORT",
        "WAKELINE_BOOTSTRAP",
        "WAKELINE_KAFKA_CONFIG",
        "WAKELINE_SIGNING_KEY",
    ):
        if os.environ.get(name):
            env[name] = os.environ[name]
    lines = [
        f"# `wakeline demo --keep`, run {ns.run}: point wakeline at the demo's topics and",
        "# database. The next `wakeline demo` removes them.",
        *(f"export {k}={shlex.quote(v)}" for k, v in env.items()),
    ]
    path = out_dir / "env.sh"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
