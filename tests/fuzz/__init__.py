"""Fuzz tests: hostile and damaged input against the codec, the worker and the SDK."""
