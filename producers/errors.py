"""Errors the agent-side SDK raises on purpose (one family under `WakelineError`).

Gate refusals (`WorkflowQuarantined`, `PolicyDenied`, `ApprovalRequired`, `ApprovalDenied`,
`LoopRefused`, `WaitTimedOut`) are
raised to the agent *after* the refusal has been recorded (intent + denied result). Input
errors (`MissingWorkflow`, `NotSerialisable`, `PayloadTooLarge`, `UnknownTool`) are raised
*before* anything is written, so nothing is ever half-recorded.
"""

from __future__ import annotations

from wakeline.errors import WakelineError


class SdkError(WakelineError):
    """Base of every error the SDK raises on purpose."""


class MissingWorkflow(SdkError):
    """A call was made without a workflow id (or another required identity field)."""


class NotSerialisable(SdkError):
    """Tool arguments (or a result) cannot be canonicalised to RFC 8785 JSON.

    `path` names the offending field, e.g. `$.items[2].when`.
    """

    def __init__(self, path: str, reason: str, what: str = "argument") -> None:
        super().__init__(f"{what} {path} does not serialise to canonical JSON: {reason}")
        self.path = path
        self.reason = reason


class PayloadTooLarge(SdkError):
    """The canonical arguments exceed the configured payload limit."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class UnknownTool(SdkError):
    """A tool name was used that the registry does not know (when the registry is strict)."""


class GateRefused(SdkError):
    """Base of refusals by a gate before the tool ran. `intent_id` is the recorded intent."""

    def __init__(self, message: str, *, intent_id: str | None = None) -> None:
        super().__init__(message)
        self.intent_id = intent_id


class WorkflowQuarantined(GateRefused):
    """The workflow is quarantined; no further tool calls run until it is released."""


class PolicyDenied(GateRefused):
    """The policy hook denied the call."""


class ApprovalRequired(PolicyDenied):
    """The policy requires a human approval, which the SDK cannot obtain yet: fails closed."""


class ApprovalDenied(GateRefused):
    """An approver of the call's group denied it (a signed denial over its binding)."""


class LoopRefused(GateRefused):
    """The same call repeated too often within the loop guard's window."""


class WaitTimedOut(GateRefused):
    """A gate made the call wait (for an approval, say) and nothing resolved it in time:
    the call is refused (fails closed)."""


class SpoolError(SdkError):
    """The local spool is unusable: locked by another process, or corrupt before its tail."""


class EmitterClosed(SdkError):
    """The emitter was closed; no further events can be emitted."""
