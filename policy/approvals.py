"""Approvals bound to one exact call, signed by the approvers' Ed25519 keys.

The pieces every party computes the same way (the SDK before a waiting call runs, the
approvals CLI when a person signs, `ledger-verify` offline):

- the **binding**: BLAKE3 of a domain tag and the canonical JSON of the call's identity (its
  intent's event id, tool, canonical-arguments digest, workflow, run, agent, principal and the
  version of the policy that asked). Another call, even the same tool with other arguments or
  the same arguments in another run, has another binding;
- the **statement** an approver signs: approve or deny, the request id, the binding, who, and
  until when; its bytes are a domain tag and canonical JSON (sorted keys, no spaces, UTF-8);
- the **tally**: which signed decisions count for a request (signed by the key the group lists
  for that approver, over this binding and request, not expired), and whether they reach the
  quorum of distinct approvers or one of them denied;
- **grant statements**: a standing grant (`GrantStatement`: grant id, grantor, agent and tool
  patterns, argument limits, expiry) and its revocation (`RevocationStatement`), each signed
  like a statement under a domain tag of its own, and the events that carry them.

Keys: `generate_key()`; public keys travel as text, `ed25519:` + base64 of the 32 raw bytes
(what a policy file lists and `wakeline approvals keygen` prints); private keys are PEM
(PKCS#8) files, kept mode 0600 under `WAKELINE_KEYS_DIR` (default `~/.wakeline/keys`).
docs/approvals.md describes the byte layouts for other languages.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from wakeline.infra.settings import Variable, declare
from wakeline.infra.settings import text as as_text

BINDING_DOMAIN = b"wakeline/approval-binding/v1\n"
STATEMENT_DOMAIN = b"wakeline/approval-statement/v1\n"
KEY_PREFIX = "ed25519:"
KEYS_DIR_VARIABLE = "WAKELINE_KEYS_DIR"
declare(
    "approver-keys",
    "approvers' keys (`wakeline approvals keygen`, `approve`, `deny`)",
    Variable(KEYS_DIR_VARIABLE, as_text, None,
             "directory of the approvers' private keys (default: ~/.wakeline/keys)"),
)  # fmt: skip

Decision = Literal["approve", "deny"]


class ApprovalError(ValueError):
    """A key, statement or signature that cannot be used (the message says why)."""


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# -- the binding -------------------------------------------------------------------------
def binding_digest(
    *,
    intent_id: str,
    tool: str,
    args_digest: bytes,
    workflow_id: str,
    run_id: str,
    agent_id: str,
    principal: str,
    policy_version: str | None,
) -> bytes:
    """The 32-byte digest an approval binds: exactly one call."""
    body = {
        "agent_id": agent_id,
        "args_digest": bytes(args_digest).hex(),
        "intent_id": intent_id,
        "policy_version": policy_version or "",
        "principal": principal,
        "run_id": run_id,
        "tool": tool,
        "workflow_id": workflow_id,
    }
    return blake3.blake3(BINDING_DOMAIN + _canonical(body)).digest()


def binding_of_intent(intent: Mapping[str, Any], policy_version: str | None) -> bytes:
    """The binding of a decoded `ToolIntent` event (as the ledger holds it)."""
    return binding_digest(
        intent_id=intent["event_id"],
        tool=intent["tool"],
        args_digest=intent["args_digest"],
        workflow_id=intent["workflow_id"],
        run_id=intent["run_id"],
        agent_id=intent["agent_id"],
        principal=intent["principal"],
        policy_version=policy_version,
    )


# -- keys --------------------------------------------------------------------------------
def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey | bytes) -> str:
    raw = key if isinstance(key, bytes) else public_bytes(key)
    return KEY_PREFIX + base64.b64encode(raw).decode()


def parse_public_key(text: str) -> bytes:
    """The 32 raw bytes of an `ed25519:<base64>` public key; ApprovalError if it is not one."""
    if not isinstance(text, str) or not text.startswith(KEY_PREFIX):
        raise ApprovalError(f"a public key is {KEY_PREFIX}<base64 of 32 bytes>, got {text!r}")
    try:
        raw = base64.b64decode(text[len(KEY_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as e:
        raise ApprovalError(f"public key {text!r} is not valid base64: {e}") from e
    if len(raw) != 32:
        raise ApprovalError(f"public key {text!r} has {len(raw)} bytes, an Ed25519 key has 32")
    return raw


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_pem(data: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ApprovalError(f"not a PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ApprovalError(f"the key is {type(key).__name__}, an approver's key is Ed25519")
    return key


def keys_dir() -> Path:
    return Path(os.environ.get(KEYS_DIR_VARIABLE) or Path.home() / ".wakeline" / "keys")


_UNSAFE = re.compile(r"[^A-Za-z0-9@._+-]")


def key_path(principal: str, directory: Path | None = None) -> Path:
    """Where `principal`'s private key is kept (one file per principal)."""
    if not principal:
        raise ApprovalError("a principal is required")
    return (directory or keys_dir()) / (_UNSAFE.sub("_", principal) + ".pem")


def save_private_key(principal: str, key: Ed25519PrivateKey, directory: Path | None = None) -> Path:
    """Write the key (mode 0600; never over an existing one: ApprovalError)."""
    path = key_path(principal, directory)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise ApprovalError(f"{path} exists: a key for {principal} is already there") from e
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem(key))
    return path


def load_private_key(principal: str | None = None, path: Path | None = None) -> Ed25519PrivateKey:
    """The key at `path`, or `principal`'s under `keys_dir()`."""
    if path is None:
        if principal is None:
            raise ApprovalError("name the principal or the key file")
        path = key_path(principal)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ApprovalError(f"cannot read the key {path}: {e.strerror or e}") from e
    return load_private_pem(data)


# -- statements --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Statement:
    """What an approver signs."""

    decision: Decision
    request_id: str
    binding: bytes
    approver: str
    expires_at_us: int

    def __post_init__(self) -> None:
        if self.decision not in ("approve", "deny"):
            raise ApprovalError(f"a decision is approve or deny, got {self.decision!r}")
        if len(self.binding) != 32:
            raise ApprovalError("a binding is 32 bytes")

    def to_bytes(self) -> bytes:
        return STATEMENT_DOMAIN + _canonical(
            {
                "approver": self.approver,
                "binding": self.binding.hex(),
                "decision": self.decision,
                "expires_at": self.expires_at_us,
                "request_id": self.request_id,
            }
        )

    def sign(self, key: Ed25519PrivateKey) -> bytes:
        return key.sign(self.to_bytes())

    def verify(self, signature: bytes | None, public_key: bytes | None) -> bool:
        return verify_signature(self.to_bytes(), signature, public_key)


def verify_signature(message: bytes, signature: bytes | None, public_key: bytes | None) -> bool:
    """Whether `signature` is `public_key`'s Ed25519 signature of `message` (False for any
    missing, malformed or wrong piece; never raises)."""
    if not signature or not public_key or len(public_key) != 32:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(bytes(signature), message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def statement_of_event(event: Mapping[str, Any]) -> Statement | None:
    """The statement a decoded ApprovalGranted / ApprovalDenied event claims (None when the
    event cannot be one: no binding of 32 bytes, a timeout written by the SDK itself)."""
    kind = {"ApprovalGranted": "approve", "ApprovalDenied": "deny"}.get(event.get("type", ""))
    binding = event.get("intent_digest")
    if kind is None or not isinstance(binding, bytes | bytearray) or len(binding) != 32:
        return None
    expires = event.get("expires_at")
    if expires is None:  # a denial has no expiry of its own: it never lapses
        expires = 0
    return Statement(kind, event["request_id"], bytes(binding), event["approver"], int(expires))  # type: ignore[arg-type]


# -- the tally ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Signed:
    """One signed decision as received: the statement, its signature, the key it names."""

    statement: Statement
    signature: bytes | None
    public_key: bytes | None


@dataclass
class Tally:
    """What the signed decisions received for one request add up to."""

    quorum: int
    approved_by: set[str] = field(default_factory=set)
    denied_by: str | None = None
    #: (approver, why it does not count) for every decision that was ignored
    rejected: list[tuple[str, str]] = field(default_factory=list)

    @property
    def approved(self) -> bool:
        return self.denied_by is None and len(self.approved_by) >= self.quorum

    @property
    def denied(self) -> bool:
        return self.denied_by is not None


def why_not(
    signed: Signed,
    *,
    request_id: str,
    binding: bytes,
    members: Mapping[str, bytes],
    now_us: int,
) -> str | None:
    """Why `signed` does not count for this request (None: it counts)."""
    st = signed.statement
    if st.request_id != request_id:
        return f"for another request ({st.request_id})"
    if st.binding != binding:
        return "bound to another call (its binding differs)"
    key = members.get(st.approver)
    if key is None:
        return f"{st.approver} is not in the approver group"
    if signed.public_key is None or bytes(signed.public_key) != bytes(key):
        return f"not signed with the key the policy lists for {st.approver}"
    if not st.verify(signed.signature, key):
        return "the signature does not verify"
    if st.decision == "approve" and st.expires_at_us <= now_us:
        return "expired"
    return None


def tally(
    decisions: Iterable[Signed],
    *,
    request_id: str,
    binding: bytes,
    members: Mapping[str, bytes],
    quorum: int,
    now_us: int,
) -> Tally:
    """Count the decisions that hold: distinct approvers of the group, each signed with the
    key the group lists for them, over this binding and request, unexpired. A quorum below 1
    counts as 1 (an approval always needs somebody). One valid denial denies."""
    out = Tally(max(1, int(quorum)))
    for d in decisions:
        why = why_not(d, request_id=request_id, binding=binding, members=members, now_us=now_us)
        if why is not None:
            out.rejected.append((d.statement.approver, why))
        elif d.statement.decision == "deny":
            out.denied_by = out.denied_by or d.statement.approver
        else:
            out.approved_by.add(d.statement.approver)
    return out


def members_of(approver_keys: Mapping[str, str]) -> dict[str, bytes]:
    """An ApprovalRequested's `approver_keys` (principal -> key text) as raw keys; members
    whose key cannot be read are left out (they can approve nothing)."""
    out = {}
    for principal, text in approver_keys.items():
        try:
            out[principal] = parse_public_key(text)
        except ApprovalError:
            continue
    return out


def approvals_key(request_id: str, approver: str) -> bytes:
    """The record key of a signed decision on the compacted approvals topic."""
    return f"{request_id}/{approver}".encode()


def decision_event(
    request: Mapping[str, Any],
    statement: Statement,
    signature: bytes,
    public_key: bytes,
    *,
    event_id: str,
    time_us: int,
    source: str = "wakeline-approvals",
    comment: str | None = None,
) -> dict[str, Any]:
    """The ApprovalGranted / ApprovalDenied event of a signed statement about `request` (a
    decoded ApprovalRequested), in the request's workflow and run."""
    envelope = (
        "workflow_id", "run_id", "step_id", "agent_id", "tenant", "boundary", "correlation_id",
        "principal", "trace_id", "span_id",
    )  # fmt: skip
    event: dict[str, Any] = {k: request.get(k) for k in envelope}
    event.update(
        event_id=event_id,
        time=time_us,
        source=source,
        parent_event_ids=[request["event_id"]],
        request_id=request["event_id"],
        intent_digest=statement.binding,
        approver=statement.approver,
        signature=signature,
        public_key=public_key,
    )
    if statement.decision == "deny" and statement.expires_at_us != 0:
        raise ApprovalError("a denial never lapses: its statement is signed with expires_at 0")
    if statement.decision == "approve":
        event.update(type="ApprovalGranted", expires_at=statement.expires_at_us, comment=comment)
    else:
        event.update(type="ApprovalDenied", reason=comment, timed_out=False)
    return event


def publish_decision(kafka: Any, event: Mapping[str, Any], *, timeout: float = 15.0) -> None:
    """Send a signed decision (from `decision_event`) where it counts: onto the workflow's
    partition of `<prefix>events` first (so the ledger holds it), then onto the compacted
    approvals topic the waiting SDK follows. `kafka` is a `KafkaSettings`. Raises
    ApprovalError when the broker did not take both within `timeout`."""
    key = approvals_key(event["request_id"], event["approver"])
    _publish(kafka, event, kafka.topics.approvals, key, "decision", timeout)


def _publish(
    kafka: Any, event: Mapping[str, Any], state_topic: str, key: bytes, what: str, timeout: float
) -> None:
    """The event on `<prefix>events` (its workflow's partition), then, once the broker took
    that, on the compacted `state_topic` under `key`."""
    from confluent_kafka import Producer

    from wakeline.schemas import cloudevents_headers, encode_event

    value = encode_event(dict(event))
    headers = cloudevents_headers(dict(event))
    # not idempotent: a fresh idempotent producer's first delivery waits ~500 ms for its
    # producer id (docs/decisions.md), which would be most of an approval's round trip; a
    # retry's duplicate repeats the event id, which the ledger counts once (a redelivery)
    producer = Producer(kafka.producer_config(**{"enable.idempotence": False, "acks": "all"}))
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer.produce(
        kafka.topics.events, value, event["workflow_id"].encode(), headers=headers,
        on_delivery=delivered,
    )  # fmt: skip
    left = producer.flush(timeout)
    if not failures and not left:
        producer.produce(state_topic, value, key, headers=headers, on_delivery=delivered)
    left = producer.flush(timeout)
    if failures or left:
        raise ApprovalError(f"the {what} was not published: {failures or 'timed out'}")


# -- standing grants ---------------------------------------------------------------------
GRANT_DOMAIN = b"wakeline/grant-statement/v1\n"
REVOCATION_DOMAIN = b"wakeline/grant-revocation/v1\n"
#: the workflow id of every Grant and GrantRevoked on `<prefix>events` (run id = grant id)
GRANTS_WORKFLOW = "wakeline.grants"


@dataclass(frozen=True, slots=True)
class GrantStatement:
    """What a grantor signs: `agent` and `tool` are glob patterns (fnmatch, case-sensitive),
    `limits` argument predicates (policy/predicates.py) every covered call must satisfy."""

    grant_id: str
    grantor: str
    agent: str
    tool: str
    limits: tuple[str, ...]
    expires_at_us: int

    def to_bytes(self) -> bytes:
        return GRANT_DOMAIN + _canonical(
            {
                "agent": self.agent,
                "expires_at": self.expires_at_us,
                "grant_id": self.grant_id,
                "grantor": self.grantor,
                "limits": list(self.limits),
                "tool": self.tool,
            }
        )

    def sign(self, key: Ed25519PrivateKey) -> bytes:
        return key.sign(self.to_bytes())

    def verify(self, signature: bytes | None, public_key: bytes | None) -> bool:
        return verify_signature(self.to_bytes(), signature, public_key)


@dataclass(frozen=True, slots=True)
class RevocationStatement:
    """What a revoker (the grantor or another member of the group) signs to withdraw a grant."""

    grant_id: str
    revoked_by: str

    def to_bytes(self) -> bytes:
        return REVOCATION_DOMAIN + _canonical(
            {"grant_id": self.grant_id, "revoked_by": self.revoked_by}
        )

    def sign(self, key: Ed25519PrivateKey) -> bytes:
        return key.sign(self.to_bytes())

    def verify(self, signature: bytes | None, public_key: bytes | None) -> bool:
        return verify_signature(self.to_bytes(), signature, public_key)


def grant_of_event(event: Mapping[str, Any]) -> GrantStatement | None:
    """The statement a decoded Grant event claims (None when it is not a Grant)."""
    if event.get("type") != "Grant":
        return None
    return GrantStatement(
        str(event["grant_id"]),
        str(event["grantor"]),
        str(event["agent"]),
        str(event["tool"]),
        tuple(str(x) for x in event.get("limits") or ()),
        int(event["expires_at"]),
    )


def revocation_of_event(event: Mapping[str, Any]) -> RevocationStatement | None:
    if event.get("type") != "GrantRevoked":
        return None
    return RevocationStatement(str(event["grant_id"]), str(event["revoked_by"]))


def revocation_why_not(event: Mapping[str, Any], members: Mapping[str, bytes]) -> str | None:
    """Why a decoded GrantRevoked does not revoke for this approver group (None: it does):
    signed by a member with the key the group lists for them."""
    st = revocation_of_event(event)
    if st is None:
        return "not a revocation"
    key = members.get(st.revoked_by)
    if key is None:
        return f"{st.revoked_by} is not in the approver group"
    if bytes(event.get("public_key") or b"") != bytes(key):
        return f"not signed with the key the policy lists for {st.revoked_by}"
    if not st.verify(event.get("signature"), key):
        return "the signature does not verify"
    return None


def grant_why_not(
    event: Mapping[str, Any],
    *,
    agent_id: str,
    tool: str,
    args: Mapping[str, Any],
    members: Mapping[str, bytes],
    quorum: int,
    revoked: Collection[str],
    now_us: int,
    condition: Callable[[str], Callable[[Mapping[str, Any]], bool] | str],
) -> str | None:
    """Why a decoded Grant does not cover a call (None: it does). `members` is the approver
    group of the call's decision, `revoked` the grant ids a valid revocation names
    (`revocation_why_not`), `condition(text)` a compiled limit or why it does not compile
    (`wakeline.policy.predicates.compile_condition`, cached by the caller)."""
    st = grant_of_event(event)
    if st is None:
        return "not a grant"
    if not fnmatchcase(agent_id, st.agent):
        return f"agent {agent_id} does not match {st.agent!r}"
    if not fnmatchcase(tool, st.tool):
        return f"tool {tool} does not match {st.tool!r}"
    key = members.get(st.grantor)
    if key is None:
        return f"{st.grantor} is not in the approver group"
    if bytes(event.get("public_key") or b"") != bytes(key):
        return f"not signed with the key the policy lists for {st.grantor}"
    if not st.verify(event.get("signature"), key):
        return "the signature does not verify"
    if quorum > 1:
        return f"the rule needs {quorum} approvers; a grant is one grantor's"
    if st.expires_at_us <= now_us:
        return "expired"
    if st.grant_id in revoked:
        return "revoked"
    for limit in st.limits:
        compiled = condition(limit)
        if isinstance(compiled, str):
            return f"its limit {limit!r} cannot be read ({compiled})"
        if not compiled(args):
            return f"its limit {limit!r} does not hold"
    return None


def grants_key(grant_id: str) -> bytes:
    """The record key of a Grant on the compacted grants topic."""
    return grant_id.encode()


def revocation_key(grant_id: str, revoked_by: str) -> bytes:
    """The record key of a GrantRevoked: its own key, so neither a replayed Grant nor a
    forged revocation by someone else overwrites a valid revocation."""
    return f"{grant_id}/revoked/{revoked_by}".encode()


def _grants_envelope(
    principal: str, run_id: str, event_id: str, time_us: int, source: str
) -> dict[str, Any]:
    return {
        "event_id": event_id, "time": time_us, "source": source,
        "workflow_id": GRANTS_WORKFLOW, "run_id": run_id, "step_id": None,
        "agent_id": "wakeline-grants", "tenant": None, "boundary": None,
        "parent_event_ids": [], "correlation_id": None, "principal": principal,
        "trace_id": None, "span_id": None,
    }  # fmt: skip


def grant_event(
    statement: GrantStatement,
    signature: bytes,
    public_key: bytes,
    *,
    time_us: int,
    reason: str | None = None,
    source: str = "wakeline-grants",
) -> dict[str, Any]:
    """The Grant event of a signed grant statement (workflow `GRANTS_WORKFLOW`, run = grant
    id, event id = grant id)."""
    st = statement
    event = _grants_envelope(st.grantor, st.grant_id, st.grant_id, time_us, source)
    event.update(
        type="Grant", grant_id=st.grant_id, grantor=st.grantor, agent=st.agent, tool=st.tool,
        limits=list(st.limits), expires_at=st.expires_at_us, reason=reason,
        signature=signature, public_key=public_key,
    )  # fmt: skip
    return event


def revocation_event(
    statement: RevocationStatement,
    signature: bytes,
    public_key: bytes,
    *,
    event_id: str,
    time_us: int,
    reason: str | None = None,
    source: str = "wakeline-grants",
) -> dict[str, Any]:
    st = statement
    event = _grants_envelope(st.revoked_by, st.grant_id, event_id, time_us, source)
    event["parent_event_ids"] = [st.grant_id]
    event.update(
        type="GrantRevoked", grant_id=st.grant_id, revoked_by=st.revoked_by, reason=reason,
        signature=signature, public_key=public_key,
    )  # fmt: skip
    return event


def publish_grant(kafka: Any, event: Mapping[str, Any], *, timeout: float = 15.0) -> None:
    """A Grant or GrantRevoked (from `grant_event` / `revocation_event`) onto `<prefix>events`
    (the ledger holds it), then onto the compacted grants topic the SDK follows."""
    if event.get("type") == "Grant":
        key = grants_key(event["grant_id"])
    else:
        key = revocation_key(event["grant_id"], event["revoked_by"])
    _publish(kafka, event, kafka.topics.grants, key, str(event.get("type")), timeout)
