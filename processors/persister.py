"""The builder's second thread: stores prepared segments, publishes their headers, records
the publication and commits the consumer offsets, in segment order.

While PostgreSQL works on one batch of segments (the wait releases the GIL), the consumer
thread is already reading and hashing the next, so the database's time and Python's overlap.
The queue is bounded: a slow database slows consumption instead of filling memory.

On any failure the persister stops storing (what is queued is dropped) and keeps the error
in `failure` until `reset()`: the consumer thread then reloads every partition from the
store, which holds exactly what was committed, and seeks the consumer there.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable

from wakeline.ledger.store import LedgerStore

from .builder import LedgerBuilder, Prepared, SealedSegment
from .publisher import HeaderPublisher, PublicationLog

log = logging.getLogger(__name__)

_STOP = object()


class Persister:
    def __init__(
        self,
        builder: LedgerBuilder,
        store_factory: Callable[[], LedgerStore],
        publisher: HeaderPublisher,
        publications: PublicationLog,
        commit: Callable[[dict[int, int]], None],
        *,
        on_segments: Callable[[list[SealedSegment]], None] | None = None,
        max_queued: int = 64,
    ) -> None:
        self.builder = builder
        self._store_factory = store_factory
        self._store: LedgerStore | None = None
        self.publisher = publisher
        self.publications = publications
        self.commit = commit
        self.on_segments = on_segments
        self._queue: queue.Queue[object] = queue.Queue(max_queued)
        self.failure: BaseException | None = None
        self.segments_stored = 0
        self.records_stored = 0
        self._thread = threading.Thread(target=self._run, name="ledger-persister", daemon=True)
        self._thread.start()

    def submit(self, preps: list[Prepared]) -> None:
        """Queue segments in order; blocks while the queue is full (backpressure)."""
        for prep in preps:
            self._queue.put(prep)

    def drain(self) -> None:
        """Wait until everything submitted is stored and published (or dropped on failure)."""
        self._queue.join()

    def reset(self) -> None:
        """Forget a failure once the caller has reloaded from the store."""
        self.drain()
        self.failure = None
        self._close_store()

    def close(self) -> None:
        self.drain()
        self._queue.put(_STOP)
        self._thread.join(30)
        self._close_store()

    def _close_store(self) -> None:
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()
            self._store = None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._queue.task_done()
                return
            batch = [item]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 256:
                    nxt = self._queue.get_nowait()
                    if nxt is _STOP:
                        self._queue.put(_STOP)  # handled after this batch
                        self._queue.task_done()
                        break
                    batch.append(nxt)
            try:
                if self.failure is None:
                    self._persist(batch)  # type: ignore[arg-type]
            except BaseException as e:  # noqa: BLE001 - handed to the consumer thread
                log.warning("persisting failed, the builder will reload: %s", e)
                self.failure = e
                self._close_store()
                self.publications.close()
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _persist(self, batch: list[Prepared]) -> None:
        if self._store is None:
            self._store = self._store_factory()
        sealed = [self.builder.persist(prep, self._store) for prep in batch]
        headers = [s.header for s in sealed]
        self.publisher.publish(headers)
        self.publications.mark(headers)
        nxt: dict[int, int] = {}
        for h in headers:
            nxt[h.partition] = h.last_offset + 1
        self.commit(nxt)
        self.segments_stored += len(sealed)
        self.records_stored += sum(h.leaf_count for h in headers)
        if self.on_segments is not None:
            self.on_segments(sealed)
