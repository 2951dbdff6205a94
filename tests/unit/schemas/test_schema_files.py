"""The .avsc files keep the rules of the contract: one envelope, named types, safe evolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wakeline.schemas import ENVELOPE_FIELDS, EVENT_TYPES, NAMESPACE
from wakeline.schemas import codec as codec_module

SCHEMA_DIR = Path(codec_module.__file__).parent


def _load(type_name: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{type_name}.avsc").read_text())


def _named_types(node: object) -> list[dict]:
    found = []
    if isinstance(node, dict):
        if node.get("type") in ("enum", "record", "fixed"):
            found.append(node)
        for value in node.values():
            found += _named_types(value)
    elif isinstance(node, list):
        for value in node:
            found += _named_types(value)
    return found


@pytest.mark.parametrize("type_name", EVENT_TYPES)
def test_record_name_namespace_and_file_agree(type_name: str) -> None:
    schema = _load(type_name)
    assert schema["name"] == type_name
    assert schema["namespace"] == NAMESPACE


def test_every_type_starts_with_the_same_envelope() -> None:
    first = _load(EVENT_TYPES[0])["fields"][: len(ENVELOPE_FIELDS)]
    assert [f["name"] for f in first] == list(ENVELOPE_FIELDS)
    for type_name in EVENT_TYPES:
        envelope = _load(type_name)["fields"][: len(ENVELOPE_FIELDS)]
        for mine, theirs in zip(envelope, first, strict=True):
            if mine["name"] == "type":
                assert mine["default"] == type_name
                continue
            assert mine == theirs, f"{type_name}.{mine['name']} differs from the envelope"


@pytest.mark.parametrize("type_name", EVENT_TYPES)
def test_every_enum_has_a_default_symbol_so_new_symbols_do_not_break_old_readers(
    type_name: str,
) -> None:
    for named in _named_types(_load(type_name)):
        if named["type"] == "enum":
            assert named.get("default") in named["symbols"], named["name"]


@pytest.mark.parametrize("type_name", EVENT_TYPES)
def test_nullable_fields_default_to_null(type_name: str) -> None:
    for field in _load(type_name)["fields"]:
        if isinstance(field["type"], list):
            assert field["type"][0] == "null" and field.get("default", "x") is None, field


@pytest.mark.parametrize("type_name", EVENT_TYPES)
def test_every_field_is_documented(type_name: str) -> None:
    schema = _load(type_name)
    assert schema.get("doc")
    assert all(f.get("doc") for f in schema["fields"])
