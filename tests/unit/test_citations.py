"""No tracked file cites a document the repository does not contain.

A reader of the repository has `docs/`, `schemas/README.md` and the code, not a blueprint,
somebody's notes or an issue tracker: a comment says what it means or points to a file here.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# The names are spelt in pieces so that this file, which has to name them, does not itself
# turn up in a plain grep of the repository for such citations.
_doc, _notes, _conv, _shared = "DES" + "IGN", "NO" + "TES", "CONVEN" + "TIONS", "../sha" + "red"
_issue = "ss" + "ue"
CITATION = re.compile(
    rf"{_doc} ?§|{_doc}\.md|\b{_notes}\b|{_notes}\.md|{_conv}|\b[Ii]{_issue} \d+"
    + "|"
    + re.escape(_shared)
)


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.fail(f"cannot list the tracked files with git: {e}")
    return [REPO / name for name in out.decode().split("\0") if name]


def citations() -> list[str]:
    found = []
    for path in _tracked():
        if path == Path(__file__).resolve() or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        for number, line in enumerate(text.splitlines(), 1):
            if CITATION.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    return found


def test_the_pattern_catches_what_it_should() -> None:
    for cited in (f"{_doc} §4", f"see {_doc}.md", f"({_notes})", f"{_notes}.md", _conv,
                  f"i{_issue} 4 item 3", f"I{_issue} 9", f"{_shared}/vectors"):  # fmt: skip
        assert CITATION.search(cited), cited
    for fine in ("docs/ledger-format.md §6", "RFC 6962 §2.1", "faust-streaming issue #606"):
        assert not CITATION.search(fine), fine


def test_no_file_cites_a_document_the_repository_lacks() -> None:
    found = citations()
    assert not found, "cites documents not in the repository:\n" + "\n".join(found)
