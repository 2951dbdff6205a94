"""The worker's signing key for checkpoints (signed on an interval and on SIGUSR1).

The signing itself is `wakeline.ledger.service.sign_checkpoint`, re-exported here: it reads
only what PostgreSQL holds, so any worker (or `wakeline ledger checkpoint`) may sign.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from wakeline.infra.settings import StackSettings, Variable, declare, path
from wakeline.ledger.checkpoints import Signer, ensure_signer
from wakeline.ledger.service import DEFAULT_ORIGIN, current_heads, sign_checkpoint

__all__ = ["DEFAULT_ORIGIN", "current_heads", "load_signer", "sign_checkpoint", "signing_key_path"]

log = logging.getLogger(__name__)

DEFAULT_KEY_NAME = "wakeline-ledger"

SIGNING_KEY = Variable(
    "WAKELINE_SIGNING_KEY",
    path,
    lambda env: StackSettings.from_env(env).home / "keys" / "ledger.key",
    "the checkpoint signing key (made on first use); auditors pin its .pub half",
)
declare("signing", "the key the worker and `wakeline ledger checkpoint` sign with", SIGNING_KEY)


def signing_key_path(env: Mapping[str, str] | None = None) -> Path:
    """WAKELINE_SIGNING_KEY, else `<WAKELINE_HOME>/keys/ledger.key` (created on first use)."""
    return SIGNING_KEY.read(os.environ if env is None else env)


def load_signer(path: Path, name: str = DEFAULT_KEY_NAME) -> Signer:
    return ensure_signer(path, name)
