"""Agent-side SDK: tool registry, emitter, the gate pipeline, transports, adapters.

Never imports faust, psycopg or the compensator: an agent needs Kafka only (a test checks).
"""

from __future__ import annotations

from wakeline.producers.canonical import (
    REDACTED,
    Canonical,
    canonical_json,
    canonical_result,
    canonicalise,
    digest,
)
from wakeline.producers.emitter import Emitter, Resumed, ToolCall, WorkflowContext
from wakeline.producers.errors import (
    ApprovalDenied,
    ApprovalRequired,
    EmitterClosed,
    GateRefused,
    LoopRefused,
    MissingWorkflow,
    NotSerialisable,
    PayloadTooLarge,
    PolicyDenied,
    SdkError,
    SpoolError,
    UnknownTool,
    WaitTimedOut,
    WorkflowQuarantined,
)
from wakeline.producers.gates import (
    AlertSpec,
    ApproverGroup,
    Authorizer,
    Gate,
    GateCall,
    LoopGuard,
    Pending,
    PolicyDecision,
    PolicyHook,
    PolicyRequest,
    QuarantineGate,
    Verdict,
    allow_all,
)
from wakeline.producers.registry import (
    ToolRegistry,
    ToolSpec,
    default_spec,
    from_mcp_annotations,
)
from wakeline.producers.snapshots import SnapshotError
from wakeline.producers.spool import Spool, SpoolRecord
from wakeline.producers.transport import (
    KafkaTransport,
    SpoolTransport,
    Transport,
    TransportOptions,
)

__all__ = [
    "REDACTED",
    "AlertSpec",
    "ApproverGroup",
    "Authorizer",
    "ApprovalDenied",
    "ApprovalRequired",
    "Canonical",
    "Emitter",
    "EmitterClosed",
    "Gate",
    "GateCall",
    "GateRefused",
    "KafkaTransport",
    "LoopGuard",
    "LoopRefused",
    "MissingWorkflow",
    "NotSerialisable",
    "PayloadTooLarge",
    "Pending",
    "PolicyDecision",
    "PolicyDenied",
    "PolicyHook",
    "PolicyRequest",
    "QuarantineGate",
    "SdkError",
    "Resumed",
    "SnapshotError",
    "Spool",
    "SpoolError",
    "SpoolRecord",
    "SpoolTransport",
    "ToolCall",
    "ToolRegistry",
    "ToolSpec",
    "Transport",
    "TransportOptions",
    "UnknownTool",
    "Verdict",
    "WaitTimedOut",
    "WorkflowContext",
    "WorkflowQuarantined",
    "allow_all",
    "canonical_json",
    "canonical_result",
    "canonicalise",
    "default_spec",
    "digest",
    "from_mcp_annotations",
]
