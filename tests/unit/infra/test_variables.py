"""The declaration API: parsers, the assembled unknown-variable check, masking, the registry."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from wakeline.errors import ConfigError
from wakeline.infra import settings
from wakeline.infra.settings import (
    COMPONENT_MODULES,
    KafkaSettings,
    Variable,
    boolean,
    choice,
    declare,
    integer,
    known_variables,
    mask_passwords,
    number,
    text,
)
from wakeline.processors.settings import BuilderSettings

REPO = Path(__file__).resolve().parents[3]
DECLARES = re.compile(r"^(?:\w+ = )?declare\(", re.MULTILINE)


@pytest.mark.parametrize(
    ("parser", "raw", "want"),
    [
        (integer(lo=0, hi=10), "10", 10),
        (number(lo=0), "0.5", 0.5),
        (number(above=0), "1e3", 1000.0),
        (boolean, "Yes", True),
        (boolean, "off", False),
        (choice("DEBUG", "INFO"), "info", "INFO"),
        (text, " as is ", " as is "),
    ],
)
def test_parsers_accept(parser, raw: str, want: object) -> None:  # type: ignore[no-untyped-def]
    assert Variable("WAKELINE_T", parser, None, "t").read({"WAKELINE_T": raw}) == want


@pytest.mark.parametrize(
    ("parser", "raw", "message"),
    [
        (integer(lo=0, hi=10), "11", "WAKELINE_T='11' is out of range 0..10"),
        (integer(), "1.5", "WAKELINE_T='1.5' is not a whole number"),
        (number(lo=0), "-1", "is below 0"),
        (number(above=0), "0", "must be more than 0"),
        (number(), "nan", "is not a finite number"),
        (boolean, "maybe", "is not one of 1/true/yes/on/0/false/no/off"),
        (choice("blake3", "sha256"), "md5", "WAKELINE_T='md5' is not one of blake3, sha256"),
    ],
)
def test_parsers_refuse_naming_the_variable(parser, raw: str, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        Variable("WAKELINE_T", parser, None, "t").read({"WAKELINE_T": raw})


def test_defaults_empty_values_and_derived_defaults() -> None:
    v = Variable("WAKELINE_T", integer(), 7, "t")
    assert v.read({}) == 7 and v.read({"WAKELINE_T": ""}) == 7 and not v.is_set({"WAKELINE_T": ""})
    derived = Variable("WAKELINE_U", integer(), lambda env: v.read(env) + 1, "u")
    assert derived.read({"WAKELINE_T": "41"}) == 42
    # an empty topic prefix is a prefix, not "unset"
    assert KafkaSettings.from_env({"WAKELINE_TOPIC_PREFIX": ""}).topics.events == "events"


def test_a_typo_is_an_error_with_a_suggestion() -> None:
    env = {"WAKELINE_SEGMNT_MAX_LEAVES": "500"}
    with pytest.raises(ConfigError, match="did you mean WAKELINE_SEGMENT_MAX_LEAVES"):
        KafkaSettings.from_env(env)
    with pytest.raises(ConfigError, match="unknown setting WAKELINE_SEGMNT_MAX_LEAVES"):
        BuilderSettings.from_env(env)
    with pytest.raises(ConfigError, match="unknown setting WAKELINE_ZZZZ") as e:
        KafkaSettings.from_env({"WAKELINE_ZZZZ": "1"})
    assert "did you mean" not in str(e.value)


def test_the_check_does_not_depend_on_what_was_imported() -> None:
    """A program that imported only the runtime settings still knows the builder's variables
    (and still refuses a typo of one)."""
    code = (
        "import sys\n"
        "from wakeline.infra.settings import KafkaSettings\n"
        "assert 'wakeline.processors.settings' not in sys.modules\n"
        "KafkaSettings.from_env({'WAKELINE_SEGMENT_MAX_LEAVES': '5'})\n"
        "try:\n"
        "    KafkaSettings.from_env({'WAKELINE_SEGMNT_MAX_LEAVES': '5'})\n"
        "except Exception as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "did you mean WAKELINE_SEGMENT_MAX_LEAVES?" in out.stdout


def test_every_module_that_declares_is_listed() -> None:
    """A component module missing from COMPONENT_MODULES would make the check import-order
    dependent: its variables would be known only where it happened to be imported."""
    declaring = set()
    for f in REPO.rglob("*.py"):
        rel = f.relative_to(REPO)
        skip = ("tests", "bench", ".venv", "examples")  # examples: plug-ins, tested below
        if rel.parts[0] in skip or not DECLARES.search(f.read_text()):
            continue
        if rel.parts[0] == "wakeline":
            rel = rel.relative_to("wakeline")
        declaring.add("wakeline." + ".".join(rel.with_suffix("").parts))
    assert declaring == set(COMPONENT_MODULES)


def test_a_plugin_package_declares_through_its_entry_point() -> None:
    """`wakeline_world.undo` (a handler module outside Wakeline) declares WAKELINE_WORLD_DSN;
    its `wakeline.settings` entry point makes the variable known to a process that never
    imported it, so setting it for the compensator does not break `wakeline stack up`."""
    code = (
        "import sys\n"
        "from wakeline.infra.settings import DatabaseSettings\n"
        "DatabaseSettings.from_env({'WAKELINE_WORLD_DSN': 'postgresql://w@/w'})\n"
        "try:\n"
        "    DatabaseSettings.from_env({'WAKELINE_WORLD_DNS': 'x'})\n"
        "except Exception as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "did you mean WAKELINE_WORLD_DSN?" in out.stdout


def test_declared_defaults_are_the_dataclass_defaults() -> None:
    assert BuilderSettings.from_env({}) == BuilderSettings()
    assert KafkaSettings.from_env({}).partitions == settings.DEFAULT_PARTITIONS
    assert {"WAKELINE_MAX_RECORD_BYTES", "WAKELINE_STALL_AFTER_S"} <= known_variables()


def test_builder_record_size_and_stall_bounds() -> None:
    s = BuilderSettings.from_env(
        {"WAKELINE_MAX_RECORD_BYTES": "16384", "WAKELINE_STALL_AFTER_S": "1.5"}
    )
    assert (s.max_record_bytes, s.stall_after_s) == (16_384, 1.5)
    with pytest.raises(ConfigError, match="WAKELINE_MAX_RECORD_BYTES='16383' is out of range"):
        BuilderSettings.from_env({"WAKELINE_MAX_RECORD_BYTES": "16383"})
    with pytest.raises(ConfigError, match="WAKELINE_STALL_AFTER_S='0' must be more than 0"):
        BuilderSettings.from_env({"WAKELINE_STALL_AFTER_S": "0"})
    with pytest.raises(ConfigError, match="stall_after_s"):
        BuilderSettings(stall_after_s=0)


def test_a_variable_has_one_owner() -> None:
    with pytest.raises(ValueError, match="declared by both stack and intruder"):
        declare("intruder", "x", Variable("WAKELINE_HOME", text, None, "again"))
    with pytest.raises(ValueError, match="WAKELINE_"):
        declare("intruder", "x", Variable("HOME", text, None, "not ours"))
    assert "intruder" not in {c.name for c in settings.components()}


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("postgresql://wl:s3cret@db:5432/wl", "postgresql://wl:***@db:5432/wl"),
        ("postgresql://wl@db/wl", "postgresql://wl@db/wl"),
        ("postgresql://postgres@/postgres?host=/tmp/pg", "postgresql://postgres@/postgres?host=/tmp/pg"),
        ("postgresql://db/wl?user=wl&password=s3cret", "postgresql://db/wl?user=wl&password=***"),
        ("host=db user=wl password=s3cret", "host=db user=wl password=***"),
        ("sasl.password=pw,security.protocol=SSL", "sasl.password=***,security.protocol=SSL"),
    ],
)  # fmt: skip
def test_passwords_are_masked(raw: str, shown: str) -> None:
    assert mask_passwords(raw) == shown


def test_secrets_are_never_shown() -> None:
    assert Variable("WAKELINE_T", text, None, "t", secret=True).shown("token") == "***"
    assert Variable("WAKELINE_T", text, None, "t").shown(Path("/k/ledger.key")) == "/k/ledger.key"
