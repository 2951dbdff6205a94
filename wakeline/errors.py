"""One error hierarchy for the whole distribution (docs/architecture.md, Layers).

Each component raises its own subclass; the CLI maps them to exit codes and one-line
messages. Expected failures never surface as tracebacks.
"""

from __future__ import annotations


class WakelineError(Exception):
    """Base of every error Wakeline raises on purpose."""

    #: process exit code the CLI uses for this kind of failure
    exit_code: int = 1


class ConfigError(WakelineError):
    """A setting is missing, malformed or unknown. The message names the setting."""

    exit_code = 2


class StackError(WakelineError):
    """The local stack (Kafka, PostgreSQL) cannot be started, reached or stopped."""

    exit_code = 3


class SchemaError(WakelineError):
    """An event does not match the wire contract (bad frame, unknown fingerprint, ...)."""


class LedgerError(WakelineError):
    """Base of ledger failures (bad input, store errors, verification verdicts)."""


class StoreError(WakelineError):
    """A database operation failed; raised once per adapter, from the driver error."""
