"""Fixtures shared by every test.

Integration tests (marked `integration`) run against the real local stack (or the services
named by WAKELINE_BOOTSTRAP / WAKELINE_DSN). Each test session gets its own topic prefix and
its own database, so runs never see each other's data. Under CI a stack that cannot start
fails the run; elsewhere the integration tests are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest
from psycopg import conninfo

from wakeline.devstack import stack
from wakeline.errors import WakelineError
from wakeline.infra import db, topics
from wakeline.infra.settings import DatabaseSettings, KafkaSettings, StackSettings, Topics

TEST_PARTITIONS = 3


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the stack is required under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def stack_settings() -> StackSettings:
    return StackSettings.from_env()


@pytest.fixture(scope="session")
def local_stack(stack_settings: StackSettings) -> StackSettings:
    """The running local stack (started if needed). External services are used as they are."""
    kafka_ext = KafkaSettings.from_env().external
    db_ext = DatabaseSettings.from_env().external
    try:
        stack.up(stack_settings, kafka=not kafka_ext, postgres=not db_ext)
    except WakelineError as e:
        _unavailable(f"cannot start the local stack: {e}")
    return stack_settings


@pytest.fixture(scope="session")
def kafka(local_stack: StackSettings) -> Iterator[KafkaSettings]:
    """KafkaSettings with a unique topic prefix and every topic created."""
    base = KafkaSettings.from_env()
    settings = replace(
        base, topics=Topics(f"t{uuid.uuid4().hex[:10]}.wakeline."), partitions=TEST_PARTITIONS
    )
    try:
        topics.ensure_topics(settings)
    except WakelineError as e:
        _unavailable(str(e))
    yield settings
    with contextlib.suppress(Exception):  # best effort; the prefix is unique anyway
        topics.delete_topics(settings, under_prefix=True)


@pytest.fixture
def fresh_kafka(kafka: KafkaSettings) -> Iterator[KafkaSettings]:
    """Topics of their own for one test (e.g. a worker that reads the events topic from
    offset 0 must see only this test's records), removed afterwards."""
    settings = replace(kafka, topics=Topics(f"t{uuid.uuid4().hex[:10]}.wakeline."))
    topics.ensure_topics(settings)
    yield settings
    with contextlib.suppress(Exception):
        topics.delete_topics(settings, under_prefix=True)


def _create_database() -> str:
    base = DatabaseSettings.from_env().dsn
    name = f"wl_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as e:
        _unavailable(f"cannot reach PostgreSQL: {e}")
    dsn = conninfo.make_conninfo(base, dbname=name)
    db.migrate(dsn)
    return dsn


def _drop_database(dsn: str) -> None:
    name = conninfo.conninfo_to_dict(dsn)["dbname"]
    base = DatabaseSettings.from_env().dsn
    try:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.Error:
        pass


@pytest.fixture(scope="session")
def dsn(local_stack: StackSettings) -> Iterator[str]:
    """A fresh database for the test session, every migration applied."""
    value = _create_database()
    yield value
    _drop_database(value)


@pytest.fixture
def fresh_dsn(local_stack: StackSettings) -> Iterator[str]:
    """A fresh migrated database for one test."""
    value = _create_database()
    yield value
    _drop_database(value)
