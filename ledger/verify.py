"""The full verifier of docs/ledger-format.md §9, fed segment by segment from any source.

Sources (a bundle file, a LedgerStore, Kafka) call `begin`, `add_key`, `add_schema`,
`add_segment`, `add_checkpoint` and `finish` in bundle order. Every check has a stable name
(`segment.root`, `entry.leaf_hash`, ...) and a verdict kind; the report names the first bad
item with its partition, segment, leaf index, offset, event id, field, expected and found.

Verdicts, worst first: tampered (the evidence contradicts itself or its signatures),
unusable (the input cannot be read as a ledger), incomplete (the evidence is consistent but
something it commits to is missing). Exit codes: 0 sound, 10 tampered, 11 incomplete,
12 unusable. Warning findings (`event.header_mismatch`, `tail.behind`) name a position and
never change the verdict.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from typing import Any

from wakeline.errors import LedgerError

from .checkpoints import Verifier as KeyVerifier
from .checkpoints import open_note, parse_body, parse_vkey, split_note
from .errors import FormatError, SignatureError
from .hashing import HashSuite, suite_named
from .merkle import MerkleTree, perfect_levels, root_from_levels
from .pairing import Decode, PairingChecker, default_decode
from .records import LEAF_VERSION, parse_leaf
from .report import (
    EXIT_CODES,
    INCOMPLETE,
    MAX_FINDINGS,
    MAX_WARNINGS,
    SEVERITY,
    SOUND,
    TAMPERED,
    UNUSABLE,
    WARNING,
    Finding,
    VerifyReport,
)
from .schemafp import crc64_avro
from .segments import GENESIS, SegmentHeader, header_hash

_LEAF_FIXED = struct.Struct(">BIQq")
_I32 = struct.Struct(">i")


class _Partition:
    __slots__ = ("tree", "next_number", "prev_hash", "last_offset", "diverged", "ends", "claimed")

    def __init__(self, suite: HashSuite) -> None:
        self.tree = MerkleTree(suite)
        self.next_number = 0
        self.prev_hash = GENESIS
        self.last_offset = -1
        self.diverged = False  # cumulative checks stop after the first break
        #: tree size at each segment end -> (tree root as checked, header hash as seen)
        self.ends: dict[int, tuple[bytes, bytes]] = {}
        self.claimed = 0  # tree size the newest header claims


Progress = Callable[[int], None]


class LedgerVerifier:
    """Streams a ledger through every check; see the module docstring for the protocol."""

    def __init__(
        self,
        *,
        trusted_keys: Sequence[str] | None = None,
        decode: Decode | None | bool = True,
        progress: Progress | None = None,
    ) -> None:
        self.report = VerifyReport()
        self._pinned = [parse_vkey(k) for k in trusted_keys] if trusted_keys else []
        self.report.keys_pinned = bool(self._pinned)
        self._bundle_keys: list[KeyVerifier] = []
        if decode is True:
            decode = default_decode()
            if decode is None:
                self.report.warnings.append("wakeline.schemas is unavailable: pairing skipped")
        self._pairing = PairingChecker(decode) if callable(decode) else None
        self._progress = progress
        self._suite: HashSuite | None = None
        self._origin: str | None = None
        self._parts: dict[int, _Partition] = {}
        self._checkpoint: Any = None  # the previous parsed checkpoint
        self._stats = self.report.stats
        for k in ("partitions", "segments", "leaves", "checkpoints", "signed_leaves", "keys"):
            self._stats[k] = 0
        self._stats["schemas"] = 0
        self._stopped = False
        #: a bundle's keys are evidence too: each must have signed one of its checkpoints
        self.keys_are_evidence = False
        self._used_keys: set[str] = set()

    # ------------------------------------------------------------------ findings

    def fail(self, verdict: str, check: str, message: str, **where: Any) -> None:
        if SEVERITY[verdict] > SEVERITY[self.report.verdict]:
            self.report.verdict = verdict
        for k in ("expected", "found"):
            if isinstance(where.get(k), bytes):
                where[k] = where[k].hex()
            elif where.get(k) is not None:
                where[k] = str(where[k])
        listed = self.report.findings
        if verdict == WARNING:
            n = self._stats["warning_findings"] = self._stats.get("warning_findings", 0) + 1
            if n <= MAX_WARNINGS:
                listed.append(Finding(verdict, check, message, **where))
            return
        if len(listed) < MAX_FINDINGS or all(f.verdict != verdict for f in listed):
            listed.append(Finding(verdict, check, message, **where))
        else:
            self.report.suppressed += 1

    def _fail_pairing(self, issue: Any) -> None:
        w = issue.where
        self.fail(
            issue.verdict, issue.check, issue.message,
            partition=w.partition, leaf_index=w.leaf_index, offset=w.offset,
            event_id=w.event_id, expected=issue.expected, found=issue.found,
        )  # fmt: skip

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self, verdict: str, check: str, message: str, **where: Any) -> None:
        """A failure after which the input cannot be read further."""
        self.fail(verdict, check, message, **where)
        self._stopped = True

    # ------------------------------------------------------------------ feed

    def begin(self, origin: str, suite: str) -> None:
        self._origin = origin
        self.report.origin = origin
        self.report.suite = suite
        try:
            self._suite = suite_named(suite)
        except LedgerError as e:
            self.stop(UNUSABLE, "meta.suite", str(e), found=suite)

    def add_key(self, vkey: str) -> None:
        self._stats["keys"] += 1
        try:
            self._bundle_keys.append(parse_vkey(vkey))
        except FormatError as e:
            self.fail(TAMPERED, "key.format", f"public key {vkey!r}: {e}")

    def add_schema(self, fingerprint: bytes, canonical_form: bytes) -> None:
        self._stats["schemas"] += 1
        problem = canonical_form_problem(canonical_form)
        if problem is not None:
            self.fail(TAMPERED, "schema.canonical_form", problem,
                      found=canonical_form[:200].decode("utf-8", "replace"))  # fmt: skip
        got = crc64_avro(canonical_form)
        if got != fingerprint:
            self.fail(
                TAMPERED,
                "schema.fingerprint",
                "schema text does not have the fingerprint it is filed under",
                expected=fingerprint,
                found=got,
            )

    def add_segment(
        self,
        raw: bytes,
        leaves: Sequence[bytes],
        stored: Sequence[bytes] | None = None,
        fixed: Sequence[Sequence[Any]] | None = None,
    ) -> None:
        """One segment header (raw bytes), its leaves, and the leaf hashes the source
        stored for them (None when the source stores none, e.g. Kafka). `fixed` may hold
        the leaves' fixed fields already parsed, as columns (versions, partitions, offsets,
        timestamps), entries too short for them holding None."""
        suite = self._suite
        if suite is None:
            self.stop(UNUSABLE, "meta.missing", "segment before the ledger's suite is known")
            return
        self._stats["segments"] += 1
        try:
            h = SegmentHeader.from_bytes(raw)
        except FormatError as e:
            self.fail(TAMPERED, "segment.format", str(e), field="version/suite")
            self._stats["leaves"] += len(leaves)
            return
        p, n = h.partition, h.segment_number
        at = {"partition": p, "segment": n}
        part = self._parts.get(p)
        if part is None:
            part = self._parts[p] = _Partition(suite)
            self._stats["partitions"] += 1
        if h.suite_code != suite.code:
            self.fail(
                TAMPERED,
                "segment.suite",
                "header names another hash suite",
                **at,
                field="suite",
                expected=suite.code,
                found=h.suite_code,
            )
        # header-time checks: the link to the previous header first, as it is the one a
        # forger cannot fake; then the position it claims
        if h.prev_hash != part.prev_hash:
            self.fail(
                TAMPERED,
                "segment.chain",
                "previous-header hash does not name the segment before it",
                **at,
                field="prev_hash",
                expected=part.prev_hash,
                found=h.prev_hash,
            )
        if n != part.next_number:
            self.fail(
                TAMPERED,
                "segment.number",
                "segment number breaks the sequence",
                **at,
                field="segment_number",
                expected=part.next_number,
                found=n,
            )
        if not part.diverged and h.first_leaf_index != part.tree.size:
            self.fail(
                TAMPERED,
                "segment.first_leaf_index",
                "segment does not start where the previous one ended",
                **at,
                field="first_leaf_index",
                expected=part.tree.size,
                found=h.first_leaf_index,
            )
            part.diverged = True
        # entries: one vectorised pass; the slow per-entry pass only to name what is wrong
        hashes = suite.leaf_hashes(leaves)
        base = h.first_leaf_index
        scan = None
        if stored is None or stored == hashes:
            scan = _fast_scan(leaves, p, part.last_offset, fixed)
        if scan is None:
            scan = self._slow_scan(at, base, leaves, stored, hashes, p, part.last_offset)
        first_offset, last_offset, tmin, tmax, offsets = scan
        pairing = self._pairing
        if pairing is not None:
            for i, (leaf, off) in enumerate(zip(leaves, offsets, strict=True)):
                issue = pairing.add(p, base + i, off, _leaf_value(leaf))
                if pairing.last_event is not None:
                    self._check_headers(leaf, pairing.last_event, p, n, base + i, off)
                if issue is not None:
                    self._fail_pairing(issue)
        part.last_offset = last_offset
        k = len(hashes)
        self._stats["leaves"] += k
        # segment-end checks: what the header claims about its leaves
        if k != h.leaf_count:
            self.fail(
                TAMPERED,
                "segment.leaf_count",
                "segment holds another number of leaves than its header commits to",
                **at,
                field="leaf_count",
                expected=h.leaf_count,
                found=k,
            )
            part.diverged = True
        elif k:
            if (first_offset, last_offset) != (h.first_offset, h.last_offset):
                self.fail(
                    TAMPERED,
                    "segment.offsets",
                    "first/last offset differ from the header",
                    **at,
                    field="first_offset/last_offset",
                    expected=f"{h.first_offset}..{h.last_offset}",
                    found=f"{first_offset}..{last_offset}",
                )
            if (tmin, tmax) != (h.min_timestamp, h.max_timestamp):
                self.fail(
                    TAMPERED,
                    "segment.time_range",
                    "time range differs from the header",
                    **at,
                    field="min_timestamp/max_timestamp",
                    expected=f"{h.min_timestamp}..{h.max_timestamp}",
                    found=f"{tmin}..{tmax}",
                )
        levels = perfect_levels(suite, hashes)
        seg_root = root_from_levels(suite, levels, k)
        if seg_root != h.segment_root:
            self.fail(
                TAMPERED,
                "segment.root",
                "root of the segment's leaves differs from the header",
                **at,
                field="segment_root",
                expected=h.segment_root,
                found=seg_root,
            )
        part.tree.extend(hashes, levels)
        hh = header_hash(suite, raw)
        if not part.diverged:
            if h.tree_size != part.tree.size:
                self.fail(
                    TAMPERED,
                    "segment.tree_size",
                    "cumulative tree size differs from the header",
                    **at,
                    field="tree_size",
                    expected=h.tree_size,
                    found=part.tree.size,
                )
                part.diverged = True
            else:
                root = part.tree.root()
                if root != h.tree_root:
                    self.fail(
                        TAMPERED,
                        "segment.tree_root",
                        "cumulative tree root differs from the header",
                        **at,
                        field="tree_root",
                        expected=h.tree_root,
                        found=root,
                    )
                    part.diverged = True
                else:
                    part.ends[h.tree_size] = (h.tree_root, hh)
        part.next_number = n + 1
        part.prev_hash = hh
        part.claimed = h.tree_size
        if self._progress is not None:
            self._progress(k)

    def _check_headers(
        self, leaf: bytes, ev: dict, p: int, n: int, leaf_index: int, offset: int
    ) -> None:
        """The body is the truth: each of ce_id, ce_type, ce_subject must appear once and
        say what the decoded body says; otherwise a warning (the leaf commits to the bytes
        as produced, so this is never tampering)."""
        headers = _ce_headers(leaf)
        if headers is None:  # not well-formed leaf bytes: the entry checks speak
            return
        for name, want in (
            (b"ce_id", ev.get("event_id")),
            (b"ce_type", f"dev.wakeline.{ev.get('type')}.v1"),
            (b"ce_subject", ev.get("workflow_id")),
        ):
            got = headers.get(name, ())
            if len(got) == 1 and want is not None and got[0] == want.encode("utf-8"):
                continue
            found = (
                "no header" if not got
                else f"{len(got)} headers" if len(got) > 1
                else got[0].decode("utf-8", "replace") if got[0] is not None else "null"
            )  # fmt: skip
            self.fail(
                WARNING,
                "event.header_mismatch",
                f"the {name.decode()} header disagrees with the event body",
                partition=p, segment=n, leaf_index=leaf_index, offset=offset,
                event_id=ev.get("event_id"), field=name.decode(), expected=want, found=found,
            )  # fmt: skip

    def _slow_scan(
        self,
        at: dict[str, int],
        base: int,
        leaves: Sequence[bytes],
        stored: Sequence[bytes] | None,
        hashes: list[bytes],
        p: int,
        last_offset: int,
    ) -> tuple[int | None, int, int | None, int | None, list[int]]:
        """Entry by entry, recording a finding for each bad leaf."""
        unpack = _LEAF_FIXED.unpack_from
        first_offset = tmin = tmax = None
        offsets = []
        for i, leaf in enumerate(leaves):
            lh = hashes[i]
            if stored is not None and stored[i] != lh:
                self.fail(
                    TAMPERED,
                    "entry.leaf_hash",
                    "leaf bytes do not hash to the stored leaf hash",
                    **at,
                    leaf_index=base + i,
                    event_id=_event_id(leaf),
                    expected=stored[i],
                    found=lh,
                )
            if len(leaf) < _LEAF_FIXED.size:
                self.fail(
                    TAMPERED,
                    "entry.format",
                    "leaf is shorter than its fixed fields",
                    **at,
                    leaf_index=base + i,
                )
                offsets.append(-1)
                continue
            version, lp, off, ts = unpack(leaf)
            offsets.append(off)
            if version != LEAF_VERSION or lp != p:
                self.fail(
                    TAMPERED,
                    "entry.partition" if version == LEAF_VERSION else "entry.format",
                    "leaf belongs to another partition or format",
                    **at,
                    leaf_index=base + i,
                    offset=off,
                    event_id=_event_id(leaf),
                    expected=f"v{LEAF_VERSION} p{p}",
                    found=f"v{version} p{lp}",
                )
            if off <= last_offset:
                self.fail(
                    TAMPERED,
                    "entry.offset_order",
                    "offsets are not strictly increasing",
                    **at,
                    leaf_index=base + i,
                    offset=off,
                    event_id=_event_id(leaf),
                    expected=f"> {last_offset}",
                    found=off,
                )
            last_offset = off
            if first_offset is None:
                first_offset = off
                tmin = tmax = ts
            else:
                tmin = min(tmin, ts)  # type: ignore[type-var]
                tmax = max(tmax, ts)  # type: ignore[type-var]
        return first_offset, last_offset, tmin, tmax, offsets

    def add_checkpoint(self, note: bytes) -> None:
        suite = self._suite
        if suite is None:
            self.stop(UNUSABLE, "meta.missing", "checkpoint before the ledger's suite is known")
            return
        self._stats["checkpoints"] += 1
        idx = self._stats["checkpoints"] - 1
        keys = self._pinned or self._bundle_keys
        if not keys:
            if "checkpoint.keys" not in self.report.checks():
                self.fail(UNUSABLE, "checkpoint.keys", "no public key to check checkpoint "
                          "signatures with; pass --trusted-key")  # fmt: skip
            return
        self._note_signers(note)
        try:
            body, _ = open_note(note, keys)
            cp = parse_body(body)
        except SignatureError as e:
            self.fail(TAMPERED, "checkpoint.signature", str(e), field=f"checkpoint #{idx}")
            return
        except FormatError as e:
            self.fail(TAMPERED, "checkpoint.format", str(e), field=f"checkpoint #{idx}")
            return
        at = {"field": f"checkpoint seq {cp.seq}"}
        parts = [h.partition for h in cp.heads]
        if any(a >= b for a, b in zip(parts, parts[1:], strict=False)):
            self.fail(TAMPERED, "checkpoint.format", "checkpoint has two lines for one partition",
                      field=f"checkpoint #{idx}")  # fmt: skip
            return
        if cp.origin != self._origin:
            self.fail(
                TAMPERED,
                "checkpoint.origin",
                "checkpoint is for another log",
                **at,
                expected=self._origin,
                found=cp.origin,
            )
        if cp.suite != suite.name:
            self.fail(
                TAMPERED,
                "checkpoint.suite",
                "checkpoint uses another hash suite",
                **at,
                expected=suite.name,
                found=cp.suite,
            )
        prev = self._checkpoint
        if (cp.seq == 0) != (cp.prev is None):
            self.fail(
                TAMPERED,
                "checkpoint.chain",
                "prev is '-' exactly when seq is 0",
                **at,
                expected="prev -" if cp.seq == 0 else "a prev hash",
                found="a prev hash" if cp.seq == 0 else "prev -",
            )
        elif prev is None:
            if cp.seq != 0:
                self.fail(
                    INCOMPLETE,
                    "checkpoint.first_seq",
                    "the input's first checkpoint is not seq 0: earlier ones are missing",
                    **at,
                    expected="seq 0",
                    found=f"seq {cp.seq}",
                )
        elif cp.seq != prev.seq + 1 or cp.prev != prev.hash():
            self.fail(
                TAMPERED,
                "checkpoint.chain",
                "checkpoint does not follow the previous one (seq and prev hash)",
                **at,
                expected=f"seq {prev.seq + 1}",
                found=f"seq {cp.seq}",
            )
        if prev is not None:
            for old in prev.heads:
                if cp.head(old.partition) is None:
                    self.fail(
                        TAMPERED,
                        "checkpoint.consistency",
                        "a partition of the previous checkpoint is missing from this one",
                        partition=old.partition,
                        **at,
                        expected=f"a line for partition {old.partition}",
                        found="none",
                    )
        for head in cp.heads:
            hat = {"partition": head.partition, **at}
            old = prev.head(head.partition) if prev is not None else None
            if old is not None and head.tree_size < old.tree_size:
                self.fail(
                    TAMPERED,
                    "checkpoint.consistency",
                    "partition shrank between consecutive checkpoints",
                    **hat,
                    expected=f">= {old.tree_size}",
                    found=head.tree_size,
                )
            if old is not None and head.tree_size == old.tree_size and head.root != old.root:
                self.fail(
                    TAMPERED,
                    "checkpoint.consistency",
                    "same size, another root than the previous checkpoint",
                    **hat,
                    expected=old.root,
                    found=head.root,
                )
            part = self._parts.get(head.partition)
            if head.tree_size == 0:
                self.fail(
                    TAMPERED,
                    "checkpoint.head",
                    "checkpoint names a partition with no leaves (size 0 is no segment end)",
                    **hat,
                    found=0,
                )
                continue
            if part is None or head.tree_size > part.claimed:
                have = part.claimed if part else 0
                self.fail(
                    INCOMPLETE,
                    "checkpoint.coverage",
                    "checkpoint commits to leaves the input does not hold",
                    **hat,
                    expected=head.tree_size,
                    found=have,
                )
                continue
            end = part.ends.get(head.tree_size)
            if end is None:
                if not part.diverged:
                    self.fail(
                        TAMPERED,
                        "checkpoint.head",
                        "checkpoint tree size is not the end of a segment",
                        **hat,
                        found=head.tree_size,
                    )
                continue
            if end[0] != head.root:
                self.fail(
                    TAMPERED,
                    "checkpoint.root",
                    "checkpoint root differs from the tree recomputed from the leaves",
                    **hat,
                    expected=end[0],
                    found=head.root,
                )
            if end[1] != head.header_hash:
                self.fail(
                    TAMPERED,
                    "checkpoint.header_hash",
                    "checkpoint names another segment header than the chain holds",
                    **hat,
                    expected=end[1],
                    found=head.header_hash,
                )
        self._checkpoint = cp

    def _note_signers(self, note: bytes) -> None:
        """Record which carried keys signed this note, trusted or not (each key is checked
        until it has). A note that does not split signs nothing."""
        if not self.keys_are_evidence:
            return
        try:
            body, sigs = split_note(note)
        except FormatError:
            return
        for k in self._bundle_keys:
            vkey = k.vkey()
            if vkey in self._used_keys:
                continue
            if any(n == k.name and r[:4] == k.key_id and k.verify(body, r[4:]) for n, r in sigs):
                self._used_keys.add(vkey)

    def add_tail(
        self,
        partition: int,
        first_offset: int,
        count: int,
        timestamp_ms: int | None,
        *,
        now_ms: int,
        stale_after_ms: int,
    ) -> None:
        """Records on the events topic after the partition's last ledgered offset: `count`
        offsets from `first_offset`, the first with broker timestamp `timestamp_ms` (None
        when the broker gives none). Older than the threshold: the ledger is incomplete (its
        builder is stuck); younger: a warning (a builder is simply behind)."""
        if count <= 0:
            return
        self._stats["unledgered_tail"] = self._stats.get("unledgered_tail", 0) + count
        age = None if timestamp_ms is None else now_ms - timestamp_ms
        stale = age is None or age > stale_after_ms
        shown = "unknown" if age is None else f"{age / 1000:.1f} s"
        self.fail(
            INCOMPLETE if stale else WARNING,
            "tail.stale" if stale else "tail.behind",
            f"{count} record(s) on the events topic are not in the ledger; the first is "
            f"{shown} old" + (f" (threshold {stale_after_ms / 1000:g} s)" if stale else ""),
            partition=partition,
            offset=first_offset,
            field="unledgered tail",
            expected=f"age <= {stale_after_ms / 1000:g} s",
            found=f"{count} record(s), age {shown}",
        )

    def tail_unchecked(self, reason: str) -> None:
        """The events topic could not be read: say so, the tail may hide a stuck partition."""
        text = f"the unledgered tail could not be checked: {reason}"
        self.fail(WARNING, "tail.unchecked", text)
        self.report.warnings.append(text)

    def finish(self, *, complete: bool = True) -> VerifyReport:
        """End of input; `complete` is False when the source stopped short (truncation)."""
        r = self.report
        keys = self._pinned or self._bundle_keys
        r.trusted_keys = [k.vkey() for k in keys]
        if self.keys_are_evidence and complete and not self._stopped:
            for k in self._bundle_keys:
                if k.vkey() not in self._used_keys:
                    self.fail(
                        TAMPERED,
                        "key.unused",
                        "the input carries a public key that signed none of its checkpoints",
                        found=k.vkey(),
                    )
        if not self._pinned:
            r.warnings.append(
                "no pinned keys: checkpoint signatures were checked against the keys the input "
                "itself carries; pass --trusted-key to rule out a re-signed forgery"
            )
        if self._pairing is not None and not self._stopped and complete:
            for issue in self._pairing.finish():
                self._fail_pairing(issue)
        if self._pairing is not None:
            self._stats["undecodable_events"] = self._pairing.undecodable
            checked = self._pairing.approvals
            if checked.requests:
                self._stats["approval_requests"] = len(checked.requests)
                self._stats["approval_decisions"] = checked.decisions
                self._stats["approved_calls"] = checked.approved_calls
            if self._pairing.redelivered:
                self._stats["redelivered_events"] = self._pairing.redelivered
                w = self._pairing.first_redelivered
                r.warnings.append(
                    f"{self._pairing.redelivered} event(s) repeat the event id of an earlier "
                    f"event of their run and were counted once (first: partition "
                    f"{w.partition} leaf {w.leaf_index}, event {w.event_id})"  # type: ignore[union-attr]
                )
            if self._pairing.undecodable:
                w = self._pairing.first_undecodable
                r.warnings.append(
                    f"{self._pairing.undecodable} event value(s) do not decode and were left out "
                    f"of pairing (first: partition {w.partition} leaf {w.leaf_index})"  # type: ignore[union-attr]
                )
        cp = self._checkpoint
        if cp is None and not self._stopped and complete:
            self.fail(
                INCOMPLETE, "checkpoint.missing", "no valid signed checkpoint covers the ledger"
            )
        if cp is not None:
            signed = sum(h.tree_size for h in cp.heads)
            self._stats["signed_leaves"] = signed
            unsigned = self._stats["leaves"] - signed
            if unsigned > 0:
                r.warnings.append(
                    f"{unsigned} leaves after the newest checkpoint are chained but not signed"
                )
        return r


def _fast_scan(
    leaves: Sequence[bytes],
    p: int,
    last_offset: int,
    fixed: Sequence[Sequence[Any]] | None = None,
) -> tuple[int | None, int, int | None, int | None, list[int]] | None:
    """(first offset, last offset, min ts, max ts, offsets) when every leaf is well-formed,
    of partition p and strictly after `last_offset`; None when anything is off."""
    if not leaves:
        return None, last_offset, None, None, []
    if fixed is not None:
        versions, parts, offs, stamps = fixed
    else:
        unpack = _LEAF_FIXED.unpack_from
        try:
            versions, parts, offs, stamps = zip(*[unpack(x) for x in leaves], strict=True)
        except struct.error:
            return None
    if set(versions) != {LEAF_VERSION} or set(parts) != {p} or offs[0] <= last_offset:
        return None
    offsets = list(offs)
    if len(set(offsets)) != len(offsets) or sorted(offsets) != offsets:
        return None
    return offsets[0], offsets[-1], min(stamps), max(stamps), offsets


def canonical_form_problem(text: bytes) -> str | None:
    """Why a SCHEMA frame's text is not an Avro schema in Parsing Canonical Form, or None.

    The fingerprint of a schema is defined over its canonical form; a text that is not one
    cannot be the schema an event frame's fingerprint names."""
    try:
        from fastavro.schema import parse_schema, to_parsing_canonical_form
    except ImportError:  # pragma: no cover - fastavro is a dependency
        return None
    try:
        decoded = text.decode("utf-8")
        canonical = to_parsing_canonical_form(parse_schema(json.loads(decoded), named_schemas={}))
    except Exception as e:  # fastavro raises many kinds for a bad schema
        return f"schema text is not a valid Avro schema: {e}"
    if canonical != decoded:
        return "schema text is not in Parsing Canonical Form"
    return None


def _event_id(leaf: bytes) -> str | None:
    """The event id (ce_id header) of leaf bytes, for naming a bad item; None if unreadable."""
    try:
        return parse_leaf(leaf).event_id
    except FormatError:
        return None


_CE_NAMES = frozenset((b"ce_id", b"ce_type", b"ce_subject"))
_U32 = struct.Struct(">I")


def _ce_headers(leaf: bytes) -> dict[bytes, list[bytes | None]] | None:
    """The values of the ce_id, ce_type and ce_subject headers of leaf bytes, by name, in
    record order; None unless the leaf's blobs and headers account for every byte. (The
    verifier's hot path: parse_leaf builds a whole record, this only walks the headers.)"""
    i32, u32 = _I32.unpack_from, _U32.unpack_from
    size = len(leaf)
    found: dict[bytes, list[bytes | None]] = {}
    try:
        pos = 21
        for _ in range(2):  # key, value
            (k,) = i32(leaf, pos)
            pos += 4 + max(k, 0)
            if k < -1:
                return None
        (count,) = u32(leaf, pos)
        pos += 4
        for _ in range(count):
            (k,) = u32(leaf, pos)
            name = leaf[pos + 4 : pos + 4 + k]
            pos += 4 + k
            (m,) = i32(leaf, pos)
            pos += 4
            if m < -1:
                return None
            if name in _CE_NAMES:
                found.setdefault(name, []).append(leaf[pos : pos + m] if m >= 0 else None)
            pos += max(m, 0)
    except struct.error:
        return None
    return found if pos == size else None


def _leaf_value(leaf: bytes) -> bytes | None:
    """The record value inside leaf bytes (after the fixed fields and the key)."""
    try:
        (kn,) = _I32.unpack_from(leaf, 21)
        pos = 25 + max(kn, 0)
        (vn,) = _I32.unpack_from(leaf, pos)
    except struct.error:
        return None
    if vn < 0 or pos + 4 + vn > len(leaf):
        return None
    return leaf[pos + 4 : pos + 4 + vn]


__all__ = [
    "EXIT_CODES",
    "INCOMPLETE",
    "SOUND",
    "TAMPERED",
    "UNUSABLE",
    "Decode",
    "Finding",
    "LedgerVerifier",
    "Progress",
    "VerifyReport",
]
