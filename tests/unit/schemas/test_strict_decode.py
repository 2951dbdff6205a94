"""The decoder is exactly as strict as the Avro specification, on both of its paths.

Each class of invalid body is built by hand, field by field, and must be a MalformedFrame
that says which field and at which byte of the frame, whether the frame's writer schema is
the current one (the compiled decoder, then the strict one for the verdict) or an older one
that is resolved to the current schema (strict validation, then fastavro's resolution).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_reader, schemaless_writer

from wakeline.errors import SchemaError
from wakeline.schemas import (
    MAGIC,
    Codec,
    MalformedFrame,
    SchemaInfo,
    decode_event,
    encode_event,
    packaged_schemas,
    register_schema,
    schema_info,
)
from wakeline.schemas.compiled import MAX_EMPTY_ITEMS, strict_decoder

DATA = Path(__file__).parent / "data"
TOOL_INTENT_V0 = SchemaInfo.from_json((DATA / "ToolIntent.v0.avsc").read_text())
PATHS = ("current", "older")


def older(type_name: str) -> SchemaInfo:
    """A previous version of a type: without its last nullable field (the reader defaults it)."""
    if type_name == "ToolIntent":
        return TOOL_INTENT_V0
    raw = json.loads(schema_info(type_name).schema_json)
    last = max(i for i, f in enumerate(raw["fields"]) if isinstance(f["type"], list))
    del raw["fields"][last]
    return SchemaInfo.from_json(raw)


def writer(type_name: str, path: str) -> tuple[Codec, SchemaInfo]:
    codec = Codec(packaged_schemas())
    if path == "current":
        return codec, schema_info(type_name)
    info = older(type_name)
    codec.register(info)
    return codec, info


def field_bytes(kind: Any, value: Any) -> bytes:
    buf = BytesIO()
    schemaless_writer(buf, kind, value)
    return buf.getvalue()


def build(info: SchemaInfo, event: dict[str, Any], **raw: bytes) -> tuple[bytes, dict[str, int]]:
    """A frame of `event` with `info`, the named fields' bodies replaced by raw bytes; and the
    byte offset in the frame of every field."""
    parts = [MAGIC + info.fingerprint]
    offsets = {}
    for field in json.loads(info.schema_json)["fields"]:
        name = field["name"]
        offsets[name] = sum(map(len, parts))
        value = event[name] if name in event else field.get("default")
        parts.append(raw[name] if name in raw else field_bytes(field["type"], value))
    return b"".join(parts), offsets


def rejects(
    path: str, type_name: str, event: dict[str, Any], field: str, raw: bytes, what: str
) -> MalformedFrame:
    codec, info = writer(type_name, path)
    frame, offsets = build(info, event, **{field: raw})
    with pytest.raises(MalformedFrame) as caught:
        codec.decode(frame)
    message = str(caught.value)
    assert f"{field} at byte {offsets[field]}: " in message, message
    assert what in message, message
    return caught.value


HUGE = b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01"  # zig-zag of 2**63 - 1


# -- the frames themselves are built right --------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("type_name", ["ToolIntent", "ToolResult", "CompensationStarted"])
def test_the_hand_built_frames_decode(path: str, type_name: str, make_event: Callable) -> None:
    codec, info = writer(type_name, path)
    event = make_event(type_name)
    frame, _ = build(info, event)
    names = {f["name"] for f in info.parsed["fields"]}
    decoded = codec.decode(frame)
    assert {k: v for k, v in decoded.items() if k in names} == {
        k: v for k, v in event.items() if k in names
    }
    assert codec._readers[info.fingerprint][1 if path == "older" else 2] is not None


# -- enum indexes and union branches --------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("index", [-1, -2, -3, -4, -5, 4, 5, 1 << 30])
def test_enum_index_out_of_range(path: str, index: int, make_event: Callable) -> None:
    raw = field_bytes("long", index)  # Impact has 4 symbols: 0..3
    rejects(path, "ToolIntent", make_event("ToolIntent"), "impact", raw, f"enum index is {index}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("index", [-1, -2, 2, 3])
def test_union_branch_out_of_range(path: str, index: int, make_event: Callable) -> None:
    raw = field_bytes("long", index) + field_bytes("string", "step")
    what = f"union branch index is {index}, want 0..1"
    rejects(path, "ToolIntent", make_event("ToolIntent"), "step_id", raw, what)


@pytest.mark.parametrize("path", PATHS)
def test_a_union_index_in_two_bytes_is_valid_avro(path: str, make_event: Callable) -> None:
    codec, info = writer("ToolIntent", path)
    frame, _ = build(info, make_event("ToolIntent"), step_id=b"\x82\x00\x02s")  # 1, not minimal
    assert codec.decode(frame)["step_id"] == "s"


# -- lengths ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("field", "kind"), [("tool", "string"), ("args_digest", "bytes")])
@pytest.mark.parametrize("length", [-1, -64, -(1 << 62)])
def test_negative_length(
    path: str, field: str, kind: str, length: int, make_event: Callable
) -> None:
    raw = field_bytes("long", length) + b"abc"
    what = f"{kind} length is {length}, want >= 0"
    rejects(path, "ToolIntent", make_event("ToolIntent"), field, raw, what)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("prefix", [field_bytes("long", 10_000), HUGE])
def test_length_overrunning_the_frame(path: str, prefix: bytes, make_event: Callable) -> None:
    # 2**63 - 1 bytes: refused from the length alone, nothing is allocated
    rejects(path, "ToolIntent", make_event("ToolIntent"), "args", prefix + b"{}", "overruns")


# -- varints ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_long_varint_of_11_bytes(path: str, make_event: Callable) -> None:
    raw = b"\x80" * 10 + b"\x00"  # 0, in 11 bytes
    what = "varint longer than 10 bytes"
    rejects(path, "ToolIntent", make_event("ToolIntent"), "time", raw, what)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("last", [0x02, 0x7F])
def test_long_varint_overflowing_64_bits(path: str, last: int, make_event: Callable) -> None:
    raw = b"\xff" * 9 + bytes([last])  # fastavro reads these as wrapped 64-bit values
    what = "overflows an Avro long (64 bits)"
    rejects(path, "ToolIntent", make_event("ToolIntent"), "time", raw, what)


@pytest.mark.parametrize("path", PATHS)
def test_the_largest_and_smallest_longs_are_valid(path: str, make_event: Callable) -> None:
    codec, info = writer("ToolIntent", path)
    for value in (-(1 << 63), (1 << 63) - 1):
        frame, _ = build(info, make_event("ToolIntent"), time=field_bytes("long", value))
        assert codec.decode(frame)["time"] == value


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("raw", "what"),
    [
        (field_bytes("long", 1 << 31), "overflows an Avro int (32 bits)"),
        (field_bytes("long", -(1 << 31) - 1), "overflows an Avro int (32 bits)"),
        (b"\xff\xff\xff\xff\x7f", "overflows an Avro int (32 bits)"),
        (b"\x80" * 5 + b"\x00", "varint longer than 5 bytes"),  # Java: invalid int encoding
    ],
)
def test_int_varint_overflowing_32_bits(
    path: str, raw: bytes, what: str, make_event: Callable
) -> None:
    rejects(path, "CompensationStarted", make_event("CompensationStarted"), "attempt", raw, what)


# -- UTF-8 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "text",
    [
        b"\xff",  # never valid
        b"caf\xe9",  # Latin-1
        b"\xc0\x80",  # overlong NUL
        b"\xe0\x80\xaf",  # overlong '/'
        b"\xed\xa0\x80",  # a UTF-16 surrogate (U+D800) written as UTF-8: invalid in UTF-8
        b"\xf4\x90\x80\x80",  # beyond U+10FFFF
        b"\xe2\x82",  # cut inside a character
    ],
)
def test_invalid_utf8_in_a_string(path: str, text: bytes, make_event: Callable) -> None:
    raw = field_bytes("long", len(text)) + text
    rejects(path, "ToolIntent", make_event("ToolIntent"), "source", raw, "string is not UTF-8")


def test_python_strict_utf8_refuses_surrogates_and_overlong_forms() -> None:
    for bad in (b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xc0\x80", b"\xc1\xbf"):
        with pytest.raises(UnicodeDecodeError):
            bad.decode()
    assert "\U0010ffff".encode() == b"\xf4\x8f\xbf\xbf"  # the largest code point is fine


@pytest.mark.parametrize("path", PATHS)
def test_invalid_utf8_in_an_array_item_and_a_map_key(path: str, make_event: Callable) -> None:
    codec, info = writer("ToolResult", path)
    event = make_event("ToolResult")
    frame, at = build(info, event, external_ids=b"\x02\x02\xff\x02v\x00")  # {b"\xff": "v"}
    where = rf"external_ids\[0\] at byte {at['external_ids'] + 1}: string is not UTF-8"
    with pytest.raises(MalformedFrame, match=where):
        codec.decode(frame)
    frame, at = build(info, event, parent_event_ids=b"\x04\x02a\x02\xfe\x00")  # ["a", b"\xfe"]
    where = rf"parent_event_ids\[1\] at byte {at['parent_event_ids'] + 3}: string is not UTF-8"
    with pytest.raises(MalformedFrame, match=where):
        codec.decode(frame)


# -- booleans ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("byte", [2, 0x7F, 0xFF])
def test_boolean_other_than_0_or_1(path: str, byte: int, make_event: Callable) -> None:
    what = f"boolean byte is {byte:#04x}, want 0x00 or 0x01"
    rejects(path, "ApprovalDenied", make_event("ApprovalDenied"), "timed_out", bytes([byte]), what)


# -- array and map blocks ---------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_a_negative_block_count_with_its_byte_size_is_valid(
    path: str, make_event: Callable
) -> None:
    codec, info = writer("ToolIntent", path)
    # -2 items, 4 bytes: "a", "b"; then 1 item; then the end
    raw = b"\x03\x08\x02a\x02b" + b"\x02\x02c" + b"\x00"
    frame, _ = build(info, make_event("ToolIntent"), resources_read=raw)
    assert codec.decode(frame)["resources_read"] == ["a", "b", "c"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("raw", "what"),
    [
        (b"\x03\x0a\x02a\x02b\x00", "block size says 5 bytes, its 2 items take 4"),
        (b"\x03\x06\x02a\x02b\x00", "block size says 3 bytes, its 2 items take 4"),
        (b"\x03\x01\x02a\x02b\x00", "block size is -1, want >= 0"),
        (HUGE + b"\x02a\x00", "cannot fit in the"),
        (b"\x02\x02a", "the frame ends inside the array block count"),
    ],
)
def test_bad_array_blocks(path: str, raw: bytes, what: str, make_event: Callable) -> None:
    # resources_read is followed by other fields: the frame's end is not the block's end
    event = make_event("ToolIntent")
    if "frame ends" in what:
        codec, info = writer("ToolIntent", path)
        frame, at = build(info, event)
        cut = frame[: at["resources_read"]] + raw
        with pytest.raises(MalformedFrame, match=what):
            codec.decode(cut)
        return
    rejects(path, "ToolIntent", event, "resources_read", raw, what)


def test_a_huge_count_of_empty_items_is_refused_without_looping() -> None:
    decode = strict_decoder({"type": "array", "items": "null"})
    assert decode(b"\x06\x00", 0) == [None, None, None]
    with pytest.raises(SchemaError, match="cannot fit"):
        decode(HUGE + b"\x00", 0)
    with pytest.raises(SchemaError, match="cannot fit"):
        decode(field_bytes("long", MAX_EMPTY_ITEMS + 1) + b"\x00", 0)


def test_a_map_may_repeat_a_key_and_the_last_one_wins() -> None:
    decode = strict_decoder({"type": "map", "values": "string"})
    assert decode(b"\x04\x02k\x02a\x02k\x02b\x00", 0) == {"k": "b"}


# -- trailing bytes and truncation -------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("tail", [b"\x00", b"\xff\xff\xff"])
def test_trailing_bytes(path: str, tail: bytes, make_event: Callable) -> None:
    codec, info = writer("ToolResult", path)
    frame, _ = build(info, make_event("ToolResult"))
    with pytest.raises(MalformedFrame, match=f"at byte {len(frame)}: {len(tail)} trailing bytes"):
        codec.decode(frame + tail)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("type_name", ["ToolIntent", "ToolResult"])
def test_every_truncation_is_refused(path: str, type_name: str, make_event: Callable) -> None:
    codec, info = writer(type_name, path)
    frame, _ = build(info, make_event(type_name))
    for cut in range(10, len(frame)):
        with pytest.raises(MalformedFrame, match="not valid Avro"):
            codec.decode(frame[:cut])


# -- the process-wide codec and the encoder ---------------------------------------------------


def test_register_schema_then_decode_event_is_as_strict(make_event: Callable) -> None:
    register_schema(TOOL_INTENT_V0)
    frame, offsets = build(TOOL_INTENT_V0, make_event("ToolIntent"), impact=b"\x01")
    with pytest.raises(MalformedFrame, match=f"impact at byte {offsets['impact']}: enum index"):
        decode_event(frame)
    # the same bytes, as fastavro alone reads them: index -1 is the last symbol
    assert schemaless_reader(BytesIO(frame[10:]), TOOL_INTENT_V0.parsed)["impact"] == "critical"


@pytest.mark.parametrize(
    ("overrides", "what"),
    [
        ({"source": "lone \ud800 surrogate"}, "surrogates not allowed"),
        ({"external_ids": {"k\udfff": "v"}}, "surrogates not allowed"),
    ],
)
def test_text_that_is_not_unicode_does_not_encode(
    overrides: dict[str, Any], what: str, make_event: Callable
) -> None:
    with pytest.raises(SchemaError, match=what):
        encode_event(make_event("ToolResult", **overrides))


@pytest.mark.parametrize("attempt", [1 << 31, -(1 << 31) - 1, 1 << 40])
def test_an_int_beyond_32_bits_does_not_encode(attempt: int, make_event: Callable) -> None:
    # fastavro would write 1 << 40 as a 6-byte varint, which no Avro decoder reads as an int
    what = r"attempt at byte \d+: the int (overflows an Avro int|is a varint longer than 5 bytes)"
    with pytest.raises(SchemaError, match=what):
        encode_event(make_event("CompensationStarted", attempt=attempt))
    for edge in ((1 << 31) - 1, -(1 << 31)):
        event = make_event("CompensationStarted", attempt=edge)
        assert decode_event(encode_event(event))["attempt"] == edge


def test_deep_nesting_in_a_recursive_writer_schema_is_a_malformed_frame() -> None:
    node = {
        "type": "record",
        "name": "Node",
        "namespace": "test.wakeline",
        "fields": [{"name": "next", "type": ["null", "Node"]}],
    }
    codec = Codec(packaged_schemas())
    fp = codec.register(node)
    assert codec.decode(MAGIC + fp + b"\x02\x02\x00") == {"next": {"next": {"next": None}}}
    with pytest.raises(MalformedFrame, match="nest deeper"):
        codec.decode(MAGIC + fp + b"\x02" * 100_000 + b"\x00")


def test_avro_long_refuses_what_does_not_fit_64_bits() -> None:
    from wakeline.schemas.compiled import avro_long

    assert avro_long((1 << 63) - 1) == b"\xfe" + b"\xff" * 8 + b"\x01"
    assert avro_long(-(1 << 63)) == b"\xff" * 9 + b"\x01"
    for n in (1 << 63, -(1 << 63) - 1):
        with pytest.raises(ValueError, match="does not fit an Avro long"):
            avro_long(n)
