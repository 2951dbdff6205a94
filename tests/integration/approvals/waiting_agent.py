"""An agent whose one call waits for an approval nobody gives (until it is killed).

python waiting_agent.py SPOOL_DIR WORKFLOW_ID RUN_ID   (broker and prefix from WAKELINE_*)
"""

from __future__ import annotations

import sys
from pathlib import Path

from wakeline.infra.settings import KafkaSettings
from wakeline.policy.approvals import generate_key, public_bytes
from wakeline.producers import Emitter, ToolRegistry
from wakeline.producers.approvals import Approvals
from wakeline.producers.gates import ApproverGroup, PolicyDecision


def main() -> None:
    spool, workflow_id, run_id = sys.argv[1:4]
    kafka = KafkaSettings.from_env()
    group = ApproverGroup("finance", {"alice@example.com": public_bytes(generate_key())})
    registry = ToolRegistry()
    registry.declare("stripe.charge", reversibility="compensable", impact="high", compensation="x")
    emitter = Emitter(
        kafka,
        spool_dir=Path(spool),
        registry=registry,
        policy=lambda _r: PolicyDecision(
            "require_approval", "charges need a person", "test", approvers=group, timeout_s=300
        ),
        authorizer=Approvals(kafka),
        quarantine_gate=False,
        loop_guard=False,
        publish_schemas=False,
    )
    ctx = emitter.workflow(workflow_id, run_id=run_id, agent_id="billing-bot", principal="carol")
    ctx.call("stripe.charge", lambda **_: "never", {"customer": "c1", "amount": 5})


if __name__ == "__main__":
    main()
