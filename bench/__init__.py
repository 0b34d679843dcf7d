"""Benchmarks: each prints or writes figures measured side by side in one run (not tests)."""
