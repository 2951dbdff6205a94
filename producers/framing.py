"""Frames of a workflow run's tool events, assembled from bytes encoded once per run.

Every event of a run shares its envelope (source, workflow, run, agent, principal, ...), and
every intent of a tool shares its spec's fields; the generic codec still encodes each of
those fields again for every event (~15 µs for an intent and its result). `RunFramer`
encodes them when the run starts and joins pre-encoded pieces with the few fields that
change per event (id, time, arguments, digest, result), producing the same bytes as
`wakeline.schemas.encode_event` with the same CloudEvents headers.

Byte-equality is checked, not assumed: a framer is built only if its frames of a sample
event equal the codec's, and unit tests re-encode its frames with the codec. Anything
unusual (per-call parents or step id are handled; a field that would not encode is not)
raises, and the caller falls back to the codec, which gives the verdict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from wakeline.producers.gates import PolicyDecision
from wakeline.producers.registry import ToolSpec
from wakeline.schemas import (
    CONTENT_TYPE,
    MAGIC,
    ce_type,
    encode_event,
    fingerprint_of,
    rfc3339_micros,
    schema_for,
)
from wakeline.schemas.compiled import avro_long

if TYPE_CHECKING:
    from wakeline.producers.canonical import Canonical

Headers = list[tuple[str, bytes]]

_NULL = b"\x00"
_EMPTY = b"\x00"  # an empty array or map
_ID_LENGTH = avro_long(36)  # a UUID string
_SPECVERSION = ("ce_specversion", b"1.0")
_CONTENT_TYPE = ("content-type", CONTENT_TYPE)


_LENGTHS = [avro_long(i) for i in range(128)]


def _string(text: str) -> bytes:
    raw = text.encode()
    n = len(raw)
    return (_LENGTHS[n] if n < 128 else avro_long(n)) + raw


def _varint(n: int) -> bytes:
    """Unsigned little-endian base-128 (what follows the zig-zag step of an Avro long)."""
    out = []
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


#: (zig-zagged time >> 21, the varint bytes above its low three 7-bit groups): they change
#: about once a second
_time_high: tuple[int, bytes] = (-1, b"")


def avro_time(time_us: int) -> bytes:
    """`avro_long` of a current epoch-microsecond time, reusing its high-order bytes."""
    global _time_high
    if time_us < 1 << 40:  # not a current time: the general path
        return avro_long(time_us)
    n = time_us << 1  # zig-zag of a positive long
    high, tail = _time_high
    if high != n >> 21:
        high = n >> 21
        tail = _varint(high)
        _time_high = (high, tail)
    return bytes(((n & 0x7F) | 0x80, (n >> 7 & 0x7F) | 0x80, (n >> 14 & 0x7F) | 0x80)) + tail


def _string_bytes(raw: bytes) -> bytes:
    n = len(raw)
    return (_LENGTHS[n] if n < 128 else avro_long(n)) + raw


def _optional(text: str | None) -> bytes:
    return _NULL if text is None else b"\x02" + _string(text)


def _optional_long(n: int | None) -> bytes:
    return _NULL if n is None else b"\x02" + avro_long(n)


def _strings(items: Sequence[str]) -> bytes:
    if not items:
        return _EMPTY
    return avro_long(len(items)) + b"".join(_string(s) for s in items) + _EMPTY


def _string_map(items: Mapping[str, str]) -> bytes:
    if not items:
        return _EMPTY
    body = b"".join(_string(k) + _string(v) for k, v in items.items())
    return avro_long(len(items)) + body + _EMPTY


def _enum(type_name: str, field: str) -> dict[str, bytes]:
    for f in schema_for(type_name)["fields"]:
        if f["name"] == field:
            return {sym: avro_long(i) for i, sym in enumerate(f["type"]["symbols"])}
    raise LookupError(f"{type_name} has no enum field {field}")


_REVERSIBILITY = _enum("ToolIntent", "reversibility")
_IMPACT = _enum("ToolIntent", "impact")
_OUTCOME = _enum("ToolIntent", "policy_decision")
_DURABILITY = _enum("ToolIntent", "durability")
_STATUS = _enum("ToolResult", "status")


def _head(type_name: str) -> bytes:
    """Frame header, then the event_id length (ids are always 36 characters)."""
    return MAGIC + fingerprint_of(type_name) + _ID_LENGTH


_INTENT_HEAD = _head("ToolIntent")
_RESULT_HEAD = _head("ToolResult")
_INTENT_TYPE = _string("ToolIntent")
_RESULT_TYPE = _string("ToolResult")
_INTENT_CE_TYPE = ("ce_type", ce_type("ToolIntent").encode())
_RESULT_CE_TYPE = ("ce_type", ce_type("ToolResult").encode())


def spec_tail(spec: ToolSpec, decision: PolicyDecision, reason: str, mode: str) -> bytes:
    """The intent fields after the resource keys, up to `volatile_fields`: fixed for a spec,
    decision and mode (`expected_version`, per call, follows it, then `decision_tail`)."""
    return b"".join(
        (
            _REVERSIBILITY[spec.reversibility],
            _IMPACT[spec.impact],
            _optional(spec.compensation),
            _OUTCOME[decision.outcome],
            _optional(reason),
            _DURABILITY[mode],
            _strings(spec.redacted_fields),
            _optional(decision.approval_id),
            _optional_long(spec.undo_window_us),
            _strings(spec.volatile_list),
        )
    )


def decision_tail(decision: PolicyDecision) -> bytes:
    """The intent fields after `expected_version`: the decision's rule, policy version,
    shadow verdicts and grant (an empty rule or version is recorded as null)."""
    return b"".join(
        (
            _optional(decision.rule or None),
            _optional(decision.version or None),
            _strings(decision.shadow),
            _optional(decision.grant_id),
        )
    )


#: `decision_tail` of a decision without rule, version, shadow or grant (allow-all)
NO_POLICY_TAIL = _NULL * 4


class RunFramer:
    """Pre-encoded envelope of one run (the template of a `WorkflowContext`)."""

    __slots__ = ("_before_step", "_after_step", "_after_parents", "_default", "_source", "_subject")

    def __init__(self, template: Mapping[str, Any]) -> None:
        t = template
        self._before_step = _string(t["source"]) + _string(t["workflow_id"]) + _string(t["run_id"])
        self._after_step = (
            _string(t["agent_id"]) + _optional(t["tenant"]) + _optional(t["boundary"])
        )
        self._after_parents = (
            _optional(t["correlation_id"])
            + _string(t["principal"])
            + _optional(t["trace_id"])
            + _optional(t["span_id"])
        )
        #: the envelope when the call adds neither a step id nor parents
        self._default = self.envelope(t["step_id"], t["parent_event_ids"])
        self._source = ("ce_source", t["source"].encode())
        self._subject = ("ce_subject", t["workflow_id"].encode())

    def envelope(self, step_id: str | None, parents: Sequence[str]) -> bytes:
        """Envelope bytes from `source` to `span_id` (the fields after `time`)."""
        return (
            self._before_step
            + _optional(step_id)
            + self._after_step
            + _strings(parents)
            + self._after_parents
        )

    def headers(self, event_id: bytes, ce_type_header: tuple[str, bytes], time_us: int) -> Headers:
        """The same list `cloudevents_headers` gives for the event."""
        return [
            _SPECVERSION,
            ("ce_id", event_id),
            ce_type_header,
            self._source,
            ("ce_time", rfc3339_micros(time_us).encode()),
            self._subject,
            _CONTENT_TYPE,
        ]

    def intent(
        self,
        event_id: str,
        time_us: int,
        envelope: bytes | None,
        tool: str,
        canonical: Canonical,
        reads: Sequence[str],
        writes: Sequence[str],
        tail: bytes,
        expected_version: str | None = None,
        after: bytes = NO_POLICY_TAIL,
    ) -> tuple[bytes, Headers]:
        eid = event_id.encode()
        digest = canonical.digest
        frame = b"".join(
            (
                _INTENT_HEAD,
                eid,
                _INTENT_TYPE,
                avro_time(time_us),
                self._default if envelope is None else envelope,
                _string(tool),
                _string_bytes(canonical.json),
                _string_bytes(digest),
                _strings(reads),
                _strings(writes),
                tail,
                _optional(expected_version),
                after,
            )
        )
        return frame, self.headers(eid, _INTENT_CE_TYPE, time_us)

    def result(
        self,
        event_id: str,
        time_us: int,
        envelope: bytes | None,
        intent_id: str,
        status: str,
        duration_us: int,
        result_digest: bytes | None = None,
        result_summary: str | None = None,
        external_ids: Mapping[str, str] | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
    ) -> tuple[bytes, Headers]:
        eid = event_id.encode()
        frame = b"".join(
            (
                _RESULT_HEAD,
                eid,
                _RESULT_TYPE,
                avro_time(time_us),
                self._default if envelope is None else envelope,
                _string(intent_id),
                _STATUS[status],
                _NULL if result_digest is None else b"\x02" + avro_long(len(result_digest)),
                b"" if result_digest is None else result_digest,
                _optional(result_summary),
                _optional(error_type),
                _optional(error_message),
                _string_map(external_ids or {}),
                avro_long(duration_us),
            )
        )
        return frame, self.headers(eid, _RESULT_CE_TYPE, time_us)


def checked_framer(template: Mapping[str, Any]) -> RunFramer | None:
    """A framer for the template (whose `parent_event_ids` are the run's own parents), or
    None when its frames would differ from the codec's: then the codec frames every event
    and reports what does not encode."""
    try:
        framer = RunFramer(template)
        sample = dict(template)
        sample.update(event_id="0" * 36, type="ToolResult", time=1)
        sample.update(intent_id="1" * 36, status="ok", duration_us=5)
        got, _ = framer.result("0" * 36, 1, None, "1" * 36, "ok", 5)
        if got != encode_event(sample):
            return None
    except Exception:  # noqa: BLE001 - an envelope the codec refuses: let it say why
        return None
    return framer


#: (tool name, durability, the decision's recorded fields) -> (spec, tail, decision tail);
#: bounded, see `intent_tail`
_TAILS: dict[tuple[Any, ...], tuple[ToolSpec, bytes, bytes]] = {}
_MAX_TAILS = 512


def intent_tail(
    spec: ToolSpec, decision: PolicyDecision, reason: str, mode: str
) -> tuple[bytes, bytes]:
    """(`spec_tail`, `decision_tail`), cached: the same spec object (specs are frozen) and
    the same recorded decision fields give the same bytes. The key holds only what the
    bytes depend on: a decision's approver group (a mapping of keys) is not hashable."""
    d = decision
    key = (
        spec.name,
        mode,
        d.outcome,
        reason,
        d.rule,
        d.version,
        d.shadow,
        d.approval_id,
        d.grant_id,
    )
    hit = _TAILS.get(key)
    if hit is not None and hit[0] is spec:
        return hit[1], hit[2]
    tail = spec_tail(spec, decision, reason, mode)
    after = decision_tail(decision)
    if len(_TAILS) >= _MAX_TAILS:  # e.g. policies with a reason per call: never grow unbounded
        _TAILS.clear()
    _TAILS[key] = (spec, tail, after)
    return tail, after
