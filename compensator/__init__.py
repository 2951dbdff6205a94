"""The compensation daemon: quarantine -> reverse saga -> escalation. Not built yet (see
docs/architecture.md)."""
