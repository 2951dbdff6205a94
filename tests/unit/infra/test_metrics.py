from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from wakeline.errors import ConfigError
from wakeline.infra import metrics as m


def scraped(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (sample name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_every_metric_is_named_wakeline_and_declared_once():
    names = [s.name for s in m.SPECS]
    assert len(names) == len(set(names))
    assert all(n.startswith("wakeline_") and not n.endswith("_total") for n in names)
    assert {s.kind for s in m.SPECS} == {"counter", "gauge"}


def test_the_no_op_does_nothing_and_says_so():
    assert m.NO_METRICS.enabled is False
    m.NO_METRICS.inc(m.SDK_CALLS, "t", "ok")
    m.NO_METRICS.observe(lambda: [m.Sample(m.EVENTS_LEDGERED, (), 1)])
    assert m.NO_METRICS.render() == b""
    assert m.NO_METRICS.serve(0) == 0
    m.NO_METRICS.close()


def test_counters_count_by_label():
    metrics = m.PrometheusMetrics()
    metrics.inc(m.SDK_CALLS, "kv.get", "ok")
    metrics.inc(m.SDK_CALLS, "kv.get", "ok")
    metrics.inc(m.SDK_CALLS, "kv.get", "error")
    metrics.inc(m.SDK_REFUSALS, "loop-guard", amount=3)
    got = scraped(metrics.render().decode())
    assert got[("wakeline_sdk_calls_total", (("status", "ok"), ("tool", "kv.get")))] == 2
    assert got[("wakeline_sdk_calls_total", (("status", "error"), ("tool", "kv.get")))] == 1
    assert got[("wakeline_sdk_refusals_total", (("gate", "loop-guard"),))] == 3


def test_inc_refuses_a_gauge_or_the_wrong_labels():
    metrics = m.PrometheusMetrics()
    with pytest.raises(ValueError, match="labels"):
        metrics.inc(m.SDK_CALLS, "only-the-tool")
    with pytest.raises(ValueError, match="counter"):
        metrics.inc(m.CHECKPOINT_AGE)
    with pytest.raises(ValueError, match="never goes down"):
        metrics.inc(m.SDK_REFUSALS, "policy", amount=-1)


def test_observed_sources_are_read_on_every_scrape():
    metrics = m.PrometheusMetrics()
    state = {"n": 1}
    metrics.observe(
        lambda: [
            m.Sample(m.EVENTS_LEDGERED, (), state["n"]),
            m.Sample(m.LAG, ("ledger-builder", "t.events", "0"), 5),
            m.Sample(m.LAG, ("ledger-builder", "t.events", "1"), 0),
        ]
    )
    assert scraped(metrics.render().decode())[("wakeline_events_ledgered_total", ())] == 1
    state["n"] = 7
    got = scraped(metrics.render().decode())
    assert got[("wakeline_events_ledgered_total", ())] == 7
    lag = (("partition", "0"), ("runner", "ledger-builder"), ("topic", "t.events"))
    assert got[("wakeline_runner_lag", lag)] == 5


def test_a_failing_source_leaves_the_others_served(caplog):
    metrics = m.PrometheusMetrics()

    def broken() -> list[m.Sample]:
        raise RuntimeError("store away")

    metrics.observe(broken)
    metrics.observe(lambda: [m.Sample(m.DLQ_RECORDS, (), 2)])
    got = scraped(metrics.render().decode())
    assert got[("wakeline_dlq_records_total", ())] == 2
    assert "store away" in caplog.text


def test_counters_are_exact_under_threads():
    import threading

    metrics = m.PrometheusMetrics()

    def bump() -> None:
        for _ in range(5000):
            metrics.inc(m.SDK_CALLS, "t", "ok")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = scraped(metrics.render().decode())
    assert got[("wakeline_sdk_calls_total", (("status", "ok"), ("tool", "t")))] == 20_000
    assert not any(name.endswith("_created") for name, _ in got)


def test_two_instances_do_not_share_a_registry():
    a, b = m.PrometheusMetrics(), m.PrometheusMetrics()
    a.inc(m.SDK_REFUSALS, "quarantine")
    b.inc(m.SDK_REFUSALS, "quarantine")  # the global registry would refuse a second counter
    assert scraped(b.render().decode())[("wakeline_sdk_refusals_total", (("gate", "quarantine"),))]


def test_served_over_http_on_loopback_and_closed():
    metrics = m.PrometheusMetrics()
    metrics.observe(lambda: [m.Sample(m.AUDIT_RECORDS, (), 4)])
    port = metrics.serve(0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body = r.read().decode()
        assert scraped(body)[("wakeline_audit_records_total", ())] == 4
    finally:
        metrics.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_a_port_in_use_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            m.PrometheusMetrics().serve(port)


def test_the_interface_does_not_import_prometheus_client():
    code = (
        "import json, sys\n"
        "import wakeline.infra.metrics as m\n"
        "m.NO_METRICS.inc(m.SDK_CALLS, 't', 'ok')\n"
        "print(json.dumps('prometheus_client' in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is False
