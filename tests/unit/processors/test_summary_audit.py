"""Plain-language summaries and the audit record's wire form."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import fastavro
import pytest

from wakeline.errors import SchemaError
from wakeline.ledger.hashing import BLAKE3
from wakeline.ledger.records import LedgerRecord
from wakeline.ledger.store_memory import MemoryLedgerStore
from wakeline.processors.audit import AUDIT_SCHEMA, decode_audit, encode_audit
from wakeline.processors.auditor import Auditor
from wakeline.processors.builder import LedgerBuilder
from wakeline.processors.summary import authorized_by, describe_args, intent_memo, summarize
from wakeline.testkit.samples import frames, intent, result

AVSC = Path(__file__).resolve().parents[3] / "schemas" / "AuditRecord.avsc"


def charge() -> dict:
    e = intent("wf-1", 0)
    e["args"] = '{"amount":"12.99","currency":"usd","customer":"123"}'
    return e


def test_result_summary_names_agent_tool_customer_amount_and_status() -> None:
    i = charge()
    memo = intent_memo(i)
    r = result(i)
    assert (
        summarize(r, {i["event_id"]: memo}.get)
        == "agent billing-bot called stripe.charge for customer 123, USD 12.99: ok"
    )


def test_result_without_its_intent_says_which_intent_it_answers() -> None:
    i = charge()
    r = result(i, status="error") | {"error_type": "CardDeclined", "error_message": "no funds"}
    line = summarize(r)
    assert i["event_id"] in line
    assert line.endswith(": error (CardDeclined: no funds)")


def test_intent_and_other_events_read_as_sentences() -> None:
    i = charge() | {"policy_decision": "require_approval"}
    assert summarize(i) == (
        "agent billing-bot is about to call stripe.charge for customer 123, USD 12.99 "
        "(policy: require_approval)"
    )
    q = {"type": "Quarantine", "workflow_id": "wf-9", "scope": "workflow", "by": "loop-detector",
         "reason": "same call 5 times in 2 s"}  # fmt: skip
    assert summarize(q) == (
        "workflow wf-9 quarantined (workflow) by loop-detector: same call 5 times in 2 s"
    )


def test_arguments_without_known_fields_show_a_few_pairs() -> None:
    assert describe_args('{"path":"/tmp/x","mode":"w"}') == "with path=/tmp/x, mode=w"
    assert describe_args("not json") == ""
    assert describe_args('{"amount_cents":1299,"currency":"eur"}') == "for EUR 12.99"


def _audit_for(value: bytes | None, error_value: bool = False, **fields: object) -> dict:
    """Ledger an intent (with `fields`) and its result (or junk) in a memory store, then
    audit the segment."""
    store = MemoryLedgerStore()
    b = LedgerBuilder(store, BLAKE3, max_leaves=10, max_age_s=1)
    b.assign([0])
    i = charge() | fields
    key, v, headers = frames(i)
    recs = [LedgerRecord(0, 0, 1, key, v, tuple(headers))]
    rk, rv, rh = frames(result(i))
    recs.append(LedgerRecord(0, 1, 2, rk, value if error_value else rv, tuple(rh)))
    b.add(recs)
    (seg,) = b.seal([0])

    class Producer:
        def __init__(self) -> None:
            self.sent: list[tuple] = []

        def produce(self, topic, value=None, key=None, partition=None, headers=None, **kw):  # type: ignore[no-untyped-def]
            self.sent.append((topic, key, value, partition, headers))

        def flush(self, timeout: float) -> int:
            return 0

    producer = Producer()
    auditor = Auditor(
        producer, events_topic="p.events", audit_topic="p.audit", dlq_topic="p.dlq",
        store=lambda: store,
    )  # fmt: skip
    assert auditor.audit_segment(seg.header, at_us=5_000_000) == 2
    return {"sent": producer.sent, "seg": seg}


def test_auditor_sends_one_audit_per_leaf_and_dlq_for_undecodable() -> None:
    out = _audit_for(b"garbage", error_value=True)
    sent, seg = out["sent"], out["seg"]
    topics = [s[0] for s in sent]
    assert topics == ["p.audit", "p.dlq", "p.audit"]
    dlq = dict(sent[1][4])
    assert sent[1][2] == b"garbage"
    assert dlq["wakeline_dlq_offset"] == b"1"
    assert b"MalformedFrame" in dlq["wakeline_dlq_reason"]
    assert dlq["ce_id"] == dict(seg.items[1].record.headers)["ce_id"]  # original headers kept
    bad = decode_audit(sent[2][2])
    assert bad["event_id"] is None and bad["decode_error"].startswith("MalformedFrame")
    assert bad["summary"].startswith("undecodable record at partition 0 offset 1")
    assert bad["leaf_hash"] == seg.leaf_hashes[1]


def test_audit_record_decodes_with_the_avsc_file_and_fastavro_alone() -> None:
    sent = _audit_for(None)["sent"]
    frame = sent[1][2]
    schema = fastavro.parse_schema(json.loads(AVSC.read_text()))
    canonical = fastavro.schema.to_parsing_canonical_form(schema)
    fp = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
    assert frame[:2] == b"\xc3\x01" and frame[2:10] == fp
    rec = fastavro.schemaless_reader(BytesIO(frame[10:]), schema, None)
    assert rec["summary"] == (
        "agent billing-bot called stripe.charge for customer 123, USD 12.99: ok"
    )
    assert rec["principal"] == "alice@example.com"
    assert rec["tool"] == "stripe.charge" and rec["status"] == "ok"
    assert rec["leaf_index"] == 1 and len(rec["leaf_hash"]) == 32


def test_audit_codec_refuses_foreign_frames() -> None:
    with pytest.raises(SchemaError, match="want c301"):
        decode_audit(b"\x00" * 20)
    assert AUDIT_SCHEMA.type_name == "AuditRecord"
    with pytest.raises(SchemaError):
        encode_audit({"summary": "x"})


def test_fast_audit_encoder_writes_exactly_what_fastavro_writes() -> None:
    from wakeline.processors import audit

    for _, _, value, _, _ in _audit_for(b"junk", error_value=True)["sent"]:
        if value[:10] != audit._HEADER:
            continue  # the DLQ copy of the junk record
        rec = decode_audit(value)
        buf = BytesIO()
        fastavro.schemaless_writer(buf, audit._PARSED, rec)
        assert value == audit._HEADER + buf.getvalue()


def test_authorized_by_names_the_grant_approval_or_rule() -> None:
    base = charge()
    assert authorized_by(base) is None  # allow-all: no policy engine decided
    ruled = base | {"policy_rule": "small", "policy_version": "ab" * 32}
    assert authorized_by(ruled) == "rule small of policy " + "ab" * 6
    assert authorized_by(ruled | {"approval_id": "ap-1"}) == "approval ap-1"
    assert authorized_by(ruled | {"approval_id": "ap-1", "grant_id": "g-1"}) == "grant g-1"
    assert authorized_by(ruled | {"policy_decision": "deny"}) is None


def test_audit_records_of_intent_and_result_name_what_allowed_the_call() -> None:
    sent = _audit_for(None, policy_rule="small", policy_version="cd" * 32)["sent"]
    intent_rec, result_rec = (decode_audit(s[2]) for s in sent)
    assert (
        intent_rec["authorized_by"]
        == result_rec["authorized_by"]
        == ("rule small of policy " + "cd" * 6)
    )
