"""The compensation daemon: quarantine -> reverse saga -> escalation (DESIGN §7)."""
