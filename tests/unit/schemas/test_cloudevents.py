"""CloudEvents 1.0 binary-mode headers, and the README's published fingerprints."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from wakeline.errors import SchemaError
from wakeline.schemas import EVENT_TYPES, cloudevents_headers, fingerprint_of, rfc3339_micros
from wakeline.schemas import codec as codec_module

README = Path(codec_module.__file__).parent / "README.md"


def test_headers_name_values_and_order(make_event: Callable[..., dict]) -> None:
    event = make_event("ToolIntent", time=1_795_851_564_000_042, workflow_id="wf-ü")
    assert cloudevents_headers(event) == [
        ("ce_specversion", b"1.0"),
        ("ce_id", event["event_id"].encode()),
        ("ce_type", b"dev.wakeline.ToolIntent.v1"),
        ("ce_source", b"wakeline-sdk/test"),
        ("ce_time", b"2026-11-28T07:39:24.000042Z"),
        ("ce_subject", "wf-ü".encode()),
        ("content-type", b"application/avro"),
    ]


@pytest.mark.parametrize(
    "micros", [0, 1, 999_999, 1_795_851_564_123_456, -1, 253_402_300_799_999_999]
)
def test_ce_time_is_rfc3339_and_exact(micros: int) -> None:
    text = rfc3339_micros(micros)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", text)
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    assert (parsed - epoch) // dt.timedelta(microseconds=1) == micros


def test_headers_are_deterministic(make_event: Callable[..., dict]) -> None:
    event = make_event("Alert")
    assert cloudevents_headers(event) == cloudevents_headers(dict(event))


def test_missing_envelope_field_is_a_schema_error(make_event: Callable[..., dict]) -> None:
    event = make_event("Alert")
    del event["source"]
    with pytest.raises(SchemaError, match="source"):
        cloudevents_headers(event)


def test_wrong_time_type_is_a_schema_error(make_event: Callable[..., dict]) -> None:
    with pytest.raises(SchemaError):
        cloudevents_headers(make_event("Alert", time="yesterday"))


def test_readme_fingerprint_table_matches_the_schemas() -> None:
    published = dict(re.findall(r"\| ([A-Z]\w+) \| `([0-9a-f]{16})` \|", README.read_text()))
    assert published == {t: fingerprint_of(t).hex() for t in EVENT_TYPES}


def test_ce_time_is_right_when_the_cached_second_repeats_or_changes() -> None:
    base = 1_795_851_564_000_000
    for micros in (base, base + 999_999, base + 1_000_000, base - 1, base, 0, base + 1):
        seconds, rest = divmod(micros, 1_000_000)
        want = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        assert rfc3339_micros(micros) == f"{want}.{rest:06d}Z"
