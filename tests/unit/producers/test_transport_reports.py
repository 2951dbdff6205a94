"""Who serves delivery reports: strict waiters resume only on their report, whichever thread
serves it (the caller while it is busy, the background thread once it is quiet)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.producers import Spool, TransportOptions
from wakeline.producers.transport import KafkaTransport


class Broker:
    """Stands in for the producer: reports are served only once `ack` is set."""

    def __init__(self) -> None:
        self.ack = threading.Event()
        self.pending: list = []
        self.lock = threading.Lock()
        self.served_by: list[str] = []

    def produce(self, topic, value, key, headers=None, on_delivery=None):  # noqa: ANN001, ANN201
        with self.lock:
            self.pending.append(on_delivery)

    def poll(self, timeout: float = 0) -> int:
        if not self.ack.is_set():
            self.ack.wait(min(timeout, 0.01))
            return 0
        with self.lock:
            ready, self.pending = self.pending, []
        for cb in ready:
            self.served_by.append(threading.current_thread().name)
            cb(None, None)
        return len(ready)

    def __len__(self) -> int:
        return len(self.pending)

    def flush(self, timeout: float = 0) -> int:
        return 0

    def purge(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        pass

    def list_topics(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        return None


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[tuple[KafkaTransport, Broker]]:
    spool = Spool(tmp_path)
    t = KafkaTransport(
        KafkaSettings(bootstrap="127.0.0.1:1", topics=Topics("unit.")),
        spool,
        TransportOptions(strict_timeout_s=5.0),
    )
    real, broker = t.producer, Broker()
    t.producer = broker  # type: ignore[assignment]
    yield t, broker
    broker.ack.set()
    t.producer = real
    t.close(timeout=0.5)


def test_async_strict_send_waits_for_its_report_then_resumes(transport) -> None:  # noqa: ANN001
    t, broker = transport

    async def main() -> None:
        task = asyncio.create_task(t.send_async("events", b"k", b"v", [], wait=True))
        await asyncio.sleep(0.1)
        assert not task.done()  # no acknowledgement: the caller must still be waiting
        broker.ack.set()  # the loop is idle: the background thread serves the report
        await asyncio.wait_for(task, 2)

    asyncio.run(main())
    assert t.spooled == 0
    assert broker.served_by == ["wakeline-poll"]


def test_many_async_strict_sends_all_resume_and_none_early(transport) -> None:  # noqa: ANN001
    t, broker = transport
    resumed: list[int] = []

    async def one(i: int) -> None:
        await t.send_async("events", str(i).encode(), b"v", [], wait=True)
        resumed.append(i)

    async def main() -> None:
        tasks = [asyncio.create_task(one(i)) for i in range(64)]
        await asyncio.sleep(0.1)
        assert resumed == []
        broker.ack.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)

    asyncio.run(main())
    assert sorted(resumed) == list(range(64))
    assert t.spooled == 0


def test_sync_strict_send_returns_only_after_its_report(transport) -> None:  # noqa: ANN001
    t, broker = transport
    threading.Timer(0.2, broker.ack.set).start()
    started = time.monotonic()
    t.send("events", b"k", b"v", [], wait=True)
    assert time.monotonic() - started >= 0.19
    assert t.spooled == 0


def test_relaxed_sends_serve_ready_reports_on_the_calling_thread(transport) -> None:  # noqa: ANN001
    t, broker = transport
    broker.ack.set()
    for i in range(50):
        t.send("events", b"k", str(i).encode(), [], wait=False)
        time.sleep(0.0005)  # longer than the serving interval: each send serves
    assert t.delivered >= 45
    assert broker.served_by.count(threading.current_thread().name) >= 40


def test_a_report_served_elsewhere_still_wakes_the_waiter(transport) -> None:  # noqa: ANN001
    """The sync waiter blocks on its lock; the background thread serves its report."""
    t, broker = transport
    threading.Timer(0.1, broker.ack.set).start()
    t.send("events", b"k", b"v", [], wait=True)
    assert broker.served_by == ["wakeline-poll"]
    assert t.delivered == 1
