"""Avro schemas (*.avsc) and the codec that frames them: the wire contract (DESIGN §3)."""
