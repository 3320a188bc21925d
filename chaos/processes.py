"""What runs at a pid, read from /proc: its argv, the program it runs, and its state. The
testbed, the scheduler and the local fault backend all need to know whether a pid is still the
process they started (pids are reused) and whether it is alive rather than a zombie; the fault
backend (and so the agent) signals a pid only if it runs the expected program. Not for: starting
or stopping.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# An interpreter whose program is the script or `-m` module it runs, not itself.
_PYTHON = re.compile(r"^python[0-9.]*$")
# Python options that take a value as the next argument (`-X dev`, `-W error`).
_PYTHON_VALUE_OPTIONS = frozenset({"-X", "-W", "-Q"})


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


def program_names(argv: list[str], comm: str | None = None) -> set[str]:
    """The names of the program an argv runs: argv[0]'s basename (also of its first word,
    since Redis rewrites its argv to `redis-server 127.0.0.1:7001`), the kernel's `comm`, and
    for a Python interpreter the script's basename or the `-m` module. Never an argument:
    `sleep 100 redis-server` runs `sleep`, `python -c "...redis-server..."` runs python."""
    if not argv:
        return set()
    first = argv[0].strip()
    names = {os.path.basename(first), os.path.basename(first.split(" ", 1)[0])}
    if comm:
        names.add(comm)
    if any(_PYTHON.match(name) for name in names):
        rest = iter(argv[1:])
        for arg in rest:
            if arg == "-m":
                names.add(next(rest, ""))
                break
            if arg == "-c" or arg == "-":
                break
            if arg in _PYTHON_VALUE_OPTIONS:
                next(rest, None)
            elif not arg.startswith("-"):
                names.add(os.path.basename(arg))
                break
    names.discard("")
    return names


def read_comm(pid: int) -> str | None:
    """The kernel's name of the program `pid` runs (its executable's basename, 15 characters at
    most), None if there is no such pid."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() or None
    except OSError:
        return None


def process_state(pid: int) -> str | None:
    """The one-letter state from /proc/PID/stat (R, S, T, Z, ...), None if there is no pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
    except (OSError, IndexError):
        return None


def running(pid: int) -> bool:
    return process_state(pid) not in (None, "Z", "X")
