"""Wiring for `wakeline worker`: settings from the environment, the PostgreSQL store, the key."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from wakeline.errors import ConfigError
from wakeline.infra.settings import DatabaseSettings, KafkaSettings
from wakeline.ledger.store import LedgerStore

from .app import Worker, create_worker, run_worker
from .checkpointing import load_signer, signing_key_path
from .settings import BuilderSettings


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
    signer = load_signer(signing_key_path(env))  # generated on first use (DESIGN §2)
    return create_worker(kafka, settings, dsn, postgres_store_factory(dsn), signer)


def run_from_env(overrides: Mapping[str, Any] | None = None, loglevel: str = "warn") -> None:
    run_worker(worker_from_env(overrides), loglevel=loglevel)
