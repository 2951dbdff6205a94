from __future__ import annotations

import pytest

from wakeline.producers import SdkError, ToolRegistry, ToolSpec, UnknownTool, from_mcp_annotations


@pytest.mark.parametrize(
    ("hints", "reversibility", "impact"),
    [
        ({}, "irreversible", "high"),  # MCP defaults: not read-only, destructive, open world
        ({"readOnlyHint": True}, "read", "low"),
        ({"readOnlyHint": True, "destructiveHint": True, "openWorldHint": True}, "read", "low"),
        ({"destructiveHint": False, "openWorldHint": False}, "compensable", "low"),
        ({"destructiveHint": False}, "compensable", "medium"),
        ({"destructiveHint": True, "openWorldHint": False}, "irreversible", "medium"),
        ({"readOnlyHint": None, "destructiveHint": None}, "irreversible", "high"),
    ],
)
def test_mcp_annotations_map_to_the_documented_table(hints, reversibility, impact):
    spec = from_mcp_annotations("t", hints)
    assert (spec.reversibility, spec.impact) == (reversibility, impact)


def test_mcp_annotations_absent_means_mcp_defaults_and_strict():
    spec = from_mcp_annotations("t", None)
    assert (spec.reversibility, spec.impact, spec.idempotent) == ("irreversible", "high", False)
    assert spec.effective_durability == "strict"


def test_mcp_annotations_from_an_object_and_with_compensation():
    class Annotations:  # shaped like mcp.types.ToolAnnotations
        readOnlyHint = False
        destructiveHint = True
        idempotentHint = True
        openWorldHint = False

    spec = from_mcp_annotations("refund", Annotations(), compensation="refund.undo")
    assert spec.reversibility == "compensable"
    assert spec.impact == "medium"
    assert spec.idempotent is True
    assert spec.compensation == "refund.undo"


def test_overrides_win_over_hints():
    spec = from_mcp_annotations("t", {"readOnlyHint": True}, impact="critical")
    assert spec.impact == "critical"


def test_durability_defaults_from_reversibility_and_can_be_overridden():
    assert ToolSpec("r", reversibility="read", impact="low").effective_durability == "relaxed"
    assert ToolSpec("w", reversibility="reversible", impact="low").effective_durability == "strict"
    spec = ToolSpec("w", reversibility="read", impact="low", durability="strict")
    assert spec.effective_durability == "strict"


def test_bad_axis_values_are_rejected_with_the_name():
    with pytest.raises(SdkError, match="reversibility 'maybe'"):
        ToolSpec("t", reversibility="maybe")  # type: ignore[arg-type]
    with pytest.raises(SdkError, match="impact 'huge'"):
        ToolSpec("t", impact="huge")  # type: ignore[arg-type]
    with pytest.raises(SdkError, match="both redacted and digested"):
        ToolSpec("t", redact=frozenset({"a"}), digest_only=frozenset({"a"}))


def test_resource_keys_from_templates_and_functions():
    spec = ToolSpec(
        "stripe.charge",
        reads=("customer:{customer}",),
        writes=lambda a: [f"charge:{a['customer']}:{a['amount']}"],
    )
    args = {"customer": 123, "amount": 1299}
    assert spec.resources_read(args) == ["customer:123"]
    assert spec.resources_written(args) == ["charge:123:1299"]
    with pytest.raises(SdkError, match="resource keys"):
        spec.resources_read({"amount": 1})


def test_registry_defaults_unknown_tools_to_the_worst_case_unless_strict():
    reg = ToolRegistry()
    reg.declare("ok", reversibility="read", impact="low")
    assert reg.get("ok").reversibility == "read"
    unknown = reg.get("nobody.registered.me")
    assert (unknown.reversibility, unknown.impact) == ("irreversible", "high")
    with pytest.raises(UnknownTool):
        ToolRegistry(strict=True).get("nobody.registered.me")
    with pytest.raises(SdkError, match="already registered"):
        reg.declare("ok", reversibility="irreversible")


def test_advice_is_a_template_that_may_not_name_a_secret_field():
    spec = ToolSpec("email.send", advice="send a correction to {to}", digest_only={"body"})
    assert spec.advice == "send a correction to {to}"
    with pytest.raises(SdkError, match="uses body, which is redacted or digest-only"):
        ToolSpec("email.send", advice="resend {body}", digest_only={"body"})
    with pytest.raises(SdkError, match="uses card.number"):
        ToolSpec("pay", advice="call about {card}", redact={"card.number"})
    with pytest.raises(SdkError, match="not a template"):
        ToolSpec("t", advice="refund {charge_id")
    with pytest.raises(SdkError, match="non-empty str"):
        ToolSpec("t", advice="  ")
    with pytest.raises(SdkError, match="non-empty str"):
        ToolSpec("t", advice=42)  # type: ignore[arg-type]


def test_volatile_fields_and_version_arg_are_checked_and_recorded_as_text():
    spec = ToolSpec("crm.update", volatile_fields={"request_id", "meta.at"}, version_arg="etag")
    assert spec.volatile_list == ["meta.at", "request_id"]
    assert spec.expected_version({"etag": "W/7"}) == "W/7"
    assert spec.expected_version({"etag": 7}) == "7"
    assert spec.expected_version({"etag": {"v": 7}}) == '{"v":7}'
    assert spec.expected_version({"other": 1}) is None  # the call did not give one
    assert ToolSpec("a", version_arg="row.version").expected_version({"row": {"version": 3}}) == "3"
    assert ToolSpec("a").expected_version({"etag": "x"}) is None
    with pytest.raises(SdkError, match="not a str"):
        ToolSpec("a", volatile_fields="request_id")  # type: ignore[arg-type]
    with pytest.raises(SdkError, match="dotted path"):
        ToolSpec("a", volatile_fields={"a..b"})
    with pytest.raises(SdkError, match="recorded in clear"):
        ToolSpec("a", digest_only={"auth"}, version_arg="auth.etag")
    with pytest.raises(SdkError, match="recorded in clear"):
        ToolSpec("a", redact={"row.secret"}, version_arg="row")
