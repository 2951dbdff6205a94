"""`wakeline doctor`: check every prerequisite and say exactly what is wrong and how to fix it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from wakeline.errors import WakelineError
from wakeline.infra import db, stack, topics
from wakeline.infra.settings import DatabaseSettings, KafkaSettings, StackSettings


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks(
    stack_settings: StackSettings, kafka: KafkaSettings, database: DatabaseSettings
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
