"""The foundation against the real broker and database: four round trips
(Kafka produce/consume, a Kafka transaction, a faust agent, PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from wakeline.devstack import stack
from wakeline.infra import db
from wakeline.infra.settings import KafkaSettings, StackSettings

pytestmark = pytest.mark.integration


def _new_topic(kafka: KafkaSettings, partitions: int = 3) -> str:
    name = f"{kafka.topics.prefix}scratch-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(kafka.client_config())
    for fut in admin.create_topics([NewTopic(name, num_partitions=partitions)]).values():
        fut.result(timeout=30)
    return name


def _consume_all(kafka: KafkaSettings, topic: str, expected: int, **conf: object) -> list:
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": f"g-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                **conf,
            }  # fmt: skip
        )
    )
    consumer.subscribe([topic])
    got = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error():
                    raise KafkaException(msg.error())
                got.append(msg)
        # anything beyond `expected` would show up now
        for msg in consumer.consume(500, timeout=1.0):
            if not msg.error():
                got.append(msg)
    finally:
        consumer.close()
    return got


def test_produce_and_consume_round_trip_keeps_per_key_order(kafka: KafkaSettings) -> None:
    topic = _new_topic(kafka)
    producer = Producer(kafka.client_config(**{"enable.idempotence": True, "acks": "all"}))
    sent = [(f"wf-{i % 5}".encode(), f"event-{i}".encode()) for i in range(200)]
    for key, value in sent:
        producer.produce(topic, key=key, value=value, headers=[("ce_id", value)])
    assert producer.flush(30) == 0
    got = _consume_all(kafka, topic, len(sent))
    assert len(got) == len(sent)
    by_key: dict[bytes, list[bytes]] = {}
    for msg in got:
        by_key.setdefault(msg.key(), []).append(msg.value())
        assert dict(msg.headers())["ce_id"] == msg.value()
    for key in by_key:
        assert by_key[key] == [v for k, v in sent if k == key]


def test_kafka_transaction_commits_and_aborts_on_single_node(kafka: KafkaSettings) -> None:
    topic = _new_topic(kafka, partitions=1)
    producer = Producer(kafka.client_config(**{"transactional.id": f"tx-{uuid.uuid4().hex}"}))
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"committed")
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"aborted")
    producer.abort_transaction(30)
    got = _consume_all(kafka, topic, 1, **{"isolation.level": "read_committed"})
    assert [m.value() for m in got] == [b"committed"]


def test_postgres_round_trip_and_migrations_are_idempotent(dsn: str) -> None:
    assert db.migrate(dsn) == []  # the fixture applied them already
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert db.current_version(conn) == db.latest_version()
        conn.execute("CREATE TEMP TABLE t (id int PRIMARY KEY, payload bytea)")
        conn.execute("INSERT INTO t VALUES (%s, %s)", (1, b"\x00\xffwake"))
        assert conn.execute("SELECT payload FROM t WHERE id = 1").fetchone() == (b"\x00\xffwake",)


def test_append_only_guard_refuses_update_delete_truncate(fresh_dsn: str) -> None:
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE guarded (id int)")
        conn.execute(
            "CREATE TRIGGER g BEFORE UPDATE OR DELETE ON guarded "
            "FOR EACH ROW EXECUTE FUNCTION wakeline_refuse_change()"
        )
        conn.execute(
            "CREATE TRIGGER gt BEFORE TRUNCATE ON guarded "
            "FOR EACH STATEMENT EXECUTE FUNCTION wakeline_refuse_change()"
        )
        conn.execute("INSERT INTO guarded VALUES (1)")
        for stmt in ("UPDATE guarded SET id = 2", "DELETE FROM guarded", "TRUNCATE guarded"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(stmt)
        assert conn.execute("SELECT id FROM guarded").fetchall() == [(1,)]


FAUST_APP = textwrap.dedent(
    """
    import faust

    app = faust.App(
        {app_id!r}, broker="kafka://{bootstrap}", store="memory://",
        web_enabled=False, topic_partitions=3, topic_replication_factor=1,
    )
    source = app.topic({source!r}, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    sink = app.topic({sink!r}, key_type=bytes, value_type=bytes,
                     key_serializer="raw", value_serializer="raw")

    @app.agent(source, concurrency=1)
    async def shout(stream):
        async for key, value in stream.items():
            await sink.send(key=key, value=value.upper())

    if __name__ == "__main__":
        app.main()
    """
)


def test_faust_agent_runs_against_the_real_broker(kafka: KafkaSettings, tmp_path) -> None:
    source, sink = _new_topic(kafka), _new_topic(kafka)
    app_file = tmp_path / "tiny_faust_app.py"
    app_file.write_text(
        FAUST_APP.format(
            app_id=f"{kafka.topics.prefix}faust-smoke",
            bootstrap=kafka.bootstrap,
            source=source,
            sink=sink,
        )  # fmt: skip
    )
    producer = Producer(kafka.client_config())
    for i in range(20):
        producer.produce(source, key=f"k{i % 3}".encode(), value=f"hello {i}".encode())
    assert producer.flush(30) == 0
    worker = subprocess.Popen(
        [sys.executable, str(app_file), "worker", "-l", "warn"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        got = _consume_all(kafka, sink, 20)
    finally:
        worker.terminate()
        try:
            out, _ = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate()
    assert sorted(m.value() for m in got) == sorted(f"HELLO {i}".encode() for i in range(20)), (
        out.decode(errors="replace")[-3000:]
    )


def test_stack_up_is_idempotent(local_stack: StackSettings) -> None:
    if KafkaSettings.from_env().external:
        pytest.skip("external broker configured; the local stack is not in use")
    before = stack.status(local_stack)
    report = stack.up(local_stack)
    assert report["kafka"]["started"] is False
    assert report["postgres"]["started"] is False
    assert report["kafka"]["pid"] == before["kafka"]["pid"]
    assert report["postgres"]["pid"] == before["postgres"]["pid"]
