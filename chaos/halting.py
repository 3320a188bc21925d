"""How a run waits so that a halt (the stop event) ends it early: `sleep_until` raises
`chaos.errors.RunAborted`. Not for: rollbacks (see `fault_phase`)."""

from __future__ import annotations

import threading
import time

from chaos.errors import RunAborted


def sleep_until(stop: threading.Event, moment: float) -> None:
    """Wait until the wall-clock `moment`; RunAborted("halted") once `stop` is set."""
    while time.time() < moment:
        if stop.wait(timeout=min(0.1, max(0.0, moment - time.time()))):
            raise RunAborted("halted")
