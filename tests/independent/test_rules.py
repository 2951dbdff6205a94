"""One crafted bundle per rule of docs/ledger-format.md §7/§9: ledger-verify and the
independent verifier give the same verdict and the same first check, the one the rule names.
wakeline is used here only to PRODUCE the inputs."""

from __future__ import annotations

import base64
import io
import json
import random
import struct

import pytest

from tests.unit.ledger.ledgerkit import ORIGIN, build_ledger, frames, record_of, workflow_events
from wakeline.ledger import BLAKE3
from wakeline.ledger.bundle import MAGIC
from wakeline.ledger.checkpoints import generate_signer, sign_note, split_note
from wakeline.ledger.records import LedgerRecord
from wakeline.ledger.segments import PartitionChain
from wakeline.ledger.service import export_bundle, sign_checkpoint
from wakeline.ledger.sources import verify_bundle
from wakeline.ledger.store import make_entries
from wakeline.ledger.store_memory import MemoryLedgerStore

from . import bundle as B
from . import verifier as V


def both(data: bytes, keys: list[str] | None) -> tuple[tuple, tuple, object, object]:
    ours = verify_bundle(io.BytesIO(data), trusted_keys=keys)
    theirs = B.verify_bundle(data, keys)
    a = (ours.verdict, ours.first.check if ours.first else None)
    b = (theirs.verdict, theirs.first.check if theirs.first else None)
    return a, b, ours, theirs


def agree(data: bytes, keys: list[str] | None, verdict: str, check: str | None) -> object:
    a, b, ours, theirs = both(data, keys)
    assert a == b == (verdict, check), (a, b, [f.describe() for f in ours.findings])
    return ours, theirs


def assemble(parts: list[tuple[int, bytes]], *, fix_end: bool = True) -> bytes:
    """A bundle from (type, payload) frames; END's counts recomputed unless told not to."""
    out = MAGIC + b"\x01"
    counts = [sum(1 for k, _ in parts if k == kind) for kind in (2, 3, 4, 5, 6)]
    for kind, payload in parts:
        if kind == V.END and fix_end:
            payload = struct.pack(">5Q", *counts)
        out += struct.pack(">BI", kind, len(payload)) + payload
    return out


def parts_of(raw: bytes) -> list[tuple[int, bytes]]:
    return [(f.kind, f.payload) for f in frames(raw)]


@pytest.fixture(scope="module")
def led():
    return build_ledger(workflow_events(4), partitions=2, segment_size=3, seed=3)


def _ledger_of(records: dict[int, list[LedgerRecord]], signers, extra_keys=()) -> bytes:
    """A bundle over exactly these records (one segment per partition, one checkpoint)."""
    store = MemoryLedgerStore()
    for p, recs in sorted(records.items()):
        chain = PartitionChain(BLAKE3, p)
        leaves = [r.leaf_bytes() for r in recs]
        header, hashes = chain.seal(leaves)
        store.append_segment(header, make_entries(header, leaves, hashes), chain.tree.nodes)
    sign_checkpoint(store, signers, origin=ORIGIN, force=True, now_ms=1)
    out = io.BytesIO()
    keys = [s.verifier.vkey() for s in signers] + list(extra_keys)
    export_bundle(store, out, public_keys=keys)
    return out.getvalue()


# ------------------------------------------------------------------ keys (§7)


def test_a_carried_key_that_signed_but_is_not_pinned_is_used() -> None:
    ours, witness = generate_signer(ORIGIN), generate_signer("witness")
    recs = {0: [record_of(e, 0, i) for i, e in enumerate(workflow_events(1))]}
    raw = _ledger_of(recs, [ours, witness])
    assert sum(1 for k, _ in parts_of(raw) if k == V.KEY) == 2
    agree(raw, [ours.verifier.vkey()], "sound", None)
    agree(raw, None, "sound", None)


def test_a_carried_key_with_no_valid_signature_is_unused_even_when_pinned_key_verifies(
    led,
) -> None:
    stranger = generate_signer(ORIGIN).verifier.vkey()
    parts = parts_of(led.bundle())
    parts.insert(1, (V.KEY, stranger.encode()))
    agree(assemble(parts), [led.vkey], "tampered", "key.unused")


# ------------------------------------------------------------------ frames (§7)


def test_a_wrong_number_of_entries_is_tampered_not_unusable(led) -> None:
    parts = parts_of(led.bundle())
    i = next(i for i, (k, _) in enumerate(parts) if k == V.ENTRY)
    agree(assemble(parts[:i] + parts[i + 1 :]), [led.vkey], "tampered", "segment.leaf_count")
    # one entry twice: its offset repeats (found first, in entry order), and the count is off
    ours, theirs = agree(
        assemble(parts[: i + 1] + parts[i:]), [led.vkey], "tampered", "entry.offset_order"
    )
    assert "segment.leaf_count" in ours.checks()
    assert "segment.leaf_count" in [f.check for f in theirs.findings]


@pytest.mark.parametrize(
    "move",
    ["entry after key", "segment after checkpoint", "key after schema", "meta twice", "no meta"],
)
def test_frames_out_of_order_are_unusable(led, move) -> None:
    parts = parts_of(led.bundle())
    kinds = [k for k, _ in parts]
    entry = parts[kinds.index(V.ENTRY)]
    if move == "entry after key":
        parts.insert(kinds.index(V.SCHEMA), entry)
    elif move == "segment after checkpoint":
        parts.insert(len(parts) - 1, parts[kinds.index(V.SEGMENT)])
    elif move == "key after schema":
        parts.insert(kinds.index(V.SEGMENT), parts[kinds.index(V.KEY)])
    elif move == "meta twice":
        parts.insert(1, parts[0])
    else:
        parts = parts[1:]
    agree(assemble(parts), [led.vkey], "unusable", "bundle.format")


def test_bytes_after_end_and_oversized_frames_are_unusable(led) -> None:
    raw = led.bundle()
    agree(raw + b"\x00", [led.vkey], "unusable", "bundle.format")
    # a frame header claiming more than 64 MiB, even where the file then ends
    big = raw[: frames(raw)[-1].start] + struct.pack(">BI", V.CHECKPOINT, (64 << 20) + 1)
    agree(big, [led.vkey], "unusable", "bundle.format")
    # exactly 64 MiB is allowed: a cut-short frame of that length is merely truncated
    cut = raw[: frames(raw)[-1].start] + struct.pack(">BI", V.CHECKPOINT, 64 << 20) + b"x"
    agree(cut, [led.vkey], "incomplete", "bundle.truncated")


# ------------------------------------------------------------------ ranking (§9)


def test_the_worst_verdict_wins_and_integrity_comes_before_pairing() -> None:
    events = workflow_events(1, seal=False)  # intent/result pairs, no seal
    recs = [record_of(e, 0, i) for i, e in enumerate(events[:-1])]  # last result missing
    raw = _ledger_of({0: recs}, [generate_signer(ORIGIN)])
    keys = None
    agree(raw, keys, "incomplete", "pairing.unanswered_intent")
    # plus a flipped leaf byte: tampered outranks incomplete
    parts = parts_of(raw)
    i = next(i for i, (k, _) in enumerate(parts) if k == V.ENTRY)
    k, p = parts[i]
    parts[i] = (k, p[:-1] + bytes([p[-1] ^ 1]))
    agree(assemble(parts), keys, "tampered", "entry.leaf_hash")


def test_a_pairing_finding_before_an_integrity_finding_is_not_first() -> None:
    events = workflow_events(1, seal=False)
    orphan = events[1]
    recs = [record_of(orphan, 0, 0), *(record_of(e, 0, i + 1) for i, e in enumerate(events))]
    raw = _ledger_of({0: recs}, [generate_signer(ORIGIN)])
    agree(raw, None, "tampered", "pairing.orphan_result")
    parts = parts_of(raw)
    k, last = parts[-2]  # the checkpoint: claim another root (re-signing is not needed)
    body, _ = split_note(last)
    forged = body.replace(body.split(b" ")[-2], base64.b64encode(bytes(32)))
    parts[-2] = (k, forged + last[len(body) :])
    agree(assemble(parts), None, "tampered", "checkpoint.signature")


# ------------------------------------------------------------------ checkpoints (§5)


def _rechained(led, edit) -> bytes:
    """The bundle with its checkpoint bodies edited by `edit(seq, lines)` and re-signed with
    the ledger's own key, `prev` recomputed so the chain holds unless `edit` breaks it."""
    parts = parts_of(led.bundle())
    prev = None
    out = []
    for k, p in parts:
        if k == V.CHECKPOINT:
            lines = split_note(p)[0].decode().split("\n")[:-1]
            seq = int(lines[3].split(" ")[1])
            if prev is not None and lines[5] != "prev -":
                lines[5] = "prev " + base64.b64encode(prev).decode()
            lines = edit(seq, lines)
            if lines is None:
                continue
            body = ("\n".join(lines) + "\n").encode()
            prev = BLAKE3.prefixed(b"\x03", body)
            p = sign_note(body, [led.signer])
        out.append((k, p))
    return assemble(out)


def test_checkpoints_must_start_at_seq_0(led) -> None:
    raw = _rechained(led, lambda seq, lines: None if seq == 0 else lines)
    agree(raw, [led.vkey], "incomplete", "checkpoint.first_seq")


def test_prev_is_dash_exactly_at_seq_0(led) -> None:
    def edit(seq, lines):
        if seq == 0:
            lines[5] = "prev " + base64.b64encode(bytes(32)).decode()
        return lines

    agree(_rechained(led, edit), [led.vkey], "tampered", "checkpoint.chain")


def test_a_partition_may_not_disappear_from_a_later_checkpoint(led) -> None:
    last = max(int(split_note(p)[0].split(b"\n")[3].split(b" ")[1])
               for k, p in parts_of(led.bundle()) if k == V.CHECKPOINT)  # fmt: skip
    raw = _rechained(led, lambda seq, lines: lines[:-1] if seq == last else lines)
    agree(raw, [led.vkey], "tampered", "checkpoint.consistency")


def test_signature_lines_need_canonical_base64(led) -> None:
    parts = parts_of(led.bundle())
    i = next(i for i, (k, _) in enumerate(parts) if k == V.CHECKPOINT)
    note = parts[i][1]
    body, _ = split_note(note)
    line = note[len(body) + 1 :].decode()
    b64 = line.rstrip("\n").rsplit(" ", 1)[1]
    assert b64.endswith("=") and not b64.endswith("==")  # 68 bytes: 2 spare bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    c = b64[-2]
    same = alphabet[alphabet.index(c) ^ 1]  # differs only in a spare bit
    assert base64.b64decode(b64[:-2] + same + "=") == base64.b64decode(b64)
    parts[i] = (V.CHECKPOINT, body + b"\n" + line.replace(b64, b64[:-2] + same + "=").encode())
    agree(assemble(parts), [led.vkey], "tampered", "checkpoint.format")


# ------------------------------------------------------------------ schemas (§7)


def test_schema_text_must_be_in_parsing_canonical_form(led) -> None:
    parts = parts_of(led.bundle())
    i = next(i for i, (k, _) in enumerate(parts) if k == V.SCHEMA)
    text = json.dumps(json.loads(parts[i][1][8:]), indent=1).encode()  # same schema, spaced
    parts[i] = (V.SCHEMA, V.crc64_avro(text) + text)  # a fingerprint that matches the text
    ours, _ = agree(assemble(parts), [led.vkey], "tampered", "schema.canonical_form")
    assert "schema.fingerprint" not in ours.checks()


def test_our_canonical_form_is_the_avro_one_for_every_packaged_schema(led) -> None:
    for k, p in parts_of(led.bundle()):
        if k == V.SCHEMA:
            assert V.schema_problem(p[8:]) is None, p[8:60]


# ------------------------------------------------------------------ pairing (§9)


def _events_bundle(events_by_partition: dict[int, list[dict]]) -> bytes:
    recs = {
        p: [record_of(e, p, i) for i, e in enumerate(evs)] for p, evs in events_by_partition.items()
    }
    return _ledger_of(recs, [generate_signer(ORIGIN)])


def test_an_intent_in_another_partition_does_not_answer(led) -> None:
    intent, result = workflow_events(1, calls=1, seal=False)
    agree(_events_bundle({0: [intent, result]}), None, "sound", None)
    agree(_events_bundle({0: [intent], 1: [result]}), None, "tampered", "pairing.orphan_result")


def test_a_second_result_for_one_intent_is_tampered_a_redelivery_is_not() -> None:
    intent, result = workflow_events(1, calls=1, seal=False)
    second = dict(result, event_id="0190a0b0-0000-7000-8000-999999999999")
    agree(_events_bundle({0: [intent, result, second]}), None, "tampered",
          "pairing.duplicate_result")  # fmt: skip
    ours, theirs = agree(_events_bundle({0: [intent, result, result]}), None, "sound", None)
    assert ours.stats["redelivered_events"] == theirs.redelivered == 1


def test_a_seal_counts_every_event_of_its_run_and_names_none_when_it_counts_none() -> None:
    events = workflow_events(1, calls=1)  # intent, result, seal (count 2)
    agree(_events_bundle({0: events}), None, "sound", None)
    seal = events[-1]
    empty = dict(seal, event_count=0, last_event_id=None)
    agree(_events_bundle({0: [empty]}), None, "sound", None)
    agree(_events_bundle({0: [dict(empty, last_event_id="x")]}), None, "tampered",
          "pairing.seal_last_event")  # fmt: skip
    # a second seal of the same run counts the first one too
    again = dict(seal, event_id="0190a0b0-0000-7000-8000-999999999998", event_count=3,
                 last_event_id=seal["event_id"])  # fmt: skip
    agree(_events_bundle({0: [*events, again]}), None, "sound", None)
    agree(_events_bundle({0: [*events, dict(again, event_count=2)]}), None, "tampered",
          "pairing.seal_count")  # fmt: skip


def test_a_seal_counts_only_its_own_writers_events_of_the_run() -> None:
    """A detector's alert (or an operator's quarantine, an approver's decision) in the run,
    written by another source, is not the agent's to count; the agent's own events are."""
    intent, result, seal = workflow_events(1, calls=1)
    foreign = dict(seal, event_id="0190a0b0-0000-7000-8000-999999999996",
                   source="wakeline-operator", event_count=0, last_event_id=None)  # fmt: skip
    agree(_events_bundle({0: [intent, foreign, result, seal]}), None, "sound", None)
    # the same event by the agent's own writer (counting its intent): the final seal's 2 is short
    mine = dict(foreign, source=seal["source"], event_count=1, last_event_id=intent["event_id"])
    agree(_events_bundle({0: [intent, mine, result, seal]}), None, "tampered",
          "pairing.seal_count")  # fmt: skip


# ------------------------------------------------------------------ approvals (§9)


def _approval_cases() -> dict[str, tuple[list[dict], str, str | None]]:
    from tests.approvalkit import Approvers, result_of, signed, waiting_call

    t0 = 1_780_000_000_000_000
    group = Approvers.of("alice@example.com", "bob@example.com")
    a, b = "alice@example.com", "bob@example.com"
    intent, req = waiting_call("wf-1", group, quorum=2, at=t0)
    ok = result_of(intent, at=t0 + 5_000_000)

    def yes(who: str, **kw) -> dict:
        return signed(req, group, who, at=t0 + 1_000_000, **kw)

    bad_sig = yes(a)
    bad_sig["signature"] = bytes(64)
    no = signed(req, group, b, "deny", at=t0 + 2)
    timeout = dict(no, timed_out=True, signature=None, public_key=None, approver="sdk")
    _, other = waiting_call("wf-1", group, quorum=2, at=t0, amount=5)
    lying = dict(req, intent_digest=other["intent_digest"])
    mallory_group = Approvers.of(a)
    mallory = mallory_group.keys[a]
    return {
        "approved": ([intent, req, yes(a), yes(b), ok], "sound", None),
        "denied_did_not_run": ([intent, req, no, result_of(intent, "denied")], "sound", None),
        "timed_out": ([intent, req, timeout, result_of(intent, "denied")], "sound", None),
        "bad_signature": ([intent, req, bad_sig, yes(b), ok], "tampered",
                          "approval.bad_signature"),
        "wrong_key": ([intent, req, yes(a, key=mallory), yes(b), ok], "tampered",
                      "approval.wrong_key"),
        "unbound_decision": ([intent, req, yes(a, binding=bytes(32)), ok], "tampered",
                             "approval.unbound"),
        "unbound_request": ([intent, lying, ok], "tampered", "approval.unbound"),
        "orphan_request": ([req], "tampered", "approval.orphan"),
        # the same request id in another run, listing another group: the first one holds
        "duplicate_request": ([intent, req, dict(req, run_id="other", approver_keys=
                               Approvers.of(a).texts()), yes(a), yes(b), ok], "tampered",
                              "approval.duplicate_request"),
        "duplicate_request_takeover": ([intent, req, dict(req, run_id="other", approver_keys=
                                        mallory_group.texts()),
                                        signed(req, mallory_group, a, at=t0 + 1), ok],
                                       "tampered", "approval.duplicate_request"),
        "orphan_decision": ([yes(a)], "tampered", "approval.orphan"),
        "one_of_two": ([intent, req, yes(a), ok], "tampered", "approval.quorum_missing"),
        "same_twice": ([intent, req, yes(a), yes(a), ok], "tampered",
                       "approval.quorum_missing"),
        "expired": ([intent, req, yes(a), yes(b, expires_at=t0 + 2_000_000), ok], "tampered",
                    "approval.quorum_missing"),
        "denied_but_ran": ([intent, req, yes(a), yes(b), no, ok], "tampered",
                           "approval.quorum_missing"),
        "approved_after": ([intent, req, yes(a), ok, yes(b)], "tampered",
                           "approval.quorum_missing"),
    }  # fmt: skip


@pytest.mark.parametrize("case", sorted(_approval_cases()))
def test_approval_rules(case: str) -> None:
    events, verdict, check = _approval_cases()[case]
    ours, theirs = agree(_events_bundle({0: events}), None, verdict, check)
    assert [f.check for f in ours.findings if f.check.startswith("approval.")] == [
        f.check for f in theirs.findings if f.check.startswith("approval.")
    ]


# ------------------------------------------------------------------ header vs body (§9)


@pytest.mark.parametrize("header", ["ce_id", "ce_type", "ce_subject"])
@pytest.mark.parametrize("how", ["forged", "missing", "repeated"])
def test_a_header_that_disagrees_with_the_body_is_a_warning(header, how) -> None:
    events = workflow_events(1, calls=1)
    recs = [record_of(e, 0, i) for i, e in enumerate(events)]
    r = recs[1]
    if how == "forged":
        headers = tuple((k, b"forged" if k == header else v) for k, v in r.headers)
    elif how == "missing":
        headers = tuple((k, v) for k, v in r.headers if k != header)
    else:
        headers = (*r.headers, (header, r.header(header)))
    recs[1] = LedgerRecord(r.partition, r.offset, r.timestamp, r.key, r.value, headers)
    ours, theirs = agree(_ledger_of({0: recs}, [generate_signer(ORIGIN)]), None, "sound", None)
    warned = [f for f in ours.findings if f.check == "event.header_mismatch"]
    assert [(f.verdict, f.partition, f.leaf_index, f.offset, f.field) for f in warned] == [
        ("warning", 0, 1, 1, header)
    ]
    assert [(f.check, f.leaf_index, f.field) for f in theirs.findings] == [
        ("event.header_mismatch", 1, header)
    ]


# ------------------------------------------------------------------ at random


def test_both_verifiers_agree_on_random_damage(led) -> None:
    raw = led.bundle()
    rnd = random.Random(8)
    for n in range(300):
        pos = rnd.randrange(len(raw))
        mode = n % 3
        if mode == 0:
            data = raw[:pos] + bytes([raw[pos] ^ rnd.randrange(1, 256)]) + raw[pos + 1 :]
        elif mode == 1:
            data = raw[:pos] + raw[pos + rnd.randrange(1, 60) :]
        else:
            data = raw[:pos]
        a, b, _, _ = both(data, [led.vkey] if n % 2 else None)
        assert a == b, (n, mode, pos)
