"""Round trips and bad input for the single-object codec."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from wakeline.errors import SchemaError
from wakeline.schemas import (
    EVENT_TYPES,
    MAGIC,
    MalformedFrame,
    UnknownFingerprint,
    all_schemas,
    decode_event,
    encode_event,
    fingerprint_of,
    schema_for,
)


@pytest.mark.parametrize("type_name", EVENT_TYPES)
def test_every_type_round_trips_every_field(
    type_name: str, make_event: Callable[..., dict]
) -> None:
    event = make_event(type_name)
    frame = encode_event(event)
    assert frame[:2] == MAGIC
    assert frame[2:10] == fingerprint_of(type_name)
    assert decode_event(frame) == event


@pytest.mark.parametrize("type_name", EVENT_TYPES)
def test_envelope_defaults_are_filled(type_name: str, make_event: Callable[..., dict]) -> None:
    required = {k: v for k, v in make_event(type_name).items()}
    for optional in ("step_id", "tenant", "boundary", "correlation_id", "trace_id", "span_id"):
        del required[optional]
    del required["parent_event_ids"]
    decoded = decode_event(encode_event(required))
    assert decoded["step_id"] is None and decoded["trace_id"] is None
    assert decoded["parent_event_ids"] == []
    assert isinstance(decoded["time"], int)
    assert decoded["time"] == required["time"]


def test_payload_defaults_are_filled(make_envelope: Callable[..., dict]) -> None:
    event = make_envelope("ToolResult", intent_id="i-1", status="aborted")
    decoded = decode_event(encode_event(event))
    assert decoded["external_ids"] == {}
    assert decoded["duration_us"] == 0
    assert decoded["result_digest"] is None


def test_the_input_dict_is_not_modified(make_envelope: Callable[..., dict]) -> None:
    event = make_envelope("Release", reason="r", by="b")
    before = dict(event)
    encode_event(event)
    assert event == before


def test_schemas_are_exposed_by_type_name() -> None:
    schemas = all_schemas()
    assert set(schemas) == set(EVENT_TYPES)
    assert schema_for("ToolIntent") is schemas["ToolIntent"]
    assert schemas["ToolIntent"]["name"] == "dev.wakeline.v1.ToolIntent"
    assert len({fingerprint_of(t) for t in EVENT_TYPES}) == len(EVENT_TYPES)
    with pytest.raises(SchemaError, match="unknown"):
        fingerprint_of("NoSuchEvent")


# -- bad input: encoding --------------------------------------------------------------------


def test_missing_required_field_names_it(make_event: Callable[..., dict]) -> None:
    event = make_event("ToolIntent")
    del event["tool"]
    with pytest.raises(SchemaError, match=r"missing required field\(s\) tool"):
        encode_event(event)


def test_missing_required_envelope_field_names_it(make_event: Callable[..., dict]) -> None:
    event = make_event("Alert")
    del event["workflow_id"]
    with pytest.raises(SchemaError, match="workflow_id"):
        encode_event(event)


def test_unknown_field_is_refused_not_dropped(make_event: Callable[..., dict]) -> None:
    with pytest.raises(SchemaError, match="unknown field.*colour"):
        encode_event(make_event("Release", colour="red"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("time", "2026-11-28T07:39:24Z"),
        ("status", "maybe"),
        ("external_ids", {"k": 1}),
        ("agent_id", None),
    ],
)
def test_wrong_value_type_is_a_schema_error(
    field: str, value: object, make_event: Callable[..., dict]
) -> None:
    with pytest.raises(SchemaError):
        encode_event(make_event("ToolResult", **{field: value}))


def test_a_string_is_not_silently_split_into_parent_ids(make_event: Callable[..., dict]) -> None:
    with pytest.raises(SchemaError, match="parent_event_ids"):
        encode_event(make_event("ToolResult", parent_event_ids="01939b6e-0000-7000"))


@pytest.mark.parametrize("bad", [{}, {"type": "NoSuchEvent"}, {"type": None}])
def test_unknown_or_missing_type(bad: dict) -> None:
    with pytest.raises(SchemaError, match="type"):
        encode_event(bad)


def test_not_a_dict() -> None:
    with pytest.raises(SchemaError, match="want a dict"):
        encode_event(["ToolIntent"])  # type: ignore[arg-type]


# -- bad input: decoding --------------------------------------------------------------------


@pytest.fixture
def frame(make_event: Callable[..., dict]) -> bytes:
    return encode_event(make_event("ToolIntent"))


def test_errors_are_schema_errors() -> None:
    assert issubclass(MalformedFrame, SchemaError)
    assert issubclass(UnknownFingerprint, SchemaError)


@pytest.mark.parametrize("cut", [0, 1, 2, 9])
def test_short_frame(cut: int, frame: bytes) -> None:
    with pytest.raises(MalformedFrame, match=f"frame has {cut} bytes, want at least 10"):
        decode_event(frame[:cut])


def test_truncated_body(frame: bytes) -> None:
    with pytest.raises(MalformedFrame, match="not valid Avro: .* overruns the frame"):
        decode_event(frame[:-5])


def test_header_only_frame_is_malformed(frame: bytes) -> None:
    with pytest.raises(MalformedFrame):
        decode_event(frame[:10])


def test_wrong_magic(frame: bytes) -> None:
    with pytest.raises(MalformedFrame, match="starts with c300, want c301"):
        decode_event(b"\xc3\x00" + frame[2:])


def test_confluent_framing_is_refused(frame: bytes) -> None:
    with pytest.raises(MalformedFrame, match="want c301"):
        decode_event(b"\x00\x00\x00\x00\x01" + frame[10:])


def test_unknown_fingerprint_names_it(frame: bytes) -> None:
    bad = MAGIC + bytes(8) + frame[10:]
    with pytest.raises(UnknownFingerprint, match="0000000000000000") as info:
        decode_event(bad)
    assert info.value.fingerprint == bytes(8)


def test_body_garbage(frame: bytes) -> None:
    with pytest.raises(MalformedFrame):
        decode_event(frame[:10] + b"\xff" * 40)


def test_trailing_bytes(frame: bytes) -> None:
    with pytest.raises(MalformedFrame, match="3 trailing bytes"):
        decode_event(frame + b"abc")


def test_body_of_another_type_is_caught_or_differs(make_event: Callable[..., dict]) -> None:
    # a Release body framed with the ToolIntent fingerprint must not pass as that intent
    release = encode_event(make_event("Release", reason="r", by="b"))
    forged = MAGIC + fingerprint_of("ToolIntent") + release[10:]
    with pytest.raises(MalformedFrame):
        decode_event(forged)


def test_not_bytes() -> None:
    with pytest.raises(MalformedFrame, match="want bytes"):
        decode_event("c301")  # type: ignore[arg-type]


def test_memoryview_and_bytearray_decode(frame: bytes) -> None:
    assert decode_event(memoryview(frame)) == decode_event(frame)
    assert decode_event(bytearray(frame)) == decode_event(frame)
