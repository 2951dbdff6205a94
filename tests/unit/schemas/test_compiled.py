"""Compiled codecs agree with fastavro: same bytes out, same values in, for any values."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from fastavro import schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wakeline.errors import SchemaError
from wakeline.schemas import (
    EVENT_TYPES,
    MAGIC,
    decode_event,
    encode_event,
    fingerprint_of,
    schema_for,
)
from wakeline.schemas.compiled import compile_decoder, compile_encoder

_text = st.text(max_size=80)
_LONG = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
_INT = st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1)


def _strategy(kind: Any) -> st.SearchStrategy[Any]:
    if isinstance(kind, list):
        return st.none() | _strategy(kind[1])
    name = kind if isinstance(kind, str) else kind["type"]
    simple = {
        "string": _text,
        "bytes": st.binary(max_size=80),
        "long": _LONG,
        "int": _INT,
        "boolean": st.booleans(),
    }
    if name in simple:
        return simple[name]
    if name == "enum":
        return st.sampled_from(kind["symbols"])
    if name == "array":
        return st.lists(_text, max_size=5)
    if name == "map":
        return st.dictionaries(_text, _text, max_size=5)
    raise AssertionError(f"no strategy for {kind}")


def _events(type_name: str) -> st.SearchStrategy[dict[str, Any]]:
    fields = schema_for(type_name)["fields"]
    required = {f["name"]: _strategy(f["type"]) for f in fields if "default" not in f}
    optional = {f["name"]: _strategy(f["type"]) for f in fields if "default" in f}
    return st.fixed_dictionaries(required, optional=optional).map(
        lambda e: {**e, "type": type_name}
    )


def _fastavro(event: dict[str, Any]) -> bytes:
    buf = BytesIO()
    buf.write(MAGIC + fingerprint_of(event["type"]))
    schemaless_writer(buf, schema_for(event["type"]), event, strict_allow_default=True)
    return buf.getvalue()


@pytest.mark.parametrize("type_name", EVENT_TYPES)
def test_every_type_has_a_compiled_encoder(type_name: str) -> None:
    assert compile_encoder(schema_for(type_name)) is not None


@pytest.mark.parametrize("type_name", EVENT_TYPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_compiled_bytes_equal_fastavro_bytes(type_name: str, data: st.DataObject) -> None:
    event = data.draw(_events(type_name))
    compiled = compile_encoder(schema_for(type_name))
    assert compiled is not None
    header = MAGIC + fingerprint_of(type_name)
    assert compiled(event, header) == _fastavro(event)
    decoded = decode_event(encode_event(event))
    assert {k: decoded[k] for k in event} == event


def test_values_the_compiled_path_refuses_still_get_fastavros_verdict(
    make_event: Any,
) -> None:
    # fastavro writes a float duration as a long (truncating); the compiled path defers to it
    event = make_event("ToolResult", duration_us=12.0)
    assert decode_event(encode_event(event))["duration_us"] == 12


def _fastavro_read(frame: bytes) -> dict[str, Any]:
    from io import BytesIO as _B

    type_name = next(t for t in EVENT_TYPES if fingerprint_of(t) == frame[2:10])
    buf = _B(frame[10:])
    event = schemaless_reader(buf, schema_for(type_name))
    assert buf.read() == b""
    return event


@pytest.mark.parametrize("type_name", EVENT_TYPES)
def test_every_type_has_a_compiled_decoder(type_name: str) -> None:
    assert compile_decoder(schema_for(type_name)) is not None


@pytest.mark.parametrize("type_name", EVENT_TYPES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_compiled_decoder_reads_what_fastavro_reads(type_name: str, data: st.DataObject) -> None:
    frame = encode_event(data.draw(_events(type_name)))
    decoder = compile_decoder(schema_for(type_name))
    assert decoder is not None
    assert decoder(frame, 10) == _fastavro_read(frame)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # make_event is pure
)
@given(
    type_name=st.sampled_from(EVENT_TYPES),
    cut=st.integers(min_value=0, max_value=400),
    flips=st.lists(st.tuples(st.integers(min_value=10), st.integers(0, 255)), max_size=4),
    tail=st.binary(max_size=4),
)
def test_damaged_frames_give_a_schema_error_or_fastavros_reading(
    type_name: str,
    cut: int,
    flips: list[tuple[int, int]],
    tail: bytes,
    make_event: Any,
) -> None:
    frame = bytearray(encode_event(make_event(type_name)))
    for index, value in flips:  # damage the body only: the header has its own tests
        frame[10 + index % (len(frame) - 10)] = value
    damaged = bytes(frame[: max(10, len(frame) - cut)]) + tail
    try:
        decoded = decode_event(damaged)
    except SchemaError:
        return
    # whatever the compiled path accepts, fastavro reads the same way
    assert decoded == _fastavro_read(damaged)
