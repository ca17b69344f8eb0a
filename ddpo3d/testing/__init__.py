"""Tiny, seeded, offline models for tests and benchmarks (no weights downloaded)."""
