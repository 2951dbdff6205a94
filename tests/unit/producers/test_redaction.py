"""A redacted or digest-only value reaches no frame the SDK produces and no log record."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.producers import (
    REDACTED,
    Emitter,
    LoopRefused,
    NotSerialisable,
    PolicyDecision,
    PolicyDenied,
    SdkError,
    Spool,
    ToolRegistry,
    ToolSpec,
    TransportOptions,
)
from wakeline.producers.redaction import MIN_SECRET_LENGTH, Scrubber, secret_values
from wakeline.schemas import decode_event

CARD = 4111111111111111
RENDERINGS = ("4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111")
KEY = "sk_live_Canary42xyz"


def assert_clean(blob: bytes | str) -> None:
    data = blob.encode() if isinstance(blob, str) else blob
    for secret in (*RENDERINGS, KEY, KEY.lower()):
        assert secret.encode() not in data, f"{secret} leaked"


def all_frames_clean(rec) -> list[dict]:  # noqa: ANN001
    events = []
    for _topic, key, value, headers, _ in rec.records:
        assert_clean(key)
        assert_clean(value)
        for name, hv in headers:
            assert_clean(name)
            assert_clean(hv)
        events.append(decode_event(value))
        assert_clean(repr(events[-1]))
    return events


@pytest.fixture
def spec_registry(registry: ToolRegistry) -> ToolRegistry:
    registry.declare(
        "charge",
        reversibility="compensable",
        impact="high",
        redact={"card_number", "customer.api_key"},
        writes=("customer:{customer[id]}",),
        summarise=lambda r: f"charged card {r['card']} with key {r['key']}",
        external_ids=lambda r: {"charge": r["id"], r["key"]: "x"},
    )
    return registry


def _charge(ctx, fn, **extra):  # noqa: ANN001, ANN003
    args = {"card_number": CARD, "customer": {"id": "c1", "api_key": KEY}, **extra}
    return ctx.call("charge", fn, args)


@pytest.mark.parametrize("shown", [*RENDERINGS, KEY, KEY.upper(), repr(KEY), f"{CARD:,}"])
def test_an_exception_quoting_a_secret_is_recorded_without_it(recorded, spec_registry, shown):
    emitter, rec = recorded

    def declined(**_):  # noqa: ANN003
        raise ValueError(f"card {shown} was declined") from KeyError(KEY)

    ctx = emitter.workflow("wf-r", agent_id="a", principal="p")
    with pytest.raises(ValueError):
        _charge(ctx, declined)
    events = all_frames_clean(rec)
    result = events[-1]
    assert result["status"] == "error"
    assert result["error_message"].replace("'", "") == f"card {REDACTED} was declined"
    assert events[0]["resources_written"] == ["customer:c1"]


def test_summary_and_external_ids_are_scrubbed(recorded, spec_registry):
    emitter, rec = recorded
    ctx = emitter.workflow("wf-s", agent_id="a", principal="p")
    _charge(ctx, lambda **_: {"card": "4111-1111-1111-1111", "key": KEY, "id": "ch_1"})
    result = all_frames_clean(rec)[-1]
    assert result["result_summary"] == f"charged card {REDACTED} with key {REDACTED}"
    assert result["external_ids"] == {"charge": "ch_1", REDACTED: "x"}


def test_a_failing_summariser_logs_no_secret(recorded, spec_registry, caplog):
    emitter, rec = recorded
    spec_registry.register(
        ToolSpec(
            "leaky",
            redact={"pin"},
            summarise=lambda r: (_ for _ in ()).throw(RuntimeError(f"bad result {r}")),
        )
    )
    ctx = emitter.workflow("wf-l", agent_id="a", principal="p")
    with caplog.at_level(logging.DEBUG):
        ctx.call("leaky", lambda pin: f"pin was {pin}", {"pin": "98765"})
    assert "summarise/external_ids failed" in caplog.text
    assert "98765" not in caplog.text
    for record in caplog.records:
        assert record.exc_info is None
        assert "98765" not in record.getMessage()
    assert all("98765" not in repr(e) for e in all_frames_clean(rec))


def test_nested_lists_and_digest_only_values_are_scrubbed_too(recorded):
    emitter, rec = recorded
    ctx = emitter.workflow("wf-n", agent_id="a", principal="p")
    args = {"card": {"cvc": "7391", "number": CARD}, "api_key": KEY}

    def fail(**_):  # noqa: ANN003
        raise RuntimeError(f"cvc 7391, card {CARD}, key {KEY}")

    with pytest.raises(RuntimeError):
        ctx.call("pay", fail, args)  # redact card.cvc; digest_only card.number, api_key
    events = all_frames_clean(rec)
    assert "7391" not in events[-1]["error_message"]
    assert events[-1]["error_message"] == f"cvc {REDACTED}, card {REDACTED}, key {REDACTED}"
    vals = secret_values({"items": [{"k": "aaaa1"}, {"k": "bbbb2"}]}, ["items.k"])
    assert vals == ["aaaa1", "bbbb2"]


def test_short_values_are_not_searched_for():
    scrub = Scrubber(["1", "ab", "xyz"])
    assert not scrub
    assert scrub("1 of 1: ab xyz") == "1 of 1: ab xyz"
    assert MIN_SECRET_LENGTH == 4
    assert Scrubber(["1234"])("pin 1234 or 1-2-3-4 but not 123") == (
        f"pin {REDACTED} or {REDACTED} but not 123"
    )


def test_a_spec_can_declare_its_own_error_scrubber(recorded, registry):
    emitter, rec = recorded
    registry.register(
        ToolSpec(
            "own",
            redact={"token"},
            scrub_error=lambda e, msg: msg.replace("account 77", "account ?"),
        )
    )
    registry.register(ToolSpec("broken", redact={"token"}, scrub_error=lambda e, msg: 1 / 0))
    ctx = emitter.workflow("wf-o", agent_id="a", principal="p")

    def fail(token):  # noqa: ANN001
        raise ValueError(f"account 77 token {token}")

    for tool in ("own", "broken"):
        with pytest.raises(ValueError):
            ctx.call(tool, fail, {"token": KEY})
    events = all_frames_clean(rec)
    assert events[1]["error_message"] == f"account ? token {REDACTED}"
    assert events[3]["error_message"].startswith("[message withheld")


def test_a_resource_template_over_a_redacted_field_is_refused_at_registration():
    for template in ("card:{card_number}", "c:{card}", "c:{card[number]}", "c:{card.number}"):
        with pytest.raises(SdkError, match="redacted or digest-only"):
            ToolSpec("t", redact={"card.number", "card_number"}, writes=(template,))
    with pytest.raises(SdkError, match="redacted or digest-only"):
        ToolSpec("t", digest_only={"email"}, reads=("user:{email!s:>{email}}",))
    ToolSpec("t", redact={"card.number"}, writes=("c:{card[id]}", "c:{cardholder}"))


def test_a_resource_key_function_returning_a_secret_refuses_the_call(recorded, registry):
    emitter, rec = recorded
    registry.register(ToolSpec("fnkeys", redact={"card"}, writes=lambda a: [f"c:{a['card']}"]))
    ctx = emitter.workflow("wf-k", agent_id="a", principal="p")
    with pytest.raises(SdkError, match="resource key contains"):
        ctx.call("fnkeys", lambda card: None, {"card": str(CARD)})
    assert rec.records == []


def test_a_policy_reason_quoting_the_arguments_is_scrubbed(recorded, spec_registry):
    def policy(req):  # noqa: ANN001
        return PolicyDecision("deny", f"card {req.args['card_number']} is blocked", "cards")

    emitter, rec = recorded
    emitter.policy = policy
    ctx = emitter.workflow("wf-p", agent_id="a", principal="p")
    with pytest.raises(PolicyDenied) as refused:
        _charge(ctx, lambda **_: None)
    assert str(CARD) not in str(refused.value)
    events = all_frames_clean(rec)
    assert events[0]["policy_reason"] == f"cards: card {REDACTED} is blocked"


def test_loop_guard_alerts_carry_no_secret(recorded, spec_registry):
    emitter, rec = recorded
    ctx = emitter.workflow("wf-loop", agent_id="a", principal="p")
    with pytest.raises(LoopRefused):
        for _ in range(5):
            _charge(ctx, lambda **_: None)
    events = all_frames_clean(rec)
    assert any(e["type"] == "Alert" for e in events)


def test_digest_only_values_are_not_quoted_in_serialisation_errors(recorded):
    emitter, _ = recorded
    ctx = emitter.workflow("wf-d", agent_id="a", principal="p")
    huge = 98765432109876543210
    with pytest.raises(NotSerialisable) as bad:
        ctx.call("pay", lambda **_: None, {"api_key": huge})
    assert str(huge) not in str(bad.value)


def test_the_spool_holds_no_secret(tmp_path: Path, spec_registry):
    nobody = KafkaSettings(bootstrap="127.0.0.1:1", topics=Topics("offline."))
    em = Emitter(
        nobody,
        spool_dir=tmp_path / "spool",
        registry=spec_registry,
        quarantine_gate=False,
        publish_schemas=False,
        transport=TransportOptions(strict_timeout_s=0.2, delivery_timeout_s=0.5),
    )
    ctx = em.workflow("wf-spool", agent_id="a", principal="p")

    def fail(**_):  # noqa: ANN003
        raise ValueError(f"card {RENDERINGS[1]} / {KEY}")

    with pytest.raises(ValueError):
        _charge(ctx, fail)
    em.close(timeout=0.5)
    spool = Spool(tmp_path / "spool")
    assert len(spool.read()) == 2
    spool.close()
    files = [p for p in (tmp_path / "spool").rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert_clean(path.read_bytes())
