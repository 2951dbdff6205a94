"""Hostile input against the SDK's gates and its emitter: never a crash, never fail open.

Bounded: `FUZZ_EXAMPLES` examples per property (default 200), no deadline (the
machine is shared; performance is measured in `bench/`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.producers import Emitter, SdkError, ToolRegistry
from wakeline.producers.gates import QuarantineGate
from wakeline.schemas import decode_event, encode_event, new_event_id

from .conftest import fuzz_settings

FUZZ = fuzz_settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
WF = b"wf-quarantined"


def _event(type_name: str, **fields) -> bytes:  # noqa: ANN003
    event = {
        "event_id": new_event_id(),
        "type": type_name,
        "time": 1,
        "source": "fuzz",
        "workflow_id": WF.decode(),
        "run_id": "r",
        "step_id": None,
        "agent_id": "detector",
        "tenant": None,
        "boundary": None,
        "parent_event_ids": [],
        "correlation_id": None,
        "principal": "ops",
        "trace_id": None,
        "span_id": None,
        **fields,
    }
    return encode_event(event)


QUARANTINE = _event("Quarantine", reason="runaway", by="ops", scope="workflow")
RELEASE = _event("Release", reason="ok", by="ops")


def _lifts(value: bytes | None) -> bool:
    """The oracle: only a tombstone or a well-formed Release lifts a quarantine."""
    if value is None:
        return True
    try:
        return decode_event(value).get("type") == "Release"
    except Exception:  # noqa: BLE001
        return False


@st.composite
def _mutated(draw: st.DrawFn, frame: bytes) -> bytes:
    """A valid frame with a few bytes changed, then maybe truncated."""
    b = bytearray(frame)
    for _ in range(draw(st.integers(1, 8))):
        b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
    return bytes(b[: draw(st.integers(0, len(b)))])


HOSTILE_VALUES = st.one_of(
    st.none(),
    st.binary(max_size=512),
    st.binary(max_size=64).map(lambda b: b"\x00" + b + b"\x00"),
    st.sampled_from([QUARANTINE, RELEASE]).flatmap(_mutated),
    st.just(QUARANTINE[:5] + b"\xff" * 64),
    st.integers(1, 4).map(lambda n: b"\xc3\x01" + b"\xff" * (n * 300_000)),
)
HOSTILE_KEYS = st.one_of(
    st.none(),
    st.just(WF),
    st.binary(max_size=64),
    st.just(WF + b"\x00"),
    st.just(b"\xff\xfe" + WF),
)


@pytest.fixture
def gate() -> Iterator[QuarantineGate]:
    g = QuarantineGate.offline(fail_closed=True)
    yield g
    g.close()


@FUZZ
@given(records=st.lists(st.tuples(HOSTILE_KEYS, HOSTILE_VALUES), max_size=20))
def test_hostile_state_records_never_crash_the_gate_nor_open_it(gate, records):
    gate.apply(WF, QUARANTINE)
    expect_quarantined = True
    for key, value in records:
        gate.apply(key, value)  # must not raise
        if key == WF:
            expect_quarantined = not _lifts(value)
    got = gate.check(WF.decode())
    assert (got is not None) == expect_quarantined
    if got is not None:
        assert isinstance(got.reason, str) and isinstance(got.by, str)
    gate.apply(WF, None)


def test_a_huge_or_nul_record_keeps_the_workflow_quarantined(gate):
    gate.apply(WF, QUARANTINE)
    for value in (b"\x00" * 5_000_000, QUARANTINE + b"\x00" * 1000, b"", b"\x00"):
        gate.apply(WF, value)
        assert gate.check(WF.decode()) is not None
    gate.apply(WF, RELEASE)
    assert gate.check(WF.decode()) is None


# -- hostile tool arguments ----------------------------------------------------------------
class _Recorder:
    def __init__(self) -> None:
        self.sent = 0

    def send(self, topic, key, value, headers, *, wait):  # noqa: ANN001
        decode_event(value)
        self.sent += 1

    async def send_async(self, topic, key, value, headers, *, wait):  # noqa: ANN001
        self.send(topic, key, value, headers, wait=wait)

    def flush(self, timeout: float = 0) -> int:
        return 0

    def close(self, timeout: float = 0) -> int:
        return 0


@pytest.fixture(scope="module")
def emitter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emitter]:
    reg = ToolRegistry()
    reg.declare("t", reversibility="read", impact="low", redact={"secret"}, digest_only={"d"})
    reg.declare("w", reversibility="reversible", impact="low", writes=("k:{x}",))
    em = Emitter(
        KafkaSettings(bootstrap="127.0.0.1:1", topics=Topics("fuzz.")),
        spool_dir=Path(tmp_path_factory.mktemp("spool")),
        registry=reg,
        quarantine_gate=False,
        publish_schemas=False,
        loop_guard=False,
        max_payload_bytes=64 * 1024,
        transport=_Recorder(),
    )
    yield em
    em.close(timeout=1)


class Opaque:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    __format__ = __str__  # type: ignore[assignment]


def _cyclic() -> dict:
    d: dict = {"a": 1}
    d["self"] = d
    d["twice"] = [d, d]
    return d


HOSTILE_LEAVES = st.one_of(
    st.just(math.nan),
    st.just(math.inf),
    st.just(-math.inf),
    st.integers().filter(lambda n: abs(n) > 2**53 - 1),
    st.binary(max_size=8),
    st.sets(st.integers(), max_size=3),
    st.builds(Opaque),
    st.builds(object),
    st.just("\ud800"),
    st.builds(_cyclic),
    st.integers(1, 3).map(lambda n: "x" * (n * 70_000)),
)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
    ),
    max_leaves=10,
)


@FUZZ
@given(
    field=st.sampled_from(["plain", "secret", "d", "x"]),
    bad=HOSTILE_LEAVES,
    nest=st.integers(0, 3),
    other=JSONISH,
    bad_key=st.booleans(),
)
def test_hostile_arguments_give_a_clear_sdk_error_and_write_nothing(
    emitter, field, bad, nest, other, bad_key
):
    huge_text = isinstance(bad, str) and len(bad) > 1000
    for _ in range(nest):
        bad = [bad] if nest % 2 else {"n": bad}
    args: dict = {"other": other, field: bad}
    if bad_key:
        args = {**args, 7: "int key"}
    ctx = emitter.workflow("wf-fuzz", agent_id="a", principal="p")
    before = emitter.transport.sent
    tool = "w" if field == "x" else "t"
    try:
        ctx.call(tool, lambda **kw: None, args)
    except SdkError as e:
        assert str(e)
        assert emitter.transport.sent == before  # refused before anything was written
    else:
        # only a redacted field may hold anything (it never reaches the log), and a
        # digest-only one any text, however long (only its digest does)
        assert not bad_key and (field == "secret" or (field == "d" and huge_text))
        assert emitter.transport.sent == before + 2
    ctx.call("t", lambda **kw: None, {"plain": 1})  # the emitter still works
    assert emitter.transport.sent >= before + 2
