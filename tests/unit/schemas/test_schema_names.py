"""Writer schemas come from topics anyone may produce to: their names must be Avro names,
so nothing but `[A-Za-z_][A-Za-z0-9_]*` reaches the registry's text columns."""

from __future__ import annotations

import pytest

from wakeline.errors import SchemaError
from wakeline.schemas import SchemaInfo


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "record", "name": "A\x00B", "fields": []},
        {"type": "record", "name": "A", "namespace": "dev.\x00", "fields": []},
        {"type": "record", "name": "A", "fields": [{"name": "x\x00", "type": "string"}]},
        {"type": "record", "name": "A", "fields": [{"name": "1x", "type": "string"}]},
        {
            "type": "record",
            "name": "A",
            "fields": [{"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["a b"]}}],
        },
        {
            "type": "record",
            "name": "A",
            "fields": [{"name": "r", "type": ["null", {"type": "fixed", "name": "é", "size": 2}]}],
        },
    ],
)
def test_a_schema_with_a_name_avro_does_not_allow_is_refused(schema: dict) -> None:
    with pytest.raises(SchemaError, match="not a valid Avro name"):
        SchemaInfo.from_json(schema)


def test_docs_and_defaults_may_hold_any_text() -> None:
    info = SchemaInfo.from_json(
        {
            "type": "record",
            "name": "A",
            "namespace": "dev.wakeline.v1",
            "doc": "any \x00 text",
            "fields": [{"name": "x", "type": "string", "default": "nul \x00 ok", "doc": "é"}],
        }
    )
    assert "\x00" not in info.canonical_form and "\x00" not in info.schema_json
