"""`wakeline.schemas` is pure: an agent that only encodes events loads no Kafka, faust or CLI."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("confluent_kafka", "aiokafka", "faust", "click", "psycopg")


def test_importing_and_using_the_codec_loads_no_client_library() -> None:
    script = (
        "import sys\n"
        "from wakeline.schemas import encode_event, decode_event, new_event_id\n"
        "frame = encode_event({'type': 'Release', 'event_id': new_event_id(), 'time': 0,\n"
        "    'source': 's', 'workflow_id': 'w', 'run_id': 'r', 'agent_id': 'a',\n"
        "    'principal': 'p', 'reason': 'r', 'by': 'b'})\n"
        "decode_event(frame)\n"
        f"print([m for m in {FORBIDDEN!r} if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout
