"""Benchmarks run by hand (not by CI); see docs/benchmarks.md."""
