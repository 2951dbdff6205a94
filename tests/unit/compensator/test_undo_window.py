"""`ToolSpec.undo_window_s` reaches the compensator through the intent alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.producers import Emitter, ToolRegistry
from wakeline.producers.errors import SdkError
from wakeline.producers.registry import ToolSpec, from_mcp_annotations
from wakeline.schemas import Codec, SchemaInfo, decode_event, encode_event, packaged_schemas

from .eventkit import Events


class Recorder:
    """A Transport that keeps the frames (no broker)."""

    def __init__(self) -> None:
        self.values: list[bytes] = []

    def send(self, topic, key, value, headers, *, wait):  # noqa: ANN001, ANN201
        self.values.append(value)

    async def send_async(self, topic, key, value, headers, *, wait):  # noqa: ANN001, ANN201
        self.send(topic, key, value, headers, wait=wait)

    def flush(self, timeout: float = 30.0) -> int:
        return 0

    def close(self, timeout: float = 30.0) -> int:
        return 0


@pytest.fixture
def sdk(tmp_path: Path):  # noqa: ANN201
    tools = ToolRegistry()
    tools.declare("email.send", compensation="email.recall", undo_window_s=90)
    tools.declare("crm.update", compensation="crm.restore")
    rec = Recorder()
    emitter = Emitter(
        KafkaSettings(bootstrap="127.0.0.1:1", topics=Topics("unit.")),
        spool_dir=tmp_path / "spool",
        registry=tools,
        quarantine_gate=False,
        publish_schemas=False,
        transport=rec,
    )
    yield emitter, rec
    emitter.close(timeout=1)


def test_the_intent_records_the_undo_window_in_microseconds(sdk) -> None:  # noqa: ANN001
    emitter, rec = sdk
    ctx = emitter.workflow("wf-1", agent_id="mailer", principal="alice@example.com")
    assert ctx._framer is not None  # the pre-encoded path, whose tail holds the window
    ctx.call("email.send", lambda to: "queued", {"to": "ada@example.com"})
    ctx.call("crm.update", lambda id: "ok", {"id": "42"})
    intents = [e for e in map(decode_event, rec.values) if e["type"] == "ToolIntent"]
    assert [i["undo_window_us"] for i in intents] == [90_000_000, None]
    for value in rec.values:  # the framer's bytes are the codec's
        assert encode_event(decode_event(value)) == value


def test_the_window_must_be_a_positive_number_of_seconds() -> None:
    assert ToolSpec("a", undo_window_s=0.25).undo_window_us == 250_000
    assert ToolSpec("a").undo_window_us is None
    assert from_mcp_annotations("a", None, undo_window_s=5).undo_window_us == 5_000_000
    for bad in (0, -1, True, "60", float("nan"), float("inf")):
        with pytest.raises(SdkError, match="undo_window_s must be a positive number"):
            ToolSpec("a", undo_window_s=bad)  # type: ignore[arg-type]


#: `undo_window_us` and the ToolIntent fields added after it (each defaults to "nothing")
#: the fields added to ToolIntent since (and with) `undo_window_us`, and their defaults
_SINCE = {
    "undo_window_us": None,
    "volatile_fields": [],
    "expected_version": None,
    "policy_rule": None,
    "policy_version": None,
    "policy_shadow": [],
    "grant_id": None,
}


def _previous_intent_schema() -> SchemaInfo:
    """ToolIntent as it was before `undo_window_us`."""
    parsed = json.loads(packaged_schemas()["ToolIntent"].schema_json)
    parsed["fields"] = [f for f in parsed["fields"] if f["name"] not in _SINCE]
    return SchemaInfo.from_json(parsed)


def test_old_readers_read_new_intents_and_new_readers_old_ones() -> None:
    old_schema = _previous_intent_schema()
    old = Codec({**packaged_schemas(), "ToolIntent": old_schema})
    new = Codec(packaged_schemas())
    event = Events().intent(undo_window_us=60_000_000)

    old.register(packaged_schemas()["ToolIntent"])
    read_by_old = old.decode(new.encode(event))
    assert read_by_old == {k: v for k, v in event.items() if k not in _SINCE}

    new.register(old_schema)
    written_by_old = old.encode({k: v for k, v in event.items() if k not in _SINCE})
    assert written_by_old[2:10] == old_schema.fingerprint
    assert new.decode(written_by_old) == {**event, **_SINCE}  # no window
