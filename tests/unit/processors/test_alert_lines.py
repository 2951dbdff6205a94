"""What `wakeline alerts` and `wakeline tail --alerts` print for one Alert (no broker)."""

from __future__ import annotations

from wakeline.cli.alerts import _safe
from wakeline.processors.tail import describe_alert, format_alert

ALERT = {
    "event_id": "01939b6e-0000-7000-8000-00000000000a",
    "type": "Alert",
    "time": 1_800_000_000_123_456,
    "source": "wakeline-sdk",
    "workflow_id": "wf-42",
    "run_id": "run-1",
    "agent_id": "billing-bot",
    "principal": "alice",
    "kind": "runaway_loop",
    "severity": "warning",
    "detail": "billing-bot called stripe.charge with the same arguments 5 times in 3.2 s",
    "detector": "repeat",
    "resource": None,
    "related_event_ids": ["01939b6e-0000-7000-8000-000000000001"],
    "attributes": {"count": "5", "limit": "5"},
    "partition": 2,
    "offset": 17,
}


def test_one_line_per_alert_names_workflow_severity_rule_and_detail():
    line = format_alert(ALERT)
    assert line.startswith("2027-01-15 08:00:00.123  wf-42  warning  repeat  billing-bot called")
    assert line.endswith("(01939b6e-0000-7000-8000-00000000000a)")


def test_show_gives_the_evidence_and_attributes():
    text = describe_alert(ALERT)
    assert "rule:      repeat" in text
    assert "evidence:  1 event(s)\n  01939b6e-0000-7000-8000-000000000001" in text
    assert "  count = 5" in text and "partition 2, offset 17" in text


def test_an_unreadable_alert_still_prints_and_control_characters_are_neutralised():
    assert "(unreadable alert: x)" in format_alert({"detail": "(unreadable alert: x)"})
    assert _safe("a\x1b[31mb") == "a?[31mb"
