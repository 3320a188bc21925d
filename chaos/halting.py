"""How a run stops early: `RunAborted`, and waiting that a halt (the stop event) interrupts.
Not for: rollbacks (see `fault_phase`)."""

from __future__ import annotations

import threading
import time


class RunAborted(Exception):
    """The run stopped before its end (steady state not met, halted, or interrupted)."""


def sleep_until(stop: threading.Event, moment: float) -> None:
    """Wait until the wall-clock `moment`; RunAborted("halted") once `stop` is set."""
    while time.time() < moment:
        if stop.wait(timeout=min(0.1, max(0.0, moment - time.time()))):
            raise RunAborted("halted")
