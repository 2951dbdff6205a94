from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wakeline.producers import Spool, SpoolError, SpoolRecord
from wakeline.producers.spool import MAGIC, encode_record, read_segment


def rec(seq: int, value: bytes = b"v", key: bytes | None = b"wf-1") -> SpoolRecord:
    return SpoolRecord(
        seq, "t.events", key, value, (("ce_id", f"id-{seq}".encode()), ("none", None))
    )


def test_records_round_trip_in_seq_order(tmp_path: Path):
    spool = Spool(tmp_path)
    spool.append([rec(3), rec(1)])
    spool.append([rec(2, key=None)], sync=False)
    assert [r.seq for r in spool.read()] == [1, 2, 3]
    assert spool.read()[1] == rec(2, key=None)
    assert spool.read()[0].headers == (("ce_id", b"id-1"), ("none", None))
    assert not spool.is_empty()
    spool.close()


def test_reopen_after_close_keeps_everything_and_continues_seq(tmp_path: Path):
    spool = Spool(tmp_path)
    spool.append([rec(i, bytes([i]) * i) for i in range(1, 50)])
    spool.close()
    again = Spool(tmp_path)
    assert [r.value for r in again.read()] == [bytes([i]) * i for i in range(1, 50)]
    assert again.max_seq() == 49
    again.close()


def test_a_second_writer_is_refused(tmp_path: Path):
    spool = Spool(tmp_path)
    with pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path)
    spool.close()
    Spool(tmp_path).close()


def _last_segment(directory: Path) -> Path:
    return sorted(p for p in directory.glob("*.seg") if p.stat().st_size > len(MAGIC))[-1]


@pytest.mark.parametrize("cut", [1, 5, 8, 20])
def test_torn_tail_is_dropped_and_acknowledged_records_kept(tmp_path: Path, cut: int):
    spool = Spool(tmp_path)
    spool.append([rec(1), rec(2)])
    spool.close()
    seg = _last_segment(tmp_path)
    partial = encode_record(rec(3, b"x" * 30))[:cut]  # a write that never finished
    with open(seg, "ab") as f:
        f.write(partial)
    again = Spool(tmp_path)
    assert [r.seq for r in again.read()] == [1, 2]
    again.append([rec(4)])
    assert [r.seq for r in again.read()] == [1, 2, 4]
    again.close()
    assert read_segment(seg)[2] is None  # the tail was truncated away, file valid again


def test_final_record_with_bad_checksum_is_a_torn_tail(tmp_path: Path):
    spool = Spool(tmp_path)
    spool.append([rec(1), rec(2, b"abcdef")])
    spool.close()
    seg = _last_segment(tmp_path)
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF
    seg.write_bytes(bytes(data))
    again = Spool(tmp_path)
    assert [r.seq for r in again.read()] == [1]
    again.close()


def test_corruption_before_the_tail_is_an_error_not_silent_loss(tmp_path: Path):
    spool = Spool(tmp_path)
    spool.append([rec(1, b"first"), rec(2, b"second")])
    spool.close()
    seg = _last_segment(tmp_path)
    data = bytearray(seg.read_bytes())
    data[len(MAGIC) + 8 + 10] ^= 0xFF  # inside the first record's body
    seg.write_bytes(bytes(data))
    with pytest.raises(SpoolError, match="checksum mismatch"):
        Spool(tmp_path)


def test_rotate_and_discard_delete_only_drained_segments(tmp_path: Path):
    spool = Spool(tmp_path)
    spool.append([rec(1), rec(2)])
    drained = spool.rotate()
    spool.append([rec(3)])
    assert [r.seq for r in spool.read(drained)] == [1, 2]
    spool.discard(drained)
    assert [r.seq for r in spool.read()] == [3]
    spool.close()


def test_segments_roll_over_at_the_size_limit(tmp_path: Path):
    spool = Spool(tmp_path, segment_bytes=200)
    spool.append([rec(i, b"x" * 50) for i in range(1, 3)])
    for i in range(3, 10):
        spool.append([rec(i, b"x" * 50)])
    assert len(spool.segments()) > 3
    assert [r.seq for r in spool.read()] == list(range(1, 10))
    spool.close()


def test_survives_a_killed_writer(tmp_path: Path):
    """A process appends (fsync) and dies with SIGKILL mid-stream: all acked records remain."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from wakeline.producers.spool import Spool, SpoolRecord
        spool = Spool({str(tmp_path)!r})
        for i in range(1, 201):
            spool.append([SpoolRecord(i, "t", b"k", b"v" * i)])
            print(i, flush=True)
            if i == 150:
                fd = spool._fd
                os.write(fd, b"\\x40\\x00\\x00\\x00garbage")  # half a record, never acked
                os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=os.environ.copy()
    )
    assert proc.returncode == -9
    acked = [int(line) for line in proc.stdout.split()]
    assert acked[-1] == 150
    spool = Spool(tmp_path)  # the lock died with the process
    assert [r.seq for r in spool.read()] == acked
    assert all(r.value == b"v" * r.seq for r in spool.read())
    spool.close()


@given(
    st.lists(
        st.tuples(st.binary(max_size=64), st.one_of(st.none(), st.binary(max_size=8))),
        min_size=1,
        max_size=20,
    ),
    st.data(),
)
@settings(
    max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
def test_any_cut_of_the_tail_recovers_a_prefix(tmp_path_factory, items, data):
    directory = tmp_path_factory.mktemp("spool")
    spool = Spool(directory)
    records = [
        SpoolRecord(i + 1, "t", key, value, (("h", key),)) for i, (value, key) in enumerate(items)
    ]
    for r in records:
        spool.append([r])
    spool.close()
    seg = _last_segment(directory)
    size = seg.stat().st_size
    cut = data.draw(st.integers(min_value=len(MAGIC), max_value=size))
    with open(seg, "r+b") as f:
        f.truncate(cut)
    again = Spool(directory)
    got = again.read()
    again.close()
    assert got == records[: len(got)]
    if cut == size:
        assert len(got) == len(records)
