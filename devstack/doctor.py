"""`wakeline doctor`: check every prerequisite and say exactly what is wrong and how to fix it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from wakeline.devstack import stack
from wakeline.errors import WakelineError
from wakeline.infra import db, topics
from wakeline.infra.settings import DatabaseSettings, KafkaSettings, StackSettings


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    #: a word for the state when "ok"/"FAIL" says too little (the ledger: up to date,
    #: behind, stalled)
    state: str = ""


def run_checks(
    stack_settings: StackSettings,
    kafka: KafkaSettings,
    database: DatabaseSettings,
    *,
    stall_after_s: float = 60.0,
) -> list[Check]:
    checks: list[Check] = []
    if not kafka.external:
        v = stack.java_version()
        checks.append(
            Check(
                "java",
                v is not None and v >= stack.MIN_JAVA,
                f"Java {v}" if v else "not found",
                "install Java 17+ (apt-get install openjdk-17-jre-headless)",
            )  # fmt: skip
        )
        mvn = shutil.which("mvn")
        checks.append(
            Check(
                "maven",
                mvn is not None,
                mvn or "not found",
                "install Maven (apt-get install maven); it fetches the Kafka jars",
            )  # fmt: skip
        )
    where = "external" if kafka.external else "local stack"
    try:
        missing = topics.missing_topics(kafka, timeout=5)
        checks.append(Check("broker", True, f"{kafka.bootstrap} ({where}) answers"))
        checks.append(
            Check(
                "topics",
                not missing,
                "all present" if not missing else "missing: " + ", ".join(missing),
                "run `wakeline init`",
            )  # fmt: skip
        )
    except WakelineError as e:
        fix = "check WAKELINE_BOOTSTRAP" if kafka.external else "run `wakeline stack up`"
        checks.append(Check("broker", False, f"{kafka.bootstrap} ({where}): {e}", fix))
    dwhere = "external" if database.external else "local stack"
    try:
        with db.connect(database.dsn, autocommit=True, timeout=5) as conn:
            version = db.current_version(conn)
        checks.append(Check("database", True, f"{db.redact_dsn(database.dsn)} ({dwhere}) answers"))
        latest = db.latest_version()
        checks.append(
            Check(
                "schema version",
                version == latest,
                f"at {version}, code expects {latest}",
                "run `wakeline init`",
            )  # fmt: skip
        )
    except WakelineError as e:
        fix = "check WAKELINE_DSN" if database.external else "run `wakeline stack up`"
        checks.append(Check("database", False, str(e).splitlines()[0], fix))
        return checks
    checks.append(ledger_progress(kafka, database.dsn, stall_after_s))
    return checks


def ledger_progress(kafka: KafkaSettings, dsn: str, stall_after_s: float) -> Check:
    """Whether the ledger keeps up with the events topic: `stalled` when a partition holds
    records older than `stall_after_s` that are not ledgered (a stuck or stopped builder),
    `behind` when it only lags."""
    from wakeline.infra.kafka_source import unledgered_tails
    from wakeline.ledger.store_postgres import PostgresLedgerStore

    fix = (
        "is `wakeline worker` running? its log says why at error level ('partition "
        "stalled'); `ledger-verify` reports the same records as incomplete"
    )
    try:
        with PostgresLedgerStore(dsn, connect_timeout=5) as store:
            last = {
                p: seg[0].last_offset for p in store.partitions() if (seg := store.last_segment(p))
            }
        tails = unledgered_tails(kafka, last, timeout=5)
    except Exception as e:  # the broker or the database answered above; say what failed
        return Check("ledger", False, f"progress unknown: {e}", fix, "unknown")
    stalled = [t for t in tails if (t.age_s() or 0) > stall_after_s]
    if stalled:
        worst = max(stalled, key=lambda t: t.age_s() or 0)
        parts = ", ".join(str(t.partition) for t in stalled)
        return Check(
            "ledger",
            False,
            f"stalled: partition(s) {parts} hold records not ledgered after "
            f"{stall_after_s:.0f} s (partition {worst.partition}: {worst.count} records from "
            f"offset {worst.first_offset}, the oldest {worst.age_s():.0f} s old)",
            fix,
            "stalled",
        )
    if tails:
        total = sum(t.count for t in tails)
        detail = f"{total} records not yet ledgered (catching up)"
        return Check("ledger", True, detail, state="behind")
    return Check("ledger", True, "every record of the events topic is ledgered", state="up to date")
