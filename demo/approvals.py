"""The demo's policy act: every call is classified before it runs; a large charge waits for a
signed human approval bound to that exact call, and a mail to an outside address is denied.

A policy file (shown) allows reads and small charges, requires one approver of `finance` for
a charge over EUR 500, and denies e-mail outside example.com. An approver key is generated
(`wakeline approvals keygen`), the agent runs through the SDK with the policy and approvals:
the large charge waits, the worker's approval queue lists it, `wakeline approvals approve`
signs it, and the call runs; the outside e-mail is refused with its `denied` result. The act
checks the example world's tables: each allowed charge happened once, no mail left for the
outside address.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console

from wakeline.demo.compensation import ActFailed, _wait
from wakeline.infra.settings import DatabaseSettings, KafkaSettings

APPROVER = "alice@example.com"

POLICY = """\
# First match wins, top to bottom.
[policy]
name = "demo"
default = "allow"

[approvers.finance]
members = {{ "{approver}" = "{key}" }}

[[rule]]
name = "reads"
reversibility = "read"
outcome = "allow"

[[rule]]
name = "large-charges"
tool = "payments.charge"
args = ["amount_cents > 50000"]
outcome = "require_approval"
approvers = "finance"
timeout = "60s"
reason = "charges over EUR 500 need an approver of finance"

[[rule]]
name = "mail-inside"
tool = "email.send"
args = ['to ends_with "@example.com"']
outcome = "allow"

[[rule]]
name = "mail-outside"
tool = "email.send"
outcome = "deny"
reason = "e-mail leaves example.com only with a human"
"""


def _pending(dsn: str, workflow_id: str) -> Any:
    import psycopg

    from wakeline.policy import queue

    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        for r in queue.list_requests(cur, now_us=time.time_ns() // 1000):
            if r.workflow_id == workflow_id and r.intent is not None:
                return r
    return None


def run_act(
    kafka: KafkaSettings,
    database: DatabaseSettings,
    spools: Path,
    out_dir: Path,
    *,
    console: Console,
    step: int,
) -> dict[str, Any]:
    from click.testing import CliRunner

    from wakeline.cli.main import cli
    from wakeline.policy.engine import Policy
    from wakeline.producers import Emitter
    from wakeline.producers.approvals import Approvals
    from wakeline.producers.errors import PolicyDenied
    from wakeline_world import World
    from wakeline_world.tools import registry

    dsn = database.dsn
    world = World(dsn)
    report: dict[str, Any] = {}
    keys = out_dir / "keys"
    from wakeline.testkit.harness import worker_env

    # the commands run in this process, on the demo's broker, topics and database
    env = {**worker_env(kafka, dsn), "WAKELINE_KEYS_DIR": str(keys)}
    runner = CliRunner()

    console.rule(f"[bold]{step}. A policy decides before every call")
    if not (keys / f"{APPROVER}.pem").exists():
        got = runner.invoke(cli, ["approvals", "keygen", "--principal", APPROVER], env=env)
        if got.exit_code != 0:
            raise ActFailed(f"approvals keygen failed: {got.output}")
    from wakeline.policy.approvals import load_private_key, public_key_text

    key = public_key_text(load_private_key(path=keys / f"{APPROVER}.pem"))
    text = POLICY.format(approver=APPROVER, key=key)
    path = out_dir / "policy.toml"
    path.write_text(text)
    policy = Policy.load(path)
    console.print(f"  wakeline approvals keygen --principal {APPROVER}: {key}", highlight=False)
    console.print(f"  {path} (version {policy.version[:12]}), first match wins:")
    for line in text.splitlines():
        if line.startswith(("name", "tool", "args", "outcome", "[[")):
            console.print("    " + line, highlight=False, markup=False)

    wf = f"invoice-{uuid.uuid4().hex[:8]}"
    customer = f"cus_{uuid.uuid4().hex[:6]}"
    approvals = Approvals(kafka, poll_interval_s=0.02)
    emitter = Emitter(kafka, spool_dir=spools / "policy", registry=registry(),
                      policy=policy, authorizer=approvals)  # fmt: skip
    try:
        if not approvals.wait_ready(30):
            raise ActFailed("the SDK's approvals reader did not catch up")
        ctx = emitter.workflow(wf, agent_id="billing-bot", principal="bob@example.com")

        console.rule(f"[bold]{step + 1}. Ordinary work passes the policy")
        small = ctx.call(
            "payments.charge", world.tool("payments.charge"),
            {"customer": customer, "amount_cents": 1500, "currency": "EUR",
             "idempotency_key": f"{wf}/small"},
        )  # fmt: skip
        console.print(f"  payments.charge EUR 15.00: allowed (default), {small['charge_id']}")

        console.rule(f"[bold]{step + 2}. A large charge waits for a signed approval")
        done: dict[str, Any] = {}

        def large() -> None:
            try:
                done["charge"] = ctx.call(
                    "payments.charge", world.tool("payments.charge"),
                    {"customer": customer, "amount_cents": 90000, "currency": "EUR",
                     "idempotency_key": f"{wf}/large"},
                )  # fmt: skip
                done["at"] = time.monotonic()
            except Exception as e:  # noqa: BLE001 - reported below
                done["error"] = e

        waiting = threading.Thread(target=large, name="demo-large-charge")
        waiting.start()
        request = _wait(lambda: _pending(dsn, wf), 30, "the approval request in the queue")
        console.print(
            f"  payments.charge EUR 900.00 waits: rule large-charges, request "
            f"{request.request_id}, binding {request.binding.hex()[:16]}..., "
            f"approvers {', '.join(request.approver_keys)}"
        )
        listed = runner.invoke(cli, ["approvals", "list"], env=env)
        for line in listed.output.splitlines():
            console.print("  " + line, highlight=False, markup=False)
        if done:
            raise ActFailed(f"the large charge did not wait: {done}")
        t0 = time.monotonic()
        got = runner.invoke(
            cli, ["approvals", "approve", request.request_id, "--as", APPROVER,
                  "--comment", "invoice 2026-118 checked"], env=env,
        )  # fmt: skip
        if got.exit_code != 0:
            raise ActFailed(f"approvals approve failed: {got.output}")
        console.print(f"  wakeline approvals approve {request.request_id} --as {APPROVER}: "
                      + got.output.strip(), highlight=False, markup=False)  # fmt: skip
        waiting.join(30)
        if "charge" not in done:
            raise ActFailed(f"the approved charge did not run: {done.get('error')}")
        console.print(
            f"  the call ran {(done['at'] - t0) * 1000:.0f} ms after the approval: "
            f"{done['charge']['charge_id']}"
        )

        console.rule(f"[bold]{step + 3}. A mail to an outside address is denied")
        try:
            ctx.call("email.send", world.tool("email.send"),
                     {"to": "eve@outside.example", "subject": "invoice", "body": "see attached",
                      "idempotency_key": f"{wf}/mail"})  # fmt: skip
        except PolicyDenied as e:
            console.print(f"  [yellow]{e}[/]")
        else:
            raise ActFailed("the outside e-mail was sent")
        ctx.complete_workflow()
    finally:
        emitter.close(30)
        approvals.close()

    charges = [world.payments.get(c) for c in (small["charge_id"], done["charge"]["charge_id"])]
    sent = [m for m in world.email.outbox() if m.get("to") == "eve@outside.example"]
    console.print(
        f"  the world: {sum(1 for c in charges if c)} charges of {customer} (EUR 15.00 and "
        f"EUR 900.00, once each), {len(sent)} e-mails to eve@outside.example"
    )
    if not all(charges) or sent:
        raise ActFailed(f"the world disagrees: charges {charges}, outside mail {sent}")
    report.update(workflow_id=wf, request_id=request.request_id, policy=policy.version,
                  kept=[small["charge_id"], done["charge"]["charge_id"]])  # fmt: skip
    return report
