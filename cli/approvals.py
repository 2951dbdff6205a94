"""`wakeline approvals keygen | list | show | approve | deny`: people deciding on calls that wait.

Thin: the queue is PostgreSQL (`--dsn`, default `WAKELINE_DSN` or the local stack), filled by
the worker's approvals processor (processors/approvals.py); the checks before signing are in
policy/queue.py (`check_decidable`, `sign_decision`), the statement, binding and keys in
policy/approvals.py. A decision is signed with the approver's Ed25519 key (`keygen` writes it
under WAKELINE_KEYS_DIR, default ~/.wakeline/keys) and published on the workflow's partition
of the events topic, then on the compacted approvals topic the waiting SDK follows.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from wakeline.cli.incidents import _safe

T = TypeVar("T")

_DSN = click.option("--dsn", help="PostgreSQL DSN (default: WAKELINE_DSN or the local stack).")
_JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
_AS = click.option("--as", "approver", required=True, help="Who decides (a principal of the "
                   "request's approver group, e.g. alice@example.com).")  # fmt: skip
_KEY = click.option("--key", "key_file", type=click.Path(dir_okay=False, path_type=Path),
                    help="The private key file (default: the principal's under "
                    "WAKELINE_KEYS_DIR, ~/.wakeline/keys).")  # fmt: skip


def _now_us() -> int:
    return time.time_ns() // 1000


def _when(us: int | None) -> str:
    if us is None:
        return "-"
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@click.group("approvals")
def approvals() -> None:
    """Calls waiting for a person: list and read them, approve or deny them (signed)."""


@approvals.command("keygen")
@click.option("--principal", required=True, help="Whose key, e.g. alice@example.com.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write it (default: WAKELINE_KEYS_DIR, ~/.wakeline/keys).")  # fmt: skip
def keygen_cmd(principal: str, directory: Path | None) -> None:
    """Make an Ed25519 key for PRINCIPAL; print the public key line for a policy's approver
    group. Never overwrites a key that is there."""
    from wakeline.policy.approvals import generate_key, public_key_text, save_private_key

    key = generate_key()
    path = _guarded(lambda: save_private_key(principal, key, directory))
    click.echo(f"private key written to {path} (mode 0600; keep it to yourself)", err=True)
    click.echo(f'"{principal}" = "{public_key_text(key)}"')


@approvals.command("list")
@click.option("--all", "every", is_flag=True, help="Closed, denied and expired requests too.")
@click.option("--workflow", help="Only the requests of this workflow.")
@click.option("--ids", "ids_only", is_flag=True, help="Print only the request ids, one per line.")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), help="Wait up to this many "
              "seconds for a request to be listed (exit 1 if none is).")  # fmt: skip
@_DSN
@_JSON
def list_cmd(
    every: bool,
    workflow: str | None,
    ids_only: bool,
    wait_s: float | None,
    dsn: str | None,
    as_json: bool,
) -> None:
    """The requests still open (pending or approved, not expired, no result), oldest first."""
    from wakeline.cli.main import emit_json
    from wakeline.policy import queue

    deadline = time.monotonic() + (wait_s or 0)
    while True:
        now = _now_us()
        found = _with_cursor(
            dsn, lambda cur, now=now: queue.list_requests(cur, every=every, now_us=now)
        )
        if workflow is not None:
            found = [r for r in found if r.workflow_id == workflow]
        if found or wait_s is None:
            break
        if time.monotonic() >= deadline:
            raise click.ClickException(
                f"no {'' if every else 'open '}approval request"
                f"{f' of workflow {workflow}' if workflow else ''} after {wait_s:g} s (does a "
                "`wakeline worker` with the approval queue run?)"
            )
        time.sleep(0.2)
    if ids_only:
        for r in found:
            click.echo(r.request_id)
        return
    if as_json:
        emit_json([r.to_json(now) for r in found])
        return
    if not found:
        click.echo("no approval requests" if every else "no open approval requests")
        return
    for r in found:
        click.echo(_safe(
            f"{r.request_id}  {r.shown_state(now)}  {r.tool}  quorum {r.quorum}  "
            f"expires {_when(r.expires_at_us)}  workflow {r.workflow_id}  agent {r.agent_id}"
            f"  {r.reason or ''}"
        ))  # fmt: skip
    click.echo(f"{len(found)} request(s); `wakeline approvals show ID` prints one")


@approvals.command("show")
@click.argument("request_id")
@_DSN
@_JSON
def show_cmd(request_id: str, dsn: str | None, as_json: bool) -> None:
    """REQUEST_ID: the call, who may approve, the decisions so far and whether each counts."""
    from wakeline.cli.main import emit_json

    now = _now_us()
    request, decisions, why = _with_cursor(dsn, lambda cur: _read(cur, request_id, now))
    t = request.tally(decisions, now)
    if as_json:
        out = request.to_json(now)
        out["approved_by"] = sorted(t.approved_by)
        out["denied_by"] = t.denied_by
        out["decisions"] = [dict(d.to_json(), counts_now=w is None, why_not_now=w)
                            for d, w in zip(decisions, why, strict=True)]  # fmt: skip
        emit_json(out)
        return
    lines = [
        f"request {request.request_id}: {request.shown_state(now)}",
        f"tool     {request.tool}",
        f"args     {request.args}",
        f"reason   {request.reason or '-'}",
        f"call     intent {request.intent_id}, workflow {request.workflow_id}, run "
        f"{request.run_id}, agent {request.agent_id}, principal {request.principal}",
        f"approve  {request.quorum} of: {', '.join(sorted(request.approver_keys)) or '-'}",
        f"expires  {_when(request.expires_at_us)}",
        f"binding  {request.binding.hex()} "
        + (
            "(matches its intent)"
            if request.bound
            else "(does NOT match its intent: approve and deny refuse it)"
        ),
    ]
    if request.result_id:
        lines.append(f"result   {request.result_status} (event {request.result_id})")
    lines.append(f"approved by {len(t.approved_by)} of {t.quorum}"
                 + (f"; denied by {t.denied_by}" if t.denied_by else ""))  # fmt: skip
    for d, w in zip(decisions, why, strict=True):
        what = "timed out" if d.timed_out else d.decision
        note = f" ({d.comment})" if d.comment else ""
        lines.append(f"  {_when(d.time_us)}  {what} by {d.approver}{note}: "
                     + ("counts" if w is None else f"does not count: {w}"))  # fmt: skip
    click.echo(_safe("\n".join(lines)))


@approvals.command("approve")
@click.argument("request_id")
@_AS
@_KEY
@click.option("--comment", help="Why you approve (recorded with the approval).")
@_DSN
def approve_cmd(
    request_id: str, approver: str, key_file: Path | None, comment: str | None, dsn: str | None
) -> None:
    """Approve REQUEST_ID as an approver of its group, signed with your key."""
    _decide(request_id, "approve", approver, key_file, comment, dsn)


@approvals.command("deny")
@click.argument("request_id")
@_AS
@click.option("--reason", required=True, help="Why (recorded with the denial).")
@_KEY
@_DSN
def deny_cmd(
    request_id: str, approver: str, reason: str, key_file: Path | None, dsn: str | None
) -> None:
    """Deny REQUEST_ID: the waiting call is refused. A denial never lapses."""
    if not reason.strip():
        raise click.UsageError("--reason must say why")
    _decide(request_id, "deny", approver, key_file, reason, dsn)


def _decide(
    request_id: str, decision: str, approver: str, key_file: Path | None, comment: str | None,
    dsn: str | None,
) -> None:  # fmt: skip
    from wakeline.infra.settings import KafkaSettings
    from wakeline.policy import approvals as core
    from wakeline.policy import queue
    from wakeline.schemas import default_codec

    now = _now_us()

    def check(cur: Any) -> dict[str, Any]:
        request = queue.get_request(cur, request_id)
        return queue.check_decidable(
            request, request_id, decision, approver, now, default_codec().decode
        )

    event = _with_cursor(dsn, check)

    def load() -> Any:
        try:
            return core.load_private_key(approver, key_file)
        except core.ApprovalError as e:
            hint = "" if key_file else f" (`wakeline approvals keygen --principal {approver}`)"
            raise core.ApprovalError(f"{e}{hint}") from e

    key = _guarded(load)
    signed = _guarded(
        lambda: queue.sign_decision(event, decision, approver, key, now_us=now, comment=comment)
    )
    _guarded(lambda: core.publish_decision(KafkaSettings.from_env(), signed))
    verb = "approved" if decision == "approve" else "denied"
    click.echo(_safe(f"{verb} {request_id} as {approver} (event {signed['event_id']})"))


def _read(cur: Any, request_id: str, now: int) -> tuple[Any, list[Any], list[str | None]]:
    from wakeline.policy import approvals as core
    from wakeline.policy import queue

    request = queue.get_request(cur, request_id)
    if request is None:
        raise queue.QueueError(f"no approval request {request_id!r} "
                               "(`wakeline approvals list --all`)")  # fmt: skip
    decisions = queue.decisions_of(cur, request_id)
    members = core.members_of(request.approver_keys)
    why: list[str | None] = []
    for d in decisions:
        s = d.signed()
        if d.timed_out:
            why.append(None if d.counts else d.why)
        elif s is None:
            why.append(d.why or "not a statement")
        else:
            why.append(core.why_not(s, request_id=request.request_id, binding=request.binding,
                                    members=members, now_us=now))  # fmt: skip
    return request, decisions, why


def _guarded(fn: Callable[[], T]) -> T:
    """Run `fn`; an ApprovalError (a key, a signature, a publish) becomes a clean exit 1."""
    from wakeline.cli.main import run_guarded
    from wakeline.policy.approvals import ApprovalError
    from wakeline.policy.queue import QueueError

    def go() -> T:
        try:
            return fn()
        except ApprovalError as e:
            raise QueueError(str(e)) from e

    return run_guarded(go)


def _with_cursor(dsn: str | None, fn: Callable[[Any], T]) -> T:
    from wakeline.cli.ledger import _dsn
    from wakeline.infra import db

    def go() -> T:
        with db.connect(_dsn(dsn), autocommit=True) as conn, conn.cursor() as cur:
            return fn(cur)

    return _guarded(go)
