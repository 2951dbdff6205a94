"""Stream processors hosted in the faust-streaming worker (DESIGN §6)."""
