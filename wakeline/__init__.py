"""Wakeline: an event-sourced audit ledger and compensation daemon for AI agents.

The components live in their own subpackages (docs/architecture.md): `wakeline.schemas`,
`wakeline.ledger`, `wakeline.producers`, `wakeline.processors`, `wakeline.compensator`,
`wakeline.cli`, and `wakeline.infra` (settings, the local stack, topics, migrations).
This root package holds only what every one of them shares: the version and the errors.
"""

from __future__ import annotations

from wakeline.errors import ConfigError, WakelineError

__version__ = "0.1.0"
__all__ = ["ConfigError", "WakelineError", "__version__"]
