"""Property tests: every kind of tampering is detected, by the check that should catch it.

One sound ledger (real Avro events, 2 partitions, segments of 1-4 leaves, checkpoints) is
exported once; hypothesis then picks what to mutate in its bundle.
"""

from __future__ import annotations

import functools
import io
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wakeline.ledger.bundle import CHECKPOINT, END, ENTRY, KEY, META, SCHEMA, SEGMENT
from wakeline.ledger.checkpoints import generate_signer, sign_note, split_note
from wakeline.ledger.records import LedgerRecord, leaf_bytes, parse_leaf
from wakeline.ledger.segments import FIELD_OFFSETS
from wakeline.ledger.sources import verify_bundle

from .ledgerkit import ORIGIN, Frame, build_ledger, frames, workflow_events

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def sound() -> tuple[bytes, str, list[Frame]]:
    led = build_ledger(workflow_events(8), partitions=2, segment_size=4, seed=7)
    data = led.bundle()
    return data, led.vkey, frames(data)


def verify(data: bytes):
    _, vkey, _ = sound()
    return verify_bundle(io.BytesIO(data), trusted_keys=[vkey])


def first(data: bytes) -> tuple[str, str]:
    r = verify(data)
    assert r.first is not None, "mutation went undetected"
    return r.verdict, r.first.check


def of_kind(kind: int) -> list[Frame]:
    return [f for f in sound()[2] if f.kind == kind]


def frame_bytes(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BI", kind, len(payload)) + payload


def segments() -> list[tuple[Frame, list[Frame]]]:
    """(segment frame, its entry frames) in bundle order."""
    out: list[tuple[Frame, list[Frame]]] = []
    for f in sound()[2]:
        if f.kind == SEGMENT:
            out.append((f, []))
        elif f.kind == ENTRY:
            out[-1][1].append(f)
    return out


def flip(data: bytes, pos: int, mask: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ mask]) + data[pos + 1 :]


def test_the_sound_bundle_is_sound() -> None:
    assert verify(sound()[0]).verdict == "sound"


masks = st.integers(1, 255)


@SETTINGS
@given(st.data(), masks)
def test_any_byte_flipped_in_a_leaf_is_caught_by_its_leaf_hash(data, mask) -> None:
    entry = data.draw(st.sampled_from(of_kind(ENTRY)))
    pos = data.draw(st.integers(entry.start + 5 + 32, entry.end - 1))
    assert first(flip(sound()[0], pos, mask)) == ("tampered", "entry.leaf_hash")


@SETTINGS
@given(st.data(), masks)
def test_a_flipped_stored_leaf_hash_is_caught(data, mask) -> None:
    entry = data.draw(st.sampled_from(of_kind(ENTRY)))
    pos = data.draw(st.integers(entry.start + 5, entry.start + 5 + 31))
    assert first(flip(sound()[0], pos, mask)) == ("tampered", "entry.leaf_hash")


HEADER_CHECKS = {
    "version": {"segment.format"},
    "suite": {"segment.format", "segment.suite"},
    "partition": {"segment.chain", "segment.number", "entry.partition"},
    "segment_number": {"segment.number"},
    "first_leaf_index": {"segment.first_leaf_index"},
    "leaf_count": {"segment.leaf_count"},
    "first_offset": {"segment.offsets"},
    "last_offset": {"segment.offsets"},
    "min_timestamp": {"segment.time_range"},
    "max_timestamp": {"segment.time_range"},
    "segment_root": {"segment.root"},
    "tree_size": {"segment.tree_size"},
    "tree_root": {"segment.tree_root"},
    "prev_hash": {"segment.chain"},
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), masks)
def test_any_byte_flipped_in_a_segment_header_is_caught_by_that_fields_check(data, mask) -> None:
    seg = data.draw(st.sampled_from(of_kind(SEGMENT)))
    field = data.draw(st.sampled_from(sorted(FIELD_OFFSETS)))
    lo, hi = FIELD_OFFSETS[field]
    pos = seg.start + 5 + data.draw(st.integers(lo, hi - 1))
    verdict, check = first(flip(sound()[0], pos, mask))
    assert verdict == "tampered"
    assert check in HEADER_CHECKS[field], (field, check)


@SETTINGS
@given(st.data())
def test_any_entry_deleted_is_caught_by_the_leaf_count(data) -> None:
    entry = data.draw(st.sampled_from(of_kind(ENTRY)))
    raw = sound()[0]
    assert first(raw[: entry.start] + raw[entry.end :]) == ("tampered", "segment.leaf_count")


@SETTINGS
@given(st.data())
def test_any_entry_inserted_is_caught_by_the_leaf_count(data) -> None:
    # a well-formed forged leaf, hashed correctly, at an unused offset inside the segment
    seg, entries = data.draw(st.sampled_from(segments()))
    i = data.draw(st.integers(0, len(entries) - 1))
    victim = parse_leaf(entries[i].payload[32:])
    forged = LedgerRecord(
        victim.partition, victim.offset + 1, victim.timestamp, b"wf-x", b"forged", ()
    )
    from wakeline.ledger import BLAKE3

    leaf = leaf_bytes(forged)
    raw = sound()[0]
    at = entries[i].end
    mutated = raw[:at] + frame_bytes(ENTRY, BLAKE3.leaf_hash(leaf) + leaf) + raw[at:]
    assert first(mutated) == ("tampered", "segment.leaf_count")


@SETTINGS
@given(st.data())
def test_any_entry_duplicated_is_caught_by_offset_order(data) -> None:
    entry = data.draw(st.sampled_from(of_kind(ENTRY)))
    raw = sound()[0]
    dup = raw[entry.start : entry.end]
    assert first(raw[: entry.end] + dup + raw[entry.end :]) == ("tampered", "entry.offset_order")


@SETTINGS
@given(st.data())
def test_any_two_entries_reordered_are_caught_by_offset_order(data) -> None:
    entries = of_kind(ENTRY)
    i = data.draw(st.integers(0, len(entries) - 2))
    j = data.draw(st.integers(i + 1, len(entries) - 1))
    a, b = entries[i], entries[j]
    raw = sound()[0]
    mutated = (
        raw[: a.start]
        + raw[b.start : b.end]
        + raw[a.end : b.start]
        + raw[a.start : a.end]
        + raw[b.end :]
    )
    verdict, check = first(mutated)
    assert verdict == "tampered"
    # within a segment offsets go backwards; across segments the earlier segment's last
    # offset no longer matches its header; across partitions the leaf lands in a segment of
    # another partition
    assert check in {"entry.offset_order", "segment.offsets", "entry.partition"}


def _drop(seg: Frame, entries: list[Frame]) -> bytes:
    raw = sound()[0]
    end = entries[-1].end if entries else seg.end
    return raw[: seg.start] + raw[end:]


def test_any_segment_dropped_is_caught() -> None:
    segs = segments()
    last_of_partition = {}
    for k, (seg, _) in enumerate(segs):
        last_of_partition[struct.unpack_from(">I", seg.payload, 2)[0]] = k
    for k, (seg, entries) in enumerate(segs):
        verdict, check = first(_drop(seg, entries))
        if k in last_of_partition.values():
            # nothing follows it in its partition: the checkpoint that covers it and the
            # END counts notice the gap
            assert verdict == "tampered" and check == "bundle.trailer", (k, check)
        else:
            assert (verdict, check) == ("tampered", "segment.chain"), k


def test_two_segments_swapped_are_caught_by_the_chain() -> None:
    segs = segments()
    (s1, e1), (s2, e2) = segs[0], segs[2]  # same partition (partitions interleave)
    raw = sound()[0]
    a_end, b_end = e1[-1].end, e2[-1].end
    mutated = (
        raw[: s1.start]
        + raw[s2.start : b_end]
        + raw[a_end : s2.start]
        + raw[s1.start : a_end]
        + raw[b_end:]
    )
    assert first(mutated) == ("tampered", "segment.chain")


@SETTINGS
@given(st.data())
def test_a_truncated_tail_is_incomplete(data) -> None:
    raw = sound()[0]
    cut = data.draw(st.integers(0, len(raw) - 1))
    assert first(raw[:cut]) == ("incomplete", "bundle.truncated")


def _replace(frame: Frame, payload: bytes) -> bytes:
    raw = sound()[0]
    return raw[: frame.start] + frame_bytes(frame.kind, payload) + raw[frame.end :]


@SETTINGS
@given(st.data())
def test_a_forged_checkpoint_resigned_with_an_unknown_key_is_caught(data) -> None:
    cp = data.draw(st.sampled_from(of_kind(CHECKPOINT)))
    body, _ = split_note(cp.payload)
    lines = body.decode().split("\n")
    k = data.draw(st.integers(6, len(lines) - 2))  # a partition line
    p, size, root, hh = lines[k].split(" ")
    lines[k] = " ".join((p, size, hh, hh))  # claim another root
    forged = "\n".join(lines).encode()
    # same name as the real key, so only the key id betrays it
    note = sign_note(forged, [generate_signer(ORIGIN)])
    assert first(_replace(cp, note)) == ("tampered", "checkpoint.signature")


def test_a_forgery_that_also_swaps_the_bundle_key_is_caught_by_the_roots() -> None:
    # without pinned keys a forger can replace the public key and re-sign every checkpoint;
    # the tree recomputed from the leaves still contradicts the forged root
    forger = generate_signer(ORIGIN)
    last = of_kind(CHECKPOINT)[-1]
    out = sound()[0][: sound()[2][0].start]
    for f in sound()[2]:
        payload = f.payload
        if f.kind == KEY:
            payload = forger.verifier.vkey().encode()
        elif f.kind == CHECKPOINT:
            lines = split_note(payload)[0].decode().split("\n")
            if f is last:
                p, size, root, hh = lines[6].split(" ")
                lines[6] = " ".join((p, size, hh, hh))
            payload = sign_note("\n".join(lines).encode(), [forger])
        out += frame_bytes(f.kind, payload)
    r = verify_bundle(io.BytesIO(out))  # keys not pinned
    assert r.verdict == "tampered"
    # the previous checkpoint may already hold that size, then consistency speaks first
    assert r.first.check in {"checkpoint.root", "checkpoint.consistency"}
    assert "checkpoint.root" in r.checks()
    # and with the auditor's pinned key, the very first checkpoint is already refused
    assert first(out) == ("tampered", "checkpoint.signature")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), masks)
def test_any_byte_flipped_anywhere_fails_verification(data, mask) -> None:
    raw = sound()[0]
    pos = data.draw(st.integers(0, len(raw) - 1))
    r = verify(flip(raw, pos, mask))
    assert r.verdict != "sound", pos


@SETTINGS
@given(st.data(), masks)
def test_flips_outside_segments_are_caught_by_their_own_checks(data, mask) -> None:
    expect = {
        META: {"bundle.format", "checkpoint.origin", "meta.suite"},
        KEY: {"key.format"},
        SCHEMA: {"schema.fingerprint", "schema.canonical_form"},
        CHECKPOINT: {"checkpoint.signature", "checkpoint.format"},
        END: {"bundle.trailer"},
    }
    kind = data.draw(st.sampled_from(sorted(expect)))
    f = data.draw(st.sampled_from(of_kind(kind)))
    pos = data.draw(st.integers(f.start + 5, f.end - 1))
    r = verify(flip(sound()[0], pos, mask))
    assert r.verdict in {"tampered", "unusable"}
    assert r.first.check in expect[kind], (kind, r.first.check)


def test_a_swapped_public_key_is_caught_even_with_pinned_keys() -> None:
    key = of_kind(KEY)[0]
    stranger = generate_signer(ORIGIN).verifier.vkey().encode()
    assert first(_replace(key, stranger)) == ("tampered", "key.unused")
    r = verify_bundle(io.BytesIO(_replace(key, stranger)))  # unpinned: signatures fail first
    assert (r.verdict, r.first.check) == ("tampered", "checkpoint.signature")
