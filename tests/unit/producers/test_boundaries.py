from __future__ import annotations

import json
import subprocess
import sys


def test_the_sdk_never_loads_the_stream_engine_or_other_components():
    code = (
        "import json, sys\n"
        "import wakeline.producers, wakeline.producers.adapters.langchain\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    forbidden = {"faust", "wakeline.processors", "wakeline.compensator", "wakeline.cli", "click"}
    assert not {
        m
        for m in loaded
        if m.split(".")[0] in forbidden
        or m in forbidden
        or any(m.startswith(f + ".") for f in forbidden)
    }
