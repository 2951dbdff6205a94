"""Fuzzing the codec: random bytes, truncated and mutated valid frames, for every writer schema.

Three readers judge every frame: the codec, fastavro (lax in places, see docs/decisions.md)
and avro_spec.SpecReader (written from the Avro specification alone). The codec must accept
exactly what the specification accepts, refuse whatever fastavro refuses, read accepted frames
as fastavro does, and never raise anything but a SchemaError.
"""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any

from fastavro import schemaless_reader
from hypothesis import given
from hypothesis import strategies as st

from wakeline.errors import SchemaError
from wakeline.schemas import (
    EVENT_TYPES,
    HEADER_SIZE,
    MAGIC,
    Codec,
    SchemaInfo,
    packaged_schemas,
)

from .avro_spec import Invalid, SpecReader
from .conftest import fuzz_settings

DATA = Path(__file__).parents[1] / "unit" / "schemas" / "data"
CURRENT = packaged_schemas()
OLDER = [SchemaInfo.from_json((DATA / name).read_text()) for name in ("ToolIntent.v0.avsc",)]
NEWER = [SchemaInfo.from_json((DATA / name).read_text()) for name in ("Alert.v2.avsc",)]

#: the codec under test: the current schemas, and older and newer writers it resolves
CODEC = Codec(CURRENT)
for _info in OLDER + NEWER:
    CODEC.register(_info)
#: writers: (schema, a codec whose current schema it is, to encode with)
WRITERS = [(info, CODEC) for info in CURRENT.values()] + [
    (info, Codec({**CURRENT, info.type_name: info})) for info in OLDER + NEWER
]
SPEC = {info.fingerprint: SpecReader(info.schema_json) for info, _ in WRITERS}
BY_FP = {info.fingerprint: info for info, _ in WRITERS}

#: bytes that sit on the edges of the encoding: zero, -1, 1, the varint continuation bit,
#: the largest one-byte varint, bytes UTF-8 never has or only as lead bytes
SPECIAL = st.sampled_from([0, 1, 2, 3, 4, 5, 7, 9, 0x7E, 0x7F, 0x80, 0x81, 0xC0, 0xED, 0xFF])
BYTE = SPECIAL | st.integers(0, 255)
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)


def _values(kind: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    if isinstance(kind, list):
        return st.one_of(*(_values(branch, named) for branch in kind))
    name = kind if isinstance(kind, str) else kind["type"]
    if isinstance(kind, str) and name in named:
        return _values(named[name], named)
    if isinstance(kind, dict) and kind["type"] in ("enum", "record"):
        named[kind["name"]] = kind
    simple = {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(1 << 31), (1 << 31) - 1),
        "long": st.integers(-(1 << 63), (1 << 63) - 1),
        "bytes": st.binary(max_size=12),
        "string": TEXT,
    }
    if name in simple:
        return simple[name]
    if name == "enum":
        return st.sampled_from(kind["symbols"])
    if name == "array":
        return st.lists(_values(kind["items"], named), max_size=3)
    if name == "map":
        return st.dictionaries(TEXT, _values(kind["values"], named), max_size=3)
    if name == "record":
        fields = {f["name"]: _values(f["type"], named) for f in kind["fields"]}
        return st.fixed_dictionaries(fields)
    raise AssertionError(f"no strategy for {kind!r}")


@st.composite
def valid_frames(draw: st.DrawFn) -> tuple[SchemaInfo, bytes]:
    info, codec = draw(st.sampled_from(WRITERS))
    event = draw(_values(json.loads(info.schema_json), {}))
    event["type"] = info.type_name
    return info, codec.encode(event)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    info, frame = draw(valid_frames())
    body = bytearray(frame[HEADER_SIZE:])
    # where values start (enum and union indexes, lengths, counts): mostly mutate there
    starts = SPEC[info.fingerprint].read_with_starts(bytes(body))[1]
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate", "append", "varint"]))
        anywhere = st.integers(0, max(0, len(body) - 1))
        at = draw(st.sampled_from(starts) | anywhere if body else st.just(0))
        at = min(at, max(0, len(body) - 1))
        if op == "set" and body:
            body[at] = draw(BYTE)
        elif op == "insert":
            body[at:at] = bytes(draw(st.lists(BYTE, min_size=1, max_size=3)))
        elif op == "delete":
            del body[at : at + draw(st.integers(1, 3))]
        elif op == "truncate":
            del body[at:]
        elif op == "append":
            body += bytes(draw(st.lists(BYTE, min_size=1, max_size=3)))
        else:  # an overlong or overflowing varint where a value starts
            body[at:at] = b"\x80" * draw(st.integers(4, 11)) + bytes([draw(BYTE) & 0x7F])
    return frame[:HEADER_SIZE] + bytes(body)


def _ours(frame: bytes) -> tuple[bool, Any]:
    try:
        return True, CODEC.decode(frame)
    except SchemaError as e:  # anything else fails the test
        return False, str(e)


def _fastavro(frame: bytes) -> tuple[bool, Any]:
    info = BY_FP[frame[2:HEADER_SIZE]]
    current = CURRENT.get(info.type_name)
    reader = None if current is None or current.fingerprint == info.fingerprint else current
    buf = BytesIO(frame[HEADER_SIZE:])
    try:
        value = schemaless_reader(buf, info.parsed, None if reader is None else reader.parsed)
    except Exception as e:
        return False, repr(e)
    if buf.read():
        return False, "trailing bytes"
    return True, value


def _spec(frame: bytes) -> tuple[bool, Any]:
    try:
        return True, SPEC[frame[2:HEADER_SIZE]].read(frame[HEADER_SIZE:])
    except Invalid as e:
        return False, str(e)


def _judge(frame: bytes) -> None:
    ok, ours = _ours(frame)
    if frame[2:HEADER_SIZE] not in SPEC:
        assert not ok, "a frame of an unknown schema decoded"
        return
    spec_ok, spec = _spec(frame)
    fast_ok, fast = _fastavro(frame)
    assert ok == spec_ok, f"codec {'accepts' if ok else 'refuses'} ({ours}); the spec: {spec}"
    if not fast_ok:
        assert not ok, f"fastavro refuses ({fast}), the codec accepts"
    if ok:
        assert ours == fast
        info = BY_FP[frame[2:HEADER_SIZE]]
        if info.fingerprint == CURRENT[info.type_name].fingerprint:  # nothing to resolve
            assert ours == spec


@fuzz_settings()
@given(valid_frames())
def test_valid_frames_decode_as_every_reader_reads_them(found: tuple[SchemaInfo, bytes]) -> None:
    _, frame = found
    assert _ours(frame)[0]
    _judge(frame)


@fuzz_settings(scale=2)
@given(mutated_frames())
def test_mutated_frames_are_judged_as_the_spec_judges_them(frame: bytes) -> None:
    _judge(frame)


@fuzz_settings()
@given(valid_frames(), st.data())
def test_every_truncation_is_refused(found: tuple[SchemaInfo, bytes], data: st.DataObject) -> None:
    _, frame = found
    cut = data.draw(st.integers(0, len(frame) - 1))
    ok, why = _ours(frame[:cut])
    assert not ok
    assert cut < HEADER_SIZE or "not valid Avro" in why


@fuzz_settings()
@given(st.sampled_from(sorted(SPEC)), st.binary(max_size=400))
def test_random_bodies_are_judged_as_the_spec_judges_them(fp: bytes, body: bytes) -> None:
    _judge(MAGIC + fp + body)


@fuzz_settings()
@given(st.binary(max_size=400))
def test_random_bytes_raise_nothing_but_schema_errors(frame: bytes) -> None:
    _ours(frame)
    _ours(MAGIC + frame)


def test_the_writers_cover_every_type_and_a_resolution_each_way() -> None:
    assert {info.type_name for info, _ in WRITERS} == set(EVENT_TYPES)
    assert len(WRITERS) == len(EVENT_TYPES) + 2
