"""Schema evolution: old readers read new writers and new readers read old writers (Avro rules).

data/ToolIntent.v0.avsc is ToolIntent before `redacted_fields`, `approval_id`,
`undo_window_us`, `volatile_fields`, `expected_version` and the policy engine's
`policy_rule`, `policy_version`, `policy_shadow` and `grant_id` were added;
data/Alert.v2.avsc is a future Alert with one more enum symbol and one more defaulted field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from wakeline.errors import SchemaError
from wakeline.schemas import (
    Codec,
    SchemaInfo,
    UnknownFingerprint,
    encode_event,
    fingerprint_of,
    packaged_schemas,
)

DATA = Path(__file__).parent / "data"
TOOL_INTENT_V0 = SchemaInfo.from_json((DATA / "ToolIntent.v0.avsc").read_text())
ALERT_V2 = SchemaInfo.from_json((DATA / "Alert.v2.avsc").read_text())
ADDED_IN_V1 = {
    "redacted_fields",
    "approval_id",
    "undo_window_us",
    "volatile_fields",
    "expected_version",
    "policy_rule",
    "policy_version",
    "policy_shadow",
    "grant_id",
}


def _v0_codec() -> Codec:
    """A process still on the previous version of ToolIntent."""
    return Codec({**packaged_schemas(), "ToolIntent": TOOL_INTENT_V0})


def test_versions_differ_on_the_wire() -> None:
    assert TOOL_INTENT_V0.fingerprint != fingerprint_of("ToolIntent")
    assert TOOL_INTENT_V0.type_name == "ToolIntent"


def test_old_reader_reads_new_writer(make_event: Callable[..., dict]) -> None:
    event = make_event(
        "ToolIntent", redacted_fields=["card.number"], approval_id="a-1", grant_id="g-1"
    )
    frame = encode_event(event)  # written with the current (newer) schema
    old = _v0_codec()
    with pytest.raises(UnknownFingerprint):
        old.decode(frame)  # it must first learn the writer's schema ...
    old.register(packaged_schemas()["ToolIntent"])  # ... e.g. from the schemas topic
    decoded = old.decode(frame)
    assert decoded == {k: v for k, v in event.items() if k not in ADDED_IN_V1}


def test_new_reader_reads_old_writer(make_event: Callable[..., dict]) -> None:
    event = make_event("ToolIntent")
    for added in ADDED_IN_V1:
        del event[added]
    frame = _v0_codec().encode(event)
    assert frame[2:10] == TOOL_INTENT_V0.fingerprint
    new = Codec(packaged_schemas())
    new.register(TOOL_INTENT_V0)
    decoded = new.decode(frame)
    assert decoded == {
        **event,
        "redacted_fields": [],
        "approval_id": None,
        "undo_window_us": None,
        "volatile_fields": [],
        "expected_version": None,
        "policy_rule": None,
        "policy_version": None,
        "policy_shadow": [],
        "grant_id": None,
    }


def test_unknown_enum_symbol_reads_as_the_enum_default(make_event: Callable[..., dict]) -> None:
    future = Codec({**packaged_schemas(), "Alert": ALERT_V2})
    event = make_event("Alert", kind="budget_exceeded", runbook_url="https://runbooks/budget")
    frame = future.encode(event)
    today = Codec(packaged_schemas())
    today.register(ALERT_V2)
    decoded = today.decode(frame)
    assert decoded["kind"] == "other"  # AlertKind's declared default
    assert "runbook_url" not in decoded
    assert decoded["detail"] == event["detail"]


def test_a_resolver_teaches_the_codec_on_demand(make_event: Callable[..., dict]) -> None:
    asked: list[bytes] = []

    def resolver(fp: bytes) -> str | None:
        asked.append(fp)
        return ALERT_V2.schema_json if fp == ALERT_V2.fingerprint else None

    future = Codec({**packaged_schemas(), "Alert": ALERT_V2})
    frame = future.encode(make_event("Alert"))
    today = Codec(packaged_schemas(), resolver=resolver)
    assert today.decode(frame)["kind"] == "runaway_loop"
    assert today.decode(frame)["kind"] == "runaway_loop"
    assert asked == [ALERT_V2.fingerprint]  # learned once, then known


def test_a_resolver_that_returns_another_schema_is_not_trusted(
    make_event: Callable[..., dict],
) -> None:
    future = Codec({**packaged_schemas(), "Alert": ALERT_V2})
    frame = future.encode(make_event("Alert"))
    liar = Codec(packaged_schemas(), resolver=lambda fp: TOOL_INTENT_V0.schema_json)
    with pytest.raises(UnknownFingerprint, match=ALERT_V2.fingerprint.hex()):
        liar.decode(frame)


def test_a_type_the_reader_does_not_know_is_decoded_as_written(
    make_event: Callable[..., dict],
) -> None:
    current = packaged_schemas()
    newer_only = Codec({"Alert": current["Alert"]})
    newer_only.register(current["Release"])
    event = make_event("Release", reason="r", by="b")
    assert newer_only.decode(encode_event(event)) == event


def test_a_schema_that_is_not_a_record_is_refused() -> None:
    with pytest.raises(SchemaError, match="want an Avro record"):
        SchemaInfo.from_json('"string"')
    with pytest.raises(SchemaError, match="not a valid Avro schema"):
        SchemaInfo.from_json('{"type": "record", "name": "X", "fields": [{"name": "a"}]}')


def test_every_added_field_has_a_default() -> None:
    # the rule that keeps old writers readable, checked on the v0 -> current step
    v0_names = {f["name"] for f in TOOL_INTENT_V0.parsed["fields"]}
    for field in packaged_schemas()["ToolIntent"].parsed["fields"]:
        if field["name"] not in v0_names:
            assert "default" in field, field["name"]


def test_a_process_that_predates_workflow_snapshot_reads_it_once_taught(
    make_event: Callable[..., dict],
) -> None:
    """WorkflowSnapshot is a new type: a reader built before it refuses the frame by its
    unknown fingerprint (never guesses), and decodes it as written once it learns the schema
    (from the schemas topic or PostgreSQL, as every consumer does)."""
    current = packaged_schemas()
    older = Codec({k: v for k, v in current.items() if k != "WorkflowSnapshot"})
    event = make_event("WorkflowSnapshot")
    frame = encode_event(event)
    with pytest.raises(UnknownFingerprint):
        older.decode(frame)
    older.register(current["WorkflowSnapshot"])
    assert older.decode(frame) == event


def test_a_workflow_snapshot_without_redacted_fields_reads_with_the_default(
    make_event: Callable[..., dict],
) -> None:
    """A writer of WorkflowSnapshot without `redacted_fields` (as a trimmed client in another
    language may write it) reads as having redacted nothing."""
    raw = json.loads(packaged_schemas()["WorkflowSnapshot"].schema_json)
    raw["fields"] = [f for f in raw["fields"] if f["name"] != "redacted_fields"]
    trimmed = SchemaInfo.from_json(raw)
    event = make_event("WorkflowSnapshot")
    del event["redacted_fields"]
    frame = Codec({**packaged_schemas(), "WorkflowSnapshot": trimmed}).encode(event)
    today = Codec(packaged_schemas())
    today.register(trimmed)
    assert today.decode(frame) == {**event, "redacted_fields": []}


GRANT_V0 = SchemaInfo.from_json((DATA / "Grant.v0.avsc").read_text())


def test_grants_of_an_older_writer_read_with_defaults(make_event: Callable[..., dict]) -> None:
    # data/Grant.v0.avsc is Grant without limits, reason, signature and public_key
    event = make_event("Grant")
    for added in ("limits", "reason", "signature", "public_key"):
        del event[added]
    frame = Codec({**packaged_schemas(), "Grant": GRANT_V0}).encode(event)
    new = Codec(packaged_schemas())
    new.register(GRANT_V0)
    decoded = new.decode(frame)
    assert decoded == {**event, "limits": [], "reason": None, "signature": None, "public_key": None}


def test_revocations_read_by_a_reader_that_predates_them(make_event: Callable[..., dict]) -> None:
    current = packaged_schemas()
    older = Codec({k: v for k, v in current.items() if k not in ("Grant", "GrantRevoked")})
    event = make_event("GrantRevoked", reason=None)
    older.register(current["GrantRevoked"])  # learned from the schemas topic
    assert older.decode(encode_event(event)) == event
