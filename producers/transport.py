"""How the SDK's events leave the process: the `Transport` protocol and its two transports.

`Transport` is what an `Emitter` needs: `send` / `send_async` (with `wait=True`: return only
once the event is durable: acknowledged by the broker, or fsync'd into the spool), `flush`,
`close`. `KafkaTransport` is the default; `SpoolTransport` only writes the spool (a host that
cannot reach the broker; a later emitter on the same spool directory drains it); tests pass
their own recorder. A future HTTP gateway is one more class with these four methods.

`KafkaTransport`: one Kafka producer per emitter, shared by every call; the spool behind it.

Every event is produced with `on_delivery` bound to a `_Pending`; delivery reports resolve
waiters as they arrive, so many concurrent strict calls ride the same produce request
(batching), each waiting only for its own report.

Who serves the reports matters: confluent-kafka takes the GIL once per report, so a
background thread serving them while the caller runs Python makes the two threads fight
over the GIL (the caller stalls up to the 5 ms switch interval). So reports are served by the
threads that produce, whenever they are active:

- a relaxed send serves what is ready (`poll(0)`) right after producing (at most every
  `_SERVE_EVERY_S`, so reports are served in batches);
- a sync strict waiter blocks on a per-message lock the report releases, and hands the
  polling to the background thread while it waits (a caller polling in a loop itself
  measured slower: more wake-ups, more CPU per call);
- async strict waiters await a future; a per-loop pump polls on the loop thread while the
  loop is busy and resolves futures directly; when a round serves nothing it hands over to
  the background thread, which waits for reports and wakes the loop once per batch;
- the background thread polls only after the callers have been quiet for a moment
  (`idle_poll_s`): it covers idle periods (relaxed reports, failures, async waiters).

Spooling: a failed delivery, a strict wait that times out, or a full local queue switches
the transport to *spooling*: from then on every event is appended to the spool (strict ones
fsync'd before the call proceeds) and queued messages are purged into it, so the spool holds
one ordered run. A drainer thread waits for the producer to be empty and the broker to answer,
then produces the spooled records in emit order (`seq`), and deletes segments only after every
record in them is acknowledged. When the spool is empty again the transport goes direct.
An event may reach the broker twice (an unacknowledged send later delivered and also
spooled); every event has its own `event_id`, so readers dedupe.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Producer

from wakeline.infra.settings import KafkaSettings
from wakeline.producers.errors import EmitterClosed, SpoolError
from wakeline.producers.spool import Header, Spool, SpoolRecord

log = logging.getLogger(__name__)

PENDING, DELIVERED, SPOOLED = 0, 1, 2
#: a relaxed send serves ready reports if none were served for this long (batches them)
_SERVE_EVERY_S = 0.0002
_TIMED_OUT = object()


@dataclass(frozen=True)
class TransportOptions:
    """Producer tuning. `linger_ms` trades single-call latency for batching."""

    linger_ms: float = 0.0
    #: librdkafka gives up on a message after this long (then it is spooled)
    delivery_timeout_s: float = 30.0
    #: a strict call waits this long for the broker, then fsyncs the intent to the spool
    strict_timeout_s: float = 5.0
    drain_interval_s: float = 0.5
    #: the background thread serves delivery reports once callers were quiet this long
    idle_poll_s: float = 0.002
    producer_config: Mapping[str, Any] | None = None


class _Pending:
    __slots__ = ("rec", "transport", "lock", "loop", "future", "state", "from_spool", "error")

    def __init__(self, rec: SpoolRecord, transport: KafkaTransport) -> None:
        self.rec = rec
        self.transport = transport
        self.lock: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.future: asyncio.Future[Any] | None = None
        self.state = PENDING
        self.from_spool = False
        self.error: KafkaError | None = None

    def __call__(self, err: KafkaError | None, _msg: Any) -> None:  # delivery report
        t = self.transport
        if err is None:
            if self.state == PENDING:
                self.state = DELIVERED
            t.delivered += 1
            self._wake()
        else:
            self.error = err
            if err.fatal():
                t._fatal = err
            t._failures.append(self)

    def _wake(self) -> None:
        if self.lock is not None:
            self.lock.release()
        elif self.future is not None:
            self.transport._async_done.append(self)


def _set_done(items: list[_Pending]) -> None:
    for p in items:
        fut = p.future
        if fut is not None and not fut.done():
            fut.set_result(p.state)


class _Pump:
    """Polls the producer on one event loop's thread while that loop has strict waiters."""

    __slots__ = ("transport", "loop", "waiting", "scheduled")

    def __init__(self, transport: KafkaTransport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.waiting = 0  # this loop's unresolved strict sends
        self.scheduled = False

    def start(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.step)

    def step(self) -> None:
        self.scheduled = False
        t = self.transport
        served = t._serve(0.0, self.loop)
        if self.waiting > 0:
            if served:
                self.start()  # busy: poll again after the tasks that just woke have run
            else:
                t._hand_over()  # quiet: let the background thread wait for the reports


class Transport(Protocol):
    """The producer side of an `Emitter`."""

    def send(
        self, topic: str, key: bytes, value: bytes, headers: Sequence[Header], *, wait: bool
    ) -> None: ...

    async def send_async(
        self, topic: str, key: bytes, value: bytes, headers: Sequence[Header], *, wait: bool
    ) -> None: ...

    def flush(self, timeout: float = 30.0) -> int:
        """Wait until every event is on the broker; how many are not (0 = all)."""
        ...

    def close(self, timeout: float = 30.0) -> int:
        """Flush up to `timeout`, then release everything; how many are undelivered."""
        ...


class SpoolTransport:
    """Every event into the spool, in order; `wait=True` fsyncs it before returning.

    Nothing reaches the broker from here: `flush` and `close` count every event as
    undelivered (it is durable, and a `KafkaTransport` on the same directory sends it)."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._seq = itertools.count(spool.max_seq() + 1)
        self._lock = threading.Lock()
        self._closed = False
        self.spooled = 0

    def send(
        self, topic: str, key: bytes, value: bytes, headers: Sequence[Header], *, wait: bool
    ) -> None:
        with self._lock:
            if self._closed:
                raise EmitterClosed("the emitter is closed")
            rec = SpoolRecord(next(self._seq), topic, key, value, list(headers))
            self.spool.append([rec], sync=wait)
            self.spooled += 1

    async def send_async(
        self, topic: str, key: bytes, value: bytes, headers: Sequence[Header], *, wait: bool
    ) -> None:
        self.send(topic, key, value, headers, wait=wait)

    def flush(self, timeout: float = 30.0) -> int:
        self.spool.sync()
        return self.spooled

    def close(self, timeout: float = 30.0) -> int:
        with self._lock:
            self._closed = True
        self.spool.close()
        return self.spooled


class KafkaTransport:
    def __init__(
        self, kafka: KafkaSettings, spool: Spool, options: TransportOptions | None = None
    ) -> None:
        self.options = options or TransportOptions()
        self.spool = spool
        conf = kafka.producer_config(
            **{
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": self.options.linger_ms,
                "message.timeout.ms": int(self.options.delivery_timeout_s * 1000),
                "reconnect.backoff.max.ms": 1000,
                "socket.connection.setup.timeout.ms": 5000,
                "logger": logging.getLogger("wakeline.producers.librdkafka"),
                **dict(self.options.producer_config or {}),
            }
        )
        self._conf = conf
        self.producer = Producer(conf)
        #: set when the producer hit a fatal error (idempotence broken): the drainer replaces it
        self._fatal: KafkaError | None = None
        self._seq = itertools.count(spool.max_seq() + 1)
        self._lock = threading.Lock()
        self._spooling = not spool.is_empty()
        self._purge_needed = False
        self._failures: deque[_Pending] = deque()
        self._async_done: deque[_Pending] = deque()
        #: async strict waiters in send order; the poller expires those past their deadline
        self._async_deadlines: deque[tuple[float, _Pending]] = deque()
        self._deadlines_lock = threading.Lock()
        self._stop = threading.Event()
        #: when a caller last served delivery reports (the background thread defers to it)
        self._active_at = 0.0
        self._wake_poller = threading.Event()
        self._pumps: dict[asyncio.AbstractEventLoop, _Pump] = {}
        self._closed = False
        self.delivered = 0
        self.spooled = 0
        self.drained = 0
        self._poller = threading.Thread(target=self._poll_loop, name="wakeline-poll", daemon=True)
        self._drainer = threading.Thread(
            target=self._drain_loop, name="wakeline-drain", daemon=True
        )
        self._poller.start()
        self._drainer.start()

    # -- sending --------------------------------------------------------------------------
    @property
    def spooling(self) -> bool:
        return self._spooling

    def _record(
        self, topic: str, key: bytes, value: bytes, headers: Sequence[Header]
    ) -> SpoolRecord:
        if self._closed:
            raise EmitterClosed("the emitter is closed")
        return SpoolRecord(next(self._seq), topic, key, value, headers)

    def _to_spool_if_spooling(self, rec: SpoolRecord, sync: bool) -> bool:
        if not self._spooling:
            return False
        with self._lock:
            if not self._spooling:
                return False
            self.spool.append([rec], sync=sync)
            self.spooled += 1
            return True

    def _serve(self, timeout: float, loop: asyncio.AbstractEventLoop | None = None) -> int:
        """Serve ready delivery reports on this thread (waiting up to `timeout`)."""
        self._active_at = time.monotonic()
        served = self.producer.poll(timeout)
        if self._failures or self._async_done or self._purge_needed or self._async_deadlines:
            self._after_poll(loop)
        return served

    def _hand_over(self) -> None:
        """Callers went quiet with reports outstanding: the background thread takes over."""
        self._active_at = 0.0
        self._wake_poller.set()

    def _produce(self, p: _Pending) -> bool:
        rec = p.rec
        try:
            self.producer.produce(rec.topic, rec.value, rec.key, headers=rec.headers, on_delivery=p)
            return True
        except BufferError:
            self._enter_spooling("local producer queue is full")
        except KafkaException as e:
            if e.args and isinstance(e.args[0], KafkaError) and e.args[0].fatal():
                self._fatal = e.args[0]
            self._enter_spooling(f"produce failed: {e}")
        with self._lock:
            self.spool.append([rec], sync=True)
            self.spooled += 1
            p.state = SPOOLED
        return False

    def send(
        self, topic: str, key: bytes, value: bytes, headers: Sequence[Header], *, wait: bool
    ) -> None:
        """Produce; with `wait`, return only once acknowledged by the broker or fsync'd."""
        if self._closed:
            raise EmitterClosed("the emitter is closed")
        rec = SpoolRecord(next(self._seq), topic, key, value, headers)
        if self._spooling and self._to_spool_if_spooling(rec, sync=wait):
            return
        p = _Pending(rec, self)
        if wait:
            p.lock = _thread.allocate_lock()
            p.lock.acquire()
        if not self._produce(p):
            return
        if not wait:
            if time.monotonic() - self._active_at >= _SERVE_EVERY_S:
                self._serve(0.0)
            return
        self._hand_over()
        if not p.lock.acquire(timeout=self.options.strict_timeout_s):
            self._spool_unacknowledged(p)

    async def send_async(
        self, topic: str, key: bytes, value: bytes, headers: Sequence[Header], *, wait: bool
    ) -> None:
        if not wait:
            self.send(topic, key, value, headers, wait=False)
            return
        rec = self._record(topic, key, value, headers)
        if self._to_spool_if_spooling(rec, sync=True):
            return
        loop = asyncio.get_running_loop()
        p = _Pending(rec, self)
        p.loop = loop
        fut = p.future = loop.create_future()
        if not self._produce(p):
            return
        self._async_deadlines.append((time.monotonic() + self.options.strict_timeout_s, p))
        pump = self._pumps.get(loop)
        if pump is None:
            pump = self._pumps[loop] = _Pump(self, loop)
        pump.waiting += 1
        pump.start()
        try:
            state = await fut
        finally:
            pump.waiting -= 1
        if state is _TIMED_OUT:
            self._spool_unacknowledged(p)

    def _spool_unacknowledged(self, p: _Pending) -> None:
        """A strict send the broker did not acknowledge in time: make it durable locally."""
        with self._lock:
            if p.state != PENDING:
                return  # delivered meanwhile, or already spooled by its failure report
            self.spool.append([p.rec], sync=True)
            self.spooled += 1
            p.state = SPOOLED
        self._enter_spooling(f"no acknowledgement within {self.options.strict_timeout_s}s")

    def _enter_spooling(self, why: str) -> None:
        if not self._spooling:
            log.warning("broker unavailable (%s): spooling events to %s", why, self.spool.directory)
            self._spooling = True
            self._purge_needed = True

    # -- background: delivery reports -----------------------------------------------------
    def _poll_loop(self) -> None:
        idle = self.options.idle_poll_s
        wait = idle
        while not self._stop.is_set():
            try:
                quiet = time.monotonic() - self._active_at
                if quiet < idle:  # a caller is serving reports: stay out of its way
                    self._wake_poller.wait(idle - quiet)
                    self._wake_poller.clear()
                    wait = idle
                    continue
                # Short waits while reports flow (notice soon when a caller is active
                # again), longer ones when nothing happens.
                served = self.producer.poll(wait)
                wait = idle if served else min(wait * 2, 0.05)
                self._after_poll()
            except Exception:  # noqa: BLE001 - the poller must survive anything
                log.exception("delivery poller error")

    def _after_poll(self, here: asyncio.AbstractEventLoop | None = None) -> None:
        """Act on what the served reports left: failures, async waiters, purges.

        `here` is the event loop running on this thread, if any: its futures are resolved
        directly; other loops get one `call_soon_threadsafe` each.
        """
        if self._failures:
            self._handle_failures()
        if self._async_done:
            by_loop: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
            done = self._async_done
            while done:
                p = done.popleft()
                by_loop.setdefault(p.loop, []).append(p)  # type: ignore[arg-type]
            for loop, items in by_loop.items():
                if loop is here:
                    _set_done(items)
                    continue
                with contextlib.suppress(RuntimeError):  # loop closed: nobody waits
                    loop.call_soon_threadsafe(_set_done, items)
        deadlines = self._async_deadlines
        if deadlines and self._deadlines_lock.acquire(blocking=False):
            try:
                while deadlines and deadlines[0][1].state != PENDING:
                    deadlines.popleft()  # resolved: nothing to expire
                if deadlines and deadlines[0][0] <= time.monotonic():
                    self._expire_async(deadlines, here)
            finally:
                self._deadlines_lock.release()
        if self._purge_needed:
            self._purge_needed = False
            self.producer.purge(in_queue=True, in_flight=False, blocking=False)

    def _expire_async(
        self,
        deadlines: deque[tuple[float, _Pending]],
        here: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        now = time.monotonic()
        while deadlines and deadlines[0][0] <= now:
            _, p = deadlines.popleft()
            fut, loop = p.future, p.loop
            if p.state == PENDING and fut is not None and loop is not None and not fut.done():
                if loop is here:
                    _expire(fut)
                    continue
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_expire, fut)

    def _handle_failures(self) -> None:
        failed: list[_Pending] = []
        while self._failures:
            failed.append(self._failures.popleft())
        fresh = [p for p in failed if not p.from_spool and p.state == PENDING]
        for p in failed:
            if p.from_spool:
                continue
            code = p.error.code() if p.error is not None else None
            if code not in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT):
                self._enter_spooling(str(p.error))
        if fresh:
            with self._lock:
                try:
                    self.spool.append([p.rec for p in fresh], sync=True)
                except SpoolError:
                    log.exception("cannot spool %d undelivered events", len(fresh))
                    raise
                self.spooled += len(fresh)
                self._spooling = True
                for p in fresh:
                    p.state = SPOOLED
        for p in failed:
            if not p.from_spool:
                p._wake()

    # -- background: draining the spool ---------------------------------------------------
    def _drain_loop(self) -> None:
        while not self._stop.wait(self.options.drain_interval_s):
            try:
                if self._fatal is not None:
                    self._replace_producer()
                while self._spooling and not self._stop.is_set() and self._drain_once():
                    pass
            except Exception:  # noqa: BLE001
                log.exception("spool drain error")

    def _replace_producer(self) -> None:
        """After a fatal error the producer refuses everything: swap in a new one.

        What the old one still holds is purged; the purge reports route it to the spool,
        from where the new producer delivers it in order.
        """
        log.error("producer fatal error (%s): replacing the producer", self._fatal)
        self._enter_spooling(f"fatal producer error: {self._fatal}")
        old = self.producer
        with self._lock:
            self.producer = Producer(self._conf)
            self._fatal = None
        old.purge(in_queue=True, in_flight=True, blocking=True)
        old.poll(0)
        self._after_poll()

    def _broker_reachable(self) -> bool:
        try:
            self.producer.list_topics(timeout=1.0)
            return True
        except KafkaException:
            return False

    def _drain_once(self) -> bool:
        """One round; True when it made progress and another round may follow at once."""
        if len(self.producer) > 0 or not self._broker_reachable():
            return False
        segments = self.spool.rotate()
        records = self.spool.read(segments)
        seen: set[int] = set()
        pendings: list[_Pending] = []
        for rec in records:
            if rec.seq in seen:
                continue
            seen.add(rec.seq)
            p = _Pending(rec, self)
            p.from_spool = True
            while True:
                try:
                    self.producer.produce(
                        rec.topic, rec.value, rec.key, headers=list(rec.headers), on_delivery=p
                    )
                    break
                except BufferError:
                    self.producer.poll(0.1)
            pendings.append(p)
        deadline = time.monotonic() + self.options.delivery_timeout_s + 5
        while time.monotonic() < deadline and any(
            p.state == PENDING and p.error is None for p in pendings
        ):
            time.sleep(0.01)
        if any(p.state != DELIVERED for p in pendings):
            log.warning(
                "spool drain: %d of %d not acknowledged; will retry",
                sum(p.state != DELIVERED for p in pendings),
                len(pendings),
            )
            return False
        self.spool.discard(segments)
        self.drained += len(pendings)
        with self._lock:
            if self.spool.is_empty():
                self._spooling = False
                log.info("spool drained (%d events); sending directly again", self.drained)
                return False
        return True

    # -- lifecycle ------------------------------------------------------------------------
    def pending_count(self) -> int:
        """Events not yet acknowledged: in the producer, plus whether the spool holds any."""
        return len(self.producer) + (0 if self.spool.is_empty() else 1)

    def flush(self, timeout: float = 30.0) -> int:
        """Wait until everything is on the broker; returns how many events are not (0 = all)."""
        deadline = time.monotonic() + timeout
        self.producer.flush(max(0.0, deadline - time.monotonic()))
        while self._spooling and time.monotonic() < deadline:
            time.sleep(0.02)
        self._after_poll()
        left = len(self.producer)
        if self._spooling:
            left += len(self.spool.read())
        return left

    def close(self, timeout: float = 30.0) -> int:
        """Flush for up to `timeout`; whatever is still undelivered stays in the spool."""
        if self._closed:
            return 0
        left = self.flush(timeout)
        self._closed = True
        if len(self.producer) > 0:
            self._enter_spooling("closing with undelivered events")
            self.producer.purge(in_queue=True, in_flight=True, blocking=True)
            self.producer.poll(0)
            self._after_poll()
        self._stop.set()
        self._wake_poller.set()
        self._poller.join(timeout=5)
        self._drainer.join(timeout=5)
        self._after_poll()
        self.spool.close()
        return left


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(_TIMED_OUT)
