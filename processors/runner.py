"""Wiring for `wakeline worker`: settings from the environment, the PostgreSQL store, the key."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from wakeline.errors import ConfigError
from wakeline.infra.settings import DatabaseSettings, KafkaSettings
from wakeline.ledger.store import LedgerStore

from .app import Worker, create_worker, run_worker
from .checkpointing import load_signer, signing_key_path
from .child import AuditChild, AuditChildFailed, stop_self
from .settings import BuilderSettings

log = logging.getLogger(__name__)


def postgres_store_factory(dsn: str) -> Callable[[], LedgerStore]:
    """A factory of PostgresLedgerStore (wakeline.ledger.store_postgres) for `dsn`."""
    try:
        mod = importlib.import_module("wakeline.ledger.store_postgres")
    except ModuleNotFoundError as e:
        raise ConfigError(
            "wakeline.ledger.store_postgres is not installed; the worker needs PostgreSQL"
        ) from e
    cls = mod.PostgresLedgerStore
    return lambda: cls(dsn)


def worker_from_env(
    overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Worker:
    kafka = KafkaSettings.from_env(env)
    dsn = DatabaseSettings.from_env(env).dsn
    settings = BuilderSettings.from_env(env)
    if overrides:
        settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    signer = load_signer(signing_key_path(env))  # generated on first use
    return create_worker(kafka, settings, dsn, postgres_store_factory(dsn), signer)


def run_from_env(
    overrides: Mapping[str, Any] | None = None,
    loglevel: str = "warn",
    audit_child: AuditChild | None = None,
) -> None:
    """Run the worker here; with `audit_child`, the audit publisher runs in that child
    process (started once this process's settings and key are loaded, stopped with it)."""
    worker = worker_from_env(overrides)
    if audit_child is None:
        run_worker(worker, loglevel=loglevel)
        return
    worker.stop_hooks.append(audit_child.terminate)
    audit_child.start(on_failure=stop_self)
    try:
        run_worker(worker, loglevel=loglevel)
    finally:
        rc = audit_child.stop()
        if audit_child.failed is not None:
            raise AuditChildFailed(f"the audit publisher process exited with {audit_child.failed}")
        if rc:
            log.warning("audit publisher process exited with %s on stop", rc)
