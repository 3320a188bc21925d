"""Chaos: the local testbed, load with a ledger, and (later) hypothesis-driven experiments."""
