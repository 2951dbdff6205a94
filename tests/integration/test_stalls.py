"""A stuck partition is loud: the runner says so at error level and in `stalled`, and
`wakeline doctor` shows the ledger as stalled (both against the real broker and database)."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import Producer

from wakeline.devstack.doctor import ledger_progress
from wakeline.errors import StoreError
from wakeline.infra.settings import KafkaSettings
from wakeline.ledger.store_postgres import PostgresLedgerStore
from wakeline.processors.service import LedgerBuilderService
from wakeline.processors.settings import BuilderSettings
from wakeline.testkit.samples import frames, traffic

pytestmark = pytest.mark.integration


def produce(kafka: KafkaSettings, n: int) -> None:
    p = Producer(kafka.client_config(**{"enable.idempotence": True}))
    for e in traffic(n, workflows=3):
        key, value, headers = frames(e)
        p.produce(kafka.topics.events, key=key, value=value, headers=headers)
    assert p.flush(30) == 0


class RefusingStore(PostgresLedgerStore):
    """A database that takes no segment (as a NUL in a text column once did)."""

    def append_segment(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise StoreError("ledger store: append failed: simulated")


def test_a_partition_that_cannot_progress_is_reported_stalled(
    fresh_kafka: KafkaSettings, fresh_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    produce(fresh_kafka, 30)
    settings = BuilderSettings(stall_after_s=2, segment_max_age_s=0.05, audit=False)
    service = LedgerBuilderService(
        fresh_kafka, settings, lambda: RefusingStore(fresh_dsn), fresh_dsn
    )
    caplog.set_level(logging.ERROR, logger="wakeline.processors.stream")
    service.start()
    try:
        deadline = time.monotonic() + 60
        while not service.stalled and time.monotonic() < deadline:
            time.sleep(0.2)
        assert service.running, service.failure
        assert service.stalled, "no partition reported stalled"
        idle, _, high, error = next(iter(service.stalled.values()))
        assert idle >= 2 and high > 0 and "simulated" in (error or "")
        assert service.restarts >= 1
        assert any("partition stalled" in r.getMessage() for r in caplog.records)
        # the doctor sees it from outside, with nothing but the broker and the database
        check = ledger_progress(fresh_kafka, fresh_dsn, stall_after_s=1)
        assert (check.ok, check.state) == (False, "stalled"), check
        assert "stalled" in check.detail
        assert ledger_progress(fresh_kafka, fresh_dsn, stall_after_s=3600).state == "behind"
    finally:
        service.stop()
    assert not service.running
