"""Benchmarks: each measures a target from an issue and writes JSON. Targets live here, never in tests."""
