"""Stream processors hosted in the faust-streaming worker (docs/architecture.md)."""
