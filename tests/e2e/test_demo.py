"""The `make demo` scenario as a test: SDK -> Kafka -> worker -> PostgreSQL ledger -> verify."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from wakeline.demo import run_demo
from wakeline.infra.settings import DatabaseSettings, KafkaSettings

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_demo_ledgers_verifies_and_catches_the_forged_amount(
    kafka: KafkaSettings, fresh_dsn: str
) -> None:
    out = io.StringIO()
    report = run_demo(kafka, DatabaseSettings(fresh_dsn), console=Console(file=out, width=120))
    text = out.getvalue()
    assert report["verdict"] == "sound"
    assert report["audit_records"] == 9  # 4 intents, 4 results, the seal
    assert report["forged_verdict"] == "tampered"
    finding = report["forged_first_finding"]
    assert finding["check"] == "entry.leaf_hash"
    assert finding["event_id"] == report["charge_event_id"]  # the forged event, named
    assert "4242424242424242" not in text  # the card number never reaches the log
    assert "called stripe.charge for customer 123" in text
    act = report["compensation"]
    assert act["refunds"] == 1 and act["crm_tier"] == "silver"
    assert len(act["tasks"]) == 2  # the delivered e-mail, and the plan's incident report
    assert "4000 0000 0000 0077" not in text and "4000000000000077" not in text
    assert "2 call(s) undone, 1 call(s) need a human" in text
    detection = report["detection"]
    assert detection["loop_refunds"] == 1
    assert "billing-bot called payments.charge" in detection["loop_alert"]
    assert "crm" in detection["race_alert"]
    approvals = report["approvals"]
    assert approvals["request_id"] and approvals["policy"]
    assert "waits: rule large-charges" in text and "denied email.send" in text
    blast = report["blast"]
    assert blast["taint_quarantine_id"] and blast["rolled_back_vm"]
    assert "untouched" in text and "TOUCHED" not in text
