"""The wire contract stands alone: .avsc files + fastavro decode our frames, no Wakeline."""

from __future__ import annotations

import ast
import json
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from fastavro.schema import fingerprint

from wakeline.schemas import EVENT_TYPES, encode_event
from wakeline.schemas import codec as codec_module

HERE = Path(__file__).parent
SCRIPT = HERE / "data" / "standalone_decode.py"
SCHEMA_DIR = Path(codec_module.__file__).parent


def _plain(value: object) -> object:
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _top_level_imports(script: Path) -> set[str]:
    imported = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    return imported


def test_the_standalone_decoder_imports_nothing_from_wakeline() -> None:
    imported = _top_level_imports(SCRIPT)
    assert imported <= {
        "__future__",
        "datetime",
        "json",
        "struct",
        "sys",
        "io",
        "pathlib",
        "fastavro",
    }


def test_frames_decode_with_only_the_avsc_files_and_fastavro(
    tmp_path: Path, make_event: Callable[..., dict]
) -> None:
    events = [make_event(t) for t in EVENT_TYPES]
    frames = tmp_path / "frames.bin"
    frames.write_bytes(
        b"".join(struct.pack(">I", len(f)) + f for f in (encode_event(e) for e in events))
    )
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(SCHEMA_DIR), str(frames)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    decoded = [json.loads(line) for line in out.stdout.splitlines()]
    assert decoded == [_plain(e) for e in events]


def test_fingerprint_byte_order_matches_the_avro_spec_vectors() -> None:
    # Avro's share/test/data/schema-tests.txt gives CRC-64-AVRO as a signed Java long;
    # the single-object encoding writes that long little-endian. fastavro's hex is that.
    vectors = {
        '"null"': 7195948357588979594,
        '"boolean"': -6970731678124411036,
        '"int"': 8247732601305521295,
        '{"name":"foo","type":"fixed","size":15}': 1756455273707447556,
    }
    for canonical, java_long in vectors.items():
        want = java_long.to_bytes(8, "little", signed=True)
        assert bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")) == want
    assert fingerprint('"null"', "CRC-64-AVRO") == "8a8f25cce724dd63"


def test_the_standalone_emitter_imports_only_its_kafka_avro_and_blake3_libraries() -> None:
    """tests/integration/test_wire_emit.py runs it against the stack; here: what it needs."""
    imported = _top_level_imports(HERE / "data" / "standalone_emit.py")
    third_party = imported - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == {"confluent_kafka", "fastavro", "blake3"}
