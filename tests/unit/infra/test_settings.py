from __future__ import annotations

from pathlib import Path

import pytest

from wakeline.devstack import stack
from wakeline.errors import ConfigError
from wakeline.infra.settings import DatabaseSettings, KafkaSettings, StackSettings


def test_defaults_point_at_the_local_stack() -> None:
    k = KafkaSettings.from_env({})
    assert k.bootstrap == "127.0.0.1:19092" and not k.external
    assert k.topics.events == "wakeline.events" and k.partitions == 12
    d = DatabaseSettings.from_env({"WAKELINE_HOME": "/tmp/wl"})
    assert d.dsn == "postgresql://postgres@/postgres?host=/tmp/wl/pg" and not d.external


def test_external_services_win() -> None:
    env = {"WAKELINE_BOOTSTRAP": "kafka-1:9092,kafka-2:9092", "WAKELINE_DSN": "postgresql://x/y"}
    assert KafkaSettings.from_env(env).bootstrap == "kafka-1:9092,kafka-2:9092"
    assert KafkaSettings.from_env(env).external
    assert DatabaseSettings.from_env(env) == DatabaseSettings("postgresql://x/y", external=True)


def test_prefix_partitions_and_client_extras() -> None:
    env = {
        "WAKELINE_TOPIC_PREFIX": "acme.",
        "WAKELINE_PARTITIONS": "3",
        "WAKELINE_KAFKA_CONFIG": "security.protocol=SASL_SSL, sasl.mechanism=PLAIN",
    }
    k = KafkaSettings.from_env(env)
    assert k.topics.all()[0] == "acme.events" and len(k.topics.all()) == 10
    assert k.partitions == 3
    conf = k.client_config(**{"group.id": "g"})
    assert conf["security.protocol"] == "SASL_SSL" and conf["group.id"] == "g"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WAKELINE_PARTITONS": "3"}, "unknown setting WAKELINE_PARTITONS"),
        ({"WAKELINE_PARTITIONS": "three"}, "WAKELINE_PARTITIONS='three' is not a whole number"),
        ({"WAKELINE_KAFKA_PORT": "70000"}, "out of range"),
        ({"WAKELINE_TOPIC_PREFIX": "bad prefix"}, "may hold only"),
        ({"WAKELINE_KAFKA_CONFIG": "novalue"}, "is not key=value"),
        ({"WAKELINE_KAFKA_PORT": "5000", "WAKELINE_CONTROLLER_PORT": "5000"}, "must differ"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        KafkaSettings.from_env(env)


def test_stack_paths_live_under_home(tmp_path: Path) -> None:
    s = StackSettings.from_env({"WAKELINE_HOME": str(tmp_path)})
    assert s.kafka_dir == tmp_path / "kafka" and s.pg_dir == tmp_path / "pg"
    assert s.controller_port == s.kafka_port + 1


def test_missing_java_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack.shutil, "which", lambda name: None)
    with pytest.raises(stack.StackError, match="Java not found.*Java 17\\+"):
        stack.check_java()
    with pytest.raises(stack.StackError, match="Maven not found"):
        stack.check_maven()


def test_pinned_kafka_is_4x() -> None:
    assert stack.kafka_version_pinned().startswith("4.")


def test_every_variable_the_code_reads_is_known() -> None:
    """A variable read somewhere but declared by no component would be refused as a typo."""
    import re

    from wakeline.infra.settings import known_variables

    KNOWN_VARIABLES = known_variables()

    repo = Path(__file__).resolve().parents[3]
    read: set[str] = set()
    folders = ("wakeline", "infra", "schemas", "ledger", "producers", "processors", "compensator")
    for folder in (*folders, "cli"):
        for f in (repo / folder).rglob("*.py"):
            read |= set(re.findall(r"WAKELINE_[A-Z0-9_]*[A-Z0-9]", f.read_text()))
    assert read - KNOWN_VARIABLES == set()


def test_cluster_ids_never_look_like_an_option() -> None:
    # one in 64 URL-safe base64 ids starts with '-', which StorageTool's parser rejects
    ids = [stack._kafka_cluster_id() for _ in range(5000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)
