"""Helpers for tests, benchmarks and the demo, not for production: run `wakeline worker` as a
child process and read back what it did (`harness`), and realistic intent/result traffic
(`samples`). Installed with the package so `bench/` and an operator's own checks can use it."""
