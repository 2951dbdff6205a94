"""Detection rules: defaults, overrides per tool and agent, and files with errors."""

from __future__ import annotations

import pytest

from wakeline.errors import ConfigError
from wakeline.infra.detection import ACTIONS, RULES, DetectionRules


def test_defaults_cover_every_rule() -> None:
    rules = DetectionRules()
    for name in RULES:
        assert rules.rule(name).enabled
        assert rules.action(name) in ACTIONS
    assert rules.action("repeat_read") == "alert"  # reads are never quarantined by default


def test_overrides_rule_then_tool_then_agent(tmp_path) -> None:
    f = tmp_path / "rules.toml"
    f.write_text(
        '[rules.repeat]\ncount = 4\n[tools."payments.charge".repeat]\ncount = 3\nwindow_s = 5\n'
        '[agents."bot".repeat]\ncount = 2\n[actions]\nrate = "quarantine-run"\n'
    )
    rules = DetectionRules.load(f)
    assert rules.rule("repeat").count == 4
    assert rules.rule("repeat", tool="payments.charge").count == 3
    got = rules.rule("repeat", tool="payments.charge", agent="bot")
    assert (got.count, got.window_s) == (2, 5)
    assert rules.action("rate") == "quarantine-run"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[rules.nope]\ncount = 3", "no rule named 'nope'"),
        ("[rules.repeat]\ncount = 1", "want >= 2"),
        ("[rules.repeat]\ncolour = 1", "unknown setting(s) colour"),
        ("[rules.repeat]\ncount = true", "want a number"),
        ('[rules.repeat]\nper = "tenant"', "per = 'tenant'"),
        ('[actions]\nrepeat = "kill"', "want one of alert"),
        ("[rules.repeat\ncount = 3", "not valid TOML"),
        ("[limits]\nx = 1", "unknown section(s) limits"),
        ('[tools."t".nope]\ncount = 3', "no rule named 'nope'"),
    ],
)
def test_a_file_with_an_error_is_a_clear_error(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match="detection rules") as e:
        DetectionRules.parse(text, "rules.toml")
    assert says in str(e.value)


def test_environment_names_the_file(tmp_path) -> None:
    assert DetectionRules.from_env({}).source == "defaults"
    with pytest.raises(ConfigError, match="cannot read"):
        DetectionRules.from_env({"WAKELINE_DETECTION_RULES": str(tmp_path / "missing.toml")})
