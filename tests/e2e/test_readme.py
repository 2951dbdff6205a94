"""README.md cannot drift from the code: its fenced blocks are run, as a reader would.

The rules the README follows (checked without services by `test_every_block_is_run_or_says_why`):

- A ```` ```sh ```` block is run, unless the line before its fence is an HTML comment
  `<!-- not run: REASON -->`. The blocks run in README order, in one bash session (variables
  and background jobs such as `wakeline worker &` carry over), with `set -e`: any command that
  fails fails the test, naming the block.
- A ```` ```python ```` or ```` ```toml ```` block whose first line is `# path/to/file` is a file
  of the tour: it is written there (relative to the session's folder) before the shell runs;
  any other such block must say `<!-- not run: REASON -->`.
- A ```` ```text ```` block after `<!-- output -->` is what the shell block before it prints; one
  after `<!-- demo output -->` is what `wakeline demo` prints (checked by tests/e2e/test_demo.py
  through `check_demo_excerpts`). Each of its lines must appear in that output, compared by
  `normalise` (ids, hashes, times and numbers differ from run to run); `...` or `…` in a line
  stands for anything, and a line that is just `...` skips.

The session runs in a new folder holding links to the virtualenv (`.venv`) and to the local
stack's state dir (`.wakeline`), as the repository's folder does, with a topic prefix and a
database of its own, so it neither sees nor disturbs other tests.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from wakeline.infra import topics
from wakeline.infra.settings import KafkaSettings, StackSettings, Topics

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

_FENCE = re.compile(r"^```(\S*)\s*$")
_MARK = re.compile(r"^<!--\s*(.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # of the opening fence, 1-based
    mark: str | None  # the HTML comment on the line before the fence

    @property
    def not_run(self) -> str | None:
        if self.mark and self.mark.startswith("not run:"):
            return self.mark.removeprefix("not run:").strip()
        return None

    @property
    def path(self) -> str | None:
        """The file a python/toml block is, from its first line `# path/to/file.ext`."""
        first = self.text.split("\n", 1)[0]
        m = re.fullmatch(r"#\s*([\w./-]+\.(?:py|toml))\b.*", first)
        return m.group(1) if m else None


def blocks(text: str) -> list[Block]:
    out: list[Block] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        prev = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        mark = _MARK.match(prev)
        out.append(Block(lang, "\n".join(lines[start + 1 : j]), start + 1,
                         mark.group(1) if mark else None))  # fmt: skip
        i = j + 1
    return out


def normalise(s: str) -> str:
    """What stays the same between runs: ids, hashes, times and numbers become placeholders,
    runs of blanks one blank."""
    s = re.sub(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(\+\d{2}:\d{2}| UTC|Z)?", "T", s)
    s = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "U", s)
    s = re.sub(r"[0-9a-f]{6,}", lambda m: "H" if re.search(r"\d", m.group()) else m.group(), s)
    s = re.sub(r"\d+", "N", s)
    return re.sub(r"[ \t]+", " ", s).strip()


def missing_lines(expected: str, printed: str) -> list[str]:
    """The lines of an excerpt that the printed output does not contain."""
    seen = [normalise(line) for line in printed.splitlines()]
    missing = []
    for line in expected.splitlines():
        if line.strip() in ("", "...", "…"):
            continue
        parts = [normalise(p) for p in re.split(r"\.\.\.|…", line) if normalise(p)]
        if not any(_in_order(parts, s) for s in seen):
            missing.append(line)
    return missing


def _in_order(parts: list[str], line: str) -> bool:
    at = 0
    for p in parts:
        at = line.find(p, at)
        if at < 0:
            return False
        at += len(p)
    return True


def check_demo_excerpts(demo_output: str) -> None:
    """Every `<!-- demo output -->` excerpt of the README is in what the demo printed."""
    excerpts = [b for b in blocks(README.read_text()) if b.mark == "demo output"]
    assert excerpts, "the README shows no demo output"
    for b in excerpts:
        missing = missing_lines(b.text, demo_output)
        assert not missing, f"README line {b.line}: the demo did not print {missing}"


# -- the rules, without services ------------------------------------------------------------


def test_every_block_is_run_or_says_why() -> None:
    found = blocks(README.read_text())
    assert len([b for b in found if b.lang == "sh" and b.not_run is None]) >= 8
    for b in found:
        where = f"README line {b.line} ({b.lang or 'plain'} block)"
        if b.mark is not None and b.mark.startswith("not run"):
            assert b.not_run and len(b.not_run) > 10, f"{where}: say why it is not run"
        if b.lang in ("sh", "bash", "shell", "console"):
            assert b.lang == "sh", f"{where}: shell blocks are ```sh (the test runs those)"
        if b.lang in ("python", "toml"):
            assert b.path or b.not_run, f"{where}: start it with `# path/file` or say not run"
        if b.mark in ("output", "demo output"):
            assert b.lang == "text", f"{where}: an output excerpt is a ```text block"
        if b.mark == "output":
            before = [o for o in found if o.line < b.line and o.lang == "sh"]
            assert before and before[-1].not_run is None, f"{where}: output of what?"


def test_normalise_and_excerpt_matching() -> None:
    printed = "2026-12-02 03:32:11.259  refund-42  p3#0  agent ch_62576858fc85467f: ok  [a@b]"
    assert not missing_lines("... refund-42  p... agent ch_deadbeef99: ok  [a@b]", printed)
    assert missing_lines("... refunded ...", printed) == ["... refunded ..."]
    assert not missing_lines("...\n\n", printed)
    assert normalise("01a234cf-4f7b-714f-991d-a4a9b628fc78 v9 cus_7af4d1") == "U vN cus_H"
    with pytest.raises(AssertionError, match="the demo did not print"):
        check_demo_excerpts("demo complete")


# -- the session ----------------------------------------------------------------------------


def _script(found: list[Block]) -> tuple[str, dict[int, int]]:
    """One bash script of every shell block to run; block markers on stdout delimit each
    block's output. Returns the script and {README line of the block: marker number}."""
    parts = [
        "set -eo pipefail",
        "trap 'echo \"::readme-failed:: README line $README_LINE: exit $?\" >&2' ERR",
        "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT",
    ]
    numbers: dict[int, int] = {}
    for b in found:
        if b.lang != "sh" or b.not_run is not None:
            continue
        n = numbers[b.line] = len(numbers)
        parts += [f"README_LINE={b.line}", f'echo "::readme-block {n}::"', b.text]
    parts.append('echo "::readme-block end::"')
    return "\n".join(parts) + "\n", numbers


@pytest.mark.integration
@pytest.mark.e2e
def test_the_readme_runs_as_written(
    local_stack: StackSettings, fresh_dsn: str, tmp_path: Path
) -> None:
    found = blocks(README.read_text())
    for b in found:
        if b.lang in ("python", "toml") and b.path and b.not_run is None:
            target = tmp_path / b.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(b.text + "\n")
    venv = Path(sys.executable).parent.parent
    (tmp_path / ".venv").symlink_to(venv)
    (tmp_path / ".wakeline").symlink_to(local_stack.home.resolve())
    prefix = f"t{uuid.uuid4().hex[:10]}.wakeline."
    env = {
        **os.environ,
        "WAKELINE_HOME": str(local_stack.home.resolve()),
        "WAKELINE_TOPIC_PREFIX": prefix,
        "WAKELINE_PARTITIONS": "3",
        "WAKELINE_DSN": fresh_dsn,
        "WAKELINE_KEYS_DIR": str(tmp_path / "approver-keys"),
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "COLUMNS": "250",  # rich wraps at the terminal's width; the README's lines are long
    }
    for name in ("WAKELINE_POLICY", "WAKELINE_WORLD_DSN", "VIRTUAL_ENV"):
        env.pop(name, None)
    script, numbers = _script(found)
    (tmp_path / "readme.sh").write_text(script)
    try:
        run = subprocess.run(
            ["bash", "readme.sh"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, timeout=600,
        )  # fmt: skip
    finally:
        with contextlib.suppress(Exception):
            topics.delete_topics(
                replace(KafkaSettings.from_env(), topics=Topics(prefix)), under_prefix=True
            )
    out = run.stdout
    assert run.returncode == 0 and "::readme-block end::" in out, out[-6000:]
    sections = re.split(r"^::readme-block (\d+|end)::$", out, flags=re.M)
    printed = {int(sections[i]): sections[i + 1] for i in range(1, len(sections) - 1, 2)
               if sections[i] != "end"}  # fmt: skip
    for i, b in enumerate(found):
        if b.mark != "output":
            continue
        shell = [o for o in found[:i] if o.lang == "sh" and o.not_run is None][-1]
        missing = missing_lines(b.text, printed[numbers[shell.line]])
        assert not missing, (
            f"README line {b.line}: the block at line {shell.line} did not print {missing}; "
            f"it printed:\n{printed[numbers[shell.line]][-4000:]}"
        )
