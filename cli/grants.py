"""`wakeline grants create | revoke | list`: standing grants, signed with the grantor's key.

A grant lets agents matching `--agent` make calls of tools matching `--tool` (glob patterns)
whose arguments satisfy every `--limit` (docs/approvals.md), until `--expires`, without
asking for each call. The SDK accepts it only where the policy's approver group lists the
grantor with the key that signed it. Grants and revocations go onto `<prefix>events`
(workflow `wakeline.grants`, so the ledger holds them) and the compacted grants topic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

_AS = "The principal who signs (with the key `wakeline approvals keygen` made, unless --key)."
_SIGNER = click.option("--as", "principal", required=True, help=_AS)
_KEY = click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The signer's private key file (PEM), instead of the one keygen made.",
)


def parse_duration(text: str) -> float:
    """`90s`, `15m`, `24h`, `7d`, `1h30m` (the policy file's durations) in seconds."""
    from wakeline.policy.engine import parse_duration as policy_duration

    try:
        return policy_duration(text)
    except ValueError as e:
        raise click.BadParameter(str(e).replace("a timeout", "a duration")) from e


def _guard(fn: Callable[[], Any]) -> Any:
    """ApprovalError and PolicyError (bad keys, limits, publishing) as a one-line error."""
    from wakeline.cli.main import run_guarded
    from wakeline.policy.approvals import ApprovalError
    from wakeline.policy.predicates import PolicyError

    def guarded() -> Any:
        try:
            return fn()
        except (ApprovalError, PolicyError) as e:
            raise click.ClickException(str(e)) from e

    return run_guarded(guarded)


@click.group("grants")
def grants() -> None:
    """Standing grants: approve a class of calls once instead of each call."""


@grants.command("create")
@_SIGNER
@_KEY
@click.option("--agent", required=True, help="Agent ids covered, a glob ('billing-*').")
@click.option("--tool", required=True, help="Tool names covered, a glob ('stripe.refund').")
@click.option(
    "--limit",
    "limits",
    multiple=True,
    metavar="EXPR",
    help="An argument predicate every covered call must satisfy, e.g. 'amount <= 500' "
    "(repeatable; all must hold).",
)
@click.option("--expires", default="24h", show_default=True, help="How long it holds.")
@click.option("--reason", help="Why (recorded, not signed).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def create(
    principal: str,
    key_file: Path | None,
    agent: str,
    tool: str,
    limits: tuple[str, ...],
    expires: str,
    reason: str | None,
    as_json: bool,
) -> None:
    """Sign a standing grant and publish it; prints its id."""
    from wakeline.cli.main import emit_json, run_guarded
    from wakeline.infra.settings import KafkaSettings
    from wakeline.policy import approvals as ap
    from wakeline.policy.predicates import PolicyError, compile_condition
    from wakeline.schemas import new_event_id

    seconds = parse_duration(expires)
    kafka = run_guarded(KafkaSettings.from_env)

    def go() -> dict[str, Any]:
        for limit in limits:  # a limit that cannot be read is refused here
            try:
                compile_condition(limit)
            except PolicyError as e:
                raise click.BadParameter(f"{limit!r}: {e}", param_hint="--limit") from e
        key = ap.load_private_key(principal, key_file)
        now = time.time_ns() // 1000
        st = ap.GrantStatement(
            new_event_id(), principal, agent, tool, tuple(limits), now + int(seconds * 1e6)
        )
        event = ap.grant_event(st, st.sign(key), ap.public_bytes(key), time_us=now, reason=reason)
        ap.publish_grant(kafka, event)
        return event

    event = _guard(go)
    if as_json:
        emit_json(_row(event))
    else:
        click.echo(
            f"grant {event['grant_id']}: {principal} lets {agent} call {tool}"
            + (f" where {' and '.join(limits)}" if limits else "")
            + f" until {_when(event['expires_at'])}"
        )


@grants.command("revoke")
@click.argument("grant_id")
@_SIGNER
@_KEY
@click.option("--reason", help="Why (recorded, not signed).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def revoke(
    grant_id: str, principal: str, key_file: Path | None, reason: str | None, as_json: bool
) -> None:
    """Withdraw GRANT_ID (the grantor or another member of the approver group signs)."""
    from wakeline.cli.main import emit_json, run_guarded
    from wakeline.infra.settings import KafkaSettings
    from wakeline.policy import approvals as ap
    from wakeline.schemas import new_event_id

    kafka = run_guarded(KafkaSettings.from_env)

    def go() -> dict[str, Any]:
        key = ap.load_private_key(principal, key_file)
        st = ap.RevocationStatement(grant_id, principal)
        event = ap.revocation_event(
            st, st.sign(key), ap.public_bytes(key), event_id=new_event_id(),
            time_us=time.time_ns() // 1000, reason=reason,
        )  # fmt: skip
        ap.publish_grant(kafka, event)
        return event

    event = _guard(go)
    if as_json:
        emit_json({"grant_id": grant_id, "revoked_by": principal, "event_id": event["event_id"]})
    else:
        click.echo(f"grant {grant_id} revoked by {principal} (event {event['event_id']})")


@grants.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also expired and revoked grants.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to read the topic.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_grants(show_all: bool, timeout: float, as_json: bool) -> None:
    """The grants on the grants topic. Signatures are checked against the key each record
    names; whether that key is the one a policy lists is for the SDK to check."""
    from wakeline.cli.main import emit_json, run_guarded
    from wakeline.errors import WakelineError
    from wakeline.infra.settings import KafkaSettings
    from wakeline.producers.approvals import parse_grant_record
    from wakeline.producers.state import StateReader

    kafka = run_guarded(KafkaSettings.from_env)

    def read() -> dict[bytes, dict[str, Any]]:
        reader = StateReader(kafka, kafka.topics.grants, parse_grant_record, name="grants-cli")
        try:
            if not reader.start().wait_live(timeout):
                raise WakelineError(f"could not read {kafka.topics.grants} within {timeout:g}s")
            return reader.snapshot()
        finally:
            reader.close()

    rows = grant_rows(run_guarded(read), time.time_ns() // 1000)
    if not show_all:
        rows = [r for r in rows if r["status"] == "active"]
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no grants" if show_all else "no active grants (--all shows the others)")
    for r in rows:
        limits = " and ".join(r["limits"]) or "no limits"
        click.echo(
            f"{r['grant_id']}  {r['status']:<8} {r['grantor']} -> {r['agent']} {r['tool']} "
            f"({limits}) until {_when(r['expires_at'])}"
        )


def grant_rows(state: dict[bytes, dict[str, Any]], now_us: int) -> list[dict[str, Any]]:
    """One row per grant, with its status: active, expired, revoked, or unsigned (its
    signature does not verify with the key it names)."""
    from wakeline.policy import approvals as ap

    revoked: dict[str, list[str]] = {}
    for event in state.values():
        st = ap.revocation_of_event(event)
        if st is not None and st.verify(event.get("signature"), event.get("public_key")):
            revoked.setdefault(st.grant_id, []).append(st.revoked_by)
    rows = []
    for event in state.values():
        grant = ap.grant_of_event(event)
        if grant is None:
            continue
        row = _row(event)
        if not grant.verify(event.get("signature"), event.get("public_key")):
            row["status"] = "unsigned"
        elif grant.grant_id in revoked:
            row["status"] = "revoked"
            row["revoked_by"] = sorted(revoked[grant.grant_id])
        elif grant.expires_at_us <= now_us:
            row["status"] = "expired"
        else:
            row["status"] = "active"
        rows.append(row)
    return sorted(rows, key=lambda r: r["grant_id"])


def _row(event: dict[str, Any]) -> dict[str, Any]:
    keys = ("grant_id", "grantor", "agent", "tool", "limits", "expires_at", "reason")
    row = {k: event.get(k) for k in keys}
    pub = event.get("public_key")
    row["public_key"] = None if pub is None else _key_text(pub)
    return row


def _key_text(raw: bytes) -> str:
    from wakeline.policy.approvals import public_key_text

    return public_key_text(bytes(raw))


def _when(us: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(us / 1e6))
