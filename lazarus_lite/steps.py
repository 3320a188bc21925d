"""Importing this module registers every built-in workflow step function by name (the
workflow engine looks steps up in its registry). Not for: defining steps."""

from lazarus_lite import approval_steps, lock_steps, ratequeue_failover, stateless_steps

__all__ = ["approval_steps", "lock_steps", "ratequeue_failover", "stateless_steps"]
