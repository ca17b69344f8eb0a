"""Tiny, seeded, offline models for tests, benchmarks and the CPU demo (no weights downloaded)."""
