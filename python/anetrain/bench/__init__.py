"""Benchmarks (scripts that print figures; never timing assertions in tests)."""
