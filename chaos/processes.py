"""What runs at a pid, read from /proc: its argv and its state. The testbed, the scheduler and
the local fault backend all need to know whether a pid is still the process they started
(pids are reused) and whether it is alive rather than a zombie. Not for: starting or stopping.
"""

from __future__ import annotations

from pathlib import Path


def read_cmdline(pid: int) -> list[str] | None:
    """The argv of `pid` (None if it is gone or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
    except (OSError, IndexError):
        return None
    if state in ("Z", "X") or not raw:
        return None
    return [part for part in raw.decode(errors="replace").split("\0") if part]


def process_state(pid: int) -> str | None:
    """The one-letter state from /proc/PID/stat (R, S, T, Z, ...), None if there is no pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
    except (OSError, IndexError):
        return None


def running(pid: int) -> bool:
    return process_state(pid) not in (None, "Z", "X")
