"""PostgreSQL access shared by the components: connections and versioned migrations.

Migrations are the numbered `migrations/NNNN_name.sql` files next to this module. Each runs
once, in its own transaction, under an advisory lock, and is recorded in
`wakeline_migrations`; running `migrate()` again is a no-op. Never edit a migration that has
landed: add the next number.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from wakeline.errors import StoreError

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x57414B45  # "WAKE": one advisory lock for every migrating process


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    folder = resources.files("wakeline.infra") / "migrations"
    found: list[Migration] = []
    for entry in folder.iterdir():
        m = _MIGRATION_NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text()))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise StoreError(f"two migrations share a number: {versions}")
    return found


def latest_version() -> int:
    migrations = available_migrations()
    return migrations[-1].version if migrations else 0


def connect(dsn: str, *, autocommit: bool = False, timeout: float = 10) -> psycopg.Connection:
    """Open a connection; driver errors become one StoreError naming the target."""
    try:
        return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=max(1, int(timeout)))
    except psycopg.Error as e:
        raise StoreError(f"cannot connect to PostgreSQL at {redact_dsn(dsn)}: {e}") from e


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced, for messages and logs."""
    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password=)\S+", r"\1***", dsn)


def current_version(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT to_regclass('wakeline_migrations') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM wakeline_migrations").fetchone()
    return int(row[0]) if row else 0


def migrate(dsn: str) -> list[Migration]:
    """Apply every migration not yet applied; return the ones applied now."""
    applied: list[Migration] = []
    with connect(dsn, autocommit=True) as conn:
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS wakeline_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {r[0] for r in conn.execute("SELECT version FROM wakeline_migrations")}
                for mig in available_migrations():
                    if mig.version in done:
                        continue
                    with conn.transaction():
                        conn.execute(mig.sql)  # type: ignore[arg-type]
                        conn.execute(
                            "INSERT INTO wakeline_migrations (version, name) VALUES (%s, %s)",
                            (mig.version, mig.name),
                        )
                    log.info("migration applied version=%d name=%s", mig.version, mig.name)
                    applied.append(mig)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
        except psycopg.Error as e:
            raise StoreError(f"migration failed: {e}") from e
    return applied
