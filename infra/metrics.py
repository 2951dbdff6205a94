"""Metrics: one small interface, a no-op implementation and a Prometheus one.

Every metric Wakeline exports is declared below as a `Spec` (name `wakeline_*`, kind, help,
label names), so the list a dashboard can use is this file. Values reach a scrape two ways:

- `inc(spec, *labels)`: a counter bumped where the thing happens (the SDK's calls and
  refusals, which nothing else counts);
- `observe(source)`: a callable run on every scrape that returns `Sample`s read from counters
  a component keeps anyway (the runners' records, restarts, lag, the builder's segments).
  Nothing is added to the hot path; a source that raises is logged and left out of that
  scrape, the others are still served.

`NO_METRICS` does nothing. `PrometheusMetrics` imports prometheus-client when it is built,
never on import of this module: an agent that does not enable metrics never loads it. It keeps
its own `CollectorRegistry` (not the library's global one) and serves it with
`serve(port, host)`; `render()` gives the text a scrape would.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from wakeline.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Spec:
    """One metric: its name, kind, help text and label names. A counter's exposed series is
    `<name>_total` (Prometheus adds the suffix)."""

    name: str
    kind: Literal["counter", "gauge"]
    doc: str
    labels: tuple[str, ...] = ()


class Sample(NamedTuple):
    """One value of a metric: the label values in the order of `spec.labels`."""

    spec: Spec
    labels: tuple[str, ...]
    value: float


# -- the worker (collected on scrape from what the runners and processors count) -----------
EVENTS_LEDGERED = Spec(
    "wakeline_events_ledgered", "counter", "events stored in ledger segments by this process"
)
SEGMENTS_STORED = Spec(
    "wakeline_segments_stored", "counter", "ledger segments stored (and headers published)"
)
RECORDS_READ = Spec(
    "wakeline_runner_records_read",
    "counter",
    "records a runner read from its input topic (re-reads after a restart count again)",
    ("runner",),
)
RUNNER_RESTARTS = Spec(
    "wakeline_runner_restarts",
    "counter",
    "times a runner dropped its pending work and restored its partitions after a failure",
    ("runner",),
)
LAG = Spec(
    "wakeline_runner_lag",
    "gauge",
    "records of an assigned partition not yet read: high watermark minus position",
    ("runner", "topic", "partition"),
)
STALLED_PARTITIONS = Spec(
    "wakeline_runner_stalled_partitions",
    "gauge",
    "assigned partitions with records waiting and no progress for the stall limit",
    ("runner",),
)
STALLED_SECONDS = Spec(
    "wakeline_runner_stalled_seconds",
    "gauge",
    "seconds without progress of a stalled partition (present only while it is stalled)",
    ("runner", "partition"),
)
AUDIT_RECORDS = Spec(
    "wakeline_audit_records", "counter", "ledgered events whose audit records were delivered"
)
DLQ_RECORDS = Spec(
    "wakeline_dlq_records",
    "counter",
    "dead-letter records produced (undecodable events, refused audit records)",
)
CHECKPOINT_AGE = Spec(
    "wakeline_checkpoint_age_seconds",
    "gauge",
    "seconds since the time of the newest signed checkpoint in PostgreSQL (an idle ledger is "
    "not signed again, so this grows while nothing is ledgered)",
)
# -- the compensator (collected on scrape) ----------------------------------------------------
COMPENSATION_PLANS = Spec(
    "wakeline_compensation_plans", "counter", "quarantines that started a compensation plan"
)
COMPENSATION_ATTEMPTS = Spec(
    "wakeline_compensation_attempts", "counter", "compensating actions run (every attempt)"
)
ESCALATIONS = Spec(
    "wakeline_escalations", "counter", "human tasks whose Escalation event was published"
)
# -- the SDK (opt-in: Emitter(metrics=...)) ---------------------------------------------------
SDK_CALLS = Spec(
    "wakeline_sdk_calls",
    "counter",
    "tool calls that recorded a result, by tool and status (ok, error, aborted, denied)",
    ("tool", "status"),
)
SDK_REFUSALS = Spec(
    "wakeline_sdk_refusals", "counter", "tool calls a gate refused, by gate", ("gate",)
)

SPECS: tuple[Spec, ...] = (
    EVENTS_LEDGERED, SEGMENTS_STORED, RECORDS_READ, RUNNER_RESTARTS, LAG, STALLED_PARTITIONS,
    STALLED_SECONDS, AUDIT_RECORDS, DLQ_RECORDS, CHECKPOINT_AGE, COMPENSATION_PLANS,
    COMPENSATION_ATTEMPTS, ESCALATIONS, SDK_CALLS, SDK_REFUSALS,
)  # fmt: skip


class Metrics:
    """The interface, and the implementation that does nothing (`NO_METRICS`)."""

    #: False for the no-op: a caller on a hot path may skip even building the labels
    enabled = False

    def inc(self, spec: Spec, *labels: str, amount: float = 1.0) -> None:
        """Add `amount` to the counter `spec` at `labels`."""

    def observe(self, source: Callable[[], Iterable[Sample]]) -> None:
        """Run `source` on every scrape; what it returns is exported."""

    def serve(self, port: int, host: str = DEFAULT_HOST) -> int:
        """Serve `/metrics` over HTTP on a daemon thread; returns the bound port."""
        return 0

    def render(self) -> bytes:
        """What a scrape returns now (Prometheus text format)."""
        return b""

    def close(self) -> None:
        """Stop serving."""


NO_METRICS = Metrics()


class PrometheusMetrics(Metrics):
    """Metrics in a `CollectorRegistry` of its own, served by prometheus-client."""

    enabled = True

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        #: counters bumped by `inc`: (spec name, labels) -> value, exported on scrape. A dict
        #: under a lock costs about half of what prometheus-client's `Counter.inc` does
        #: (docs/decisions.md), and `inc` is on the SDK's per-call path
        self._counts: dict[tuple[str, tuple[str, ...]], float] = {}
        self._specs: dict[str, Spec] = {}
        self._sources: list[Callable[[], Iterable[Sample]]] = [self._counted]
        self._server: Any = None
        self.registry.register(_Sources(self._sources))

    def inc(self, spec: Spec, *labels: str, amount: float = 1.0) -> None:
        key = (spec.name, labels)
        with self._lock:
            value = self._counts.get(key)
            if value is None:
                if spec.kind != "counter" or len(labels) != len(spec.labels):
                    raise ValueError(f"{spec.name}: inc() wants a counter and labels {spec.labels}")
                self._specs[spec.name] = spec
                value = 0.0
            if amount < 0:
                raise ValueError(f"{spec.name}: a counter never goes down (inc by {amount})")
            self._counts[key] = value + amount

    def _counted(self) -> list[Sample]:
        with self._lock:
            counts = list(self._counts.items())
        return [Sample(self._specs[name], labels, value) for (name, labels), value in counts]

    def observe(self, source: Callable[[], Iterable[Sample]]) -> None:
        with self._lock:
            self._sources.append(source)

    def serve(self, port: int, host: str = DEFAULT_HOST) -> int:
        from prometheus_client import start_http_server

        if self._server is not None:
            raise ConfigError("metrics are served already")
        try:
            self._server, _ = start_http_server(port, host, registry=self.registry)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {e}") from None
        bound = int(self._server.server_port)
        log.info("metrics served at http://%s:%d/metrics", host, bound)
        return bound

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


class _Sources:
    """The collector that turns the observed sources' samples into metric families."""

    def __init__(self, sources: list[Callable[[], Iterable[Sample]]]) -> None:
        self._sources = sources

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        families: dict[str, Any] = {}
        for source in list(self._sources):
            try:
                samples = list(source())
            except Exception as e:  # noqa: BLE001 - one broken source never fails a scrape
                log.warning("metrics source %s failed: %s: %s", source, type(e).__name__, e)
                continue
            for s in samples:
                family = families.get(s.spec.name)
                if family is None:
                    kind = CounterMetricFamily if s.spec.kind == "counter" else GaugeMetricFamily
                    family = kind(s.spec.name, s.spec.doc, labels=s.spec.labels)
                    families[s.spec.name] = family
                family.add_metric(list(s.labels), s.value)
        return list(families.values())
