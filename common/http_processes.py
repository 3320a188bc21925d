"""Waiting for an HTTP service a process of ours just started: it answers its healthcheck with
200, or it exited, or the time ran out. The testbed and the controllers' local actuator start
services this way. Not for: starting or stopping the process (the caller owns it).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from typing import Literal

import httpx


def wait_until_healthy(
    process: subprocess.Popen, url: str, timeout: float = 20.0
) -> Literal["healthy", "exited", "timed_out"]:
    """Poll `url` every 0.1 s until it answers 200 ("healthy"), the process exits ("exited"),
    or `timeout` seconds pass ("timed_out")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return "exited"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return "healthy"
        time.sleep(0.1)
    return "timed_out"
