"""What runs at a pid, read from /proc: its argv, the program it runs, and its state (which
programs a node of each role runs is `common.nodes.PROGRAMS_OF_ROLE`). The testbed, the
scheduler and the local fault backend all need to know whether a pid is still the process they
started (pids are reused) and whether it is alive rather than a zombie; the fault backend (and
so the agent) signals a pid only if it runs the expected program. A program is never a word
among a process's arguments: for a Python interpreter it is the script or `-m` package, found by
reading the command line as CPython does. Not for: starting or stopping.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path

# An interpreter whose program is the script or `-m` module it runs, not itself: python,
# python3.11, python3.13t, python3-dbg, pypy3.
_PYTHON = re.compile(r"^(?:python|pypy)(?:\d+(?:\.\d+)*)?[dmtu]*(?:-dbg|-debug)?$")
# CPython's command line (Python/getopt.c): short options, those taking a value (attached,
# `-Xdev`, or the next argument), and the long ones taking the next argument as their value.
_PYTHON_FLAGS = frozenset("bBdEhiIOPqRsStuvVx?")
_PYTHON_VALUE_FLAGS = frozenset("cmWX")
_PYTHON_LONG_VALUE_OPTIONS = frozenset({"--check-hash-based-pycs"})


def read_cmdline(pid: int) -> list[str] | None:
    """The argv of `pid` (None if it is gone or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
    except (OSError, IndexError):
        return None
    # Each argument ends in a NUL; Redis pads its rewritten title with more. An empty argument
    # inside is kept: dropped, `python -W '' script` would read as `-W script`.
    parts = raw.decode(errors="replace").split("\0")
    while parts and not parts[-1]:
        parts.pop()
    if state in ("Z", "X") or not parts:
        return None
    return parts


def program_names(argv: list[str], comm: str | None = None) -> set[str]:
    """The names of the program an argv runs: argv[0]'s basename (also of its first word,
    since Redis rewrites its argv to `redis-server 127.0.0.1:7001`), the kernel's `comm`, and
    for a Python interpreter the script's basename or the `-m` module's top-level package.
    Never an argument: `sleep 100 redis-server` runs `sleep`; `python -c "..." redis-server`
    and `python '-cimport time' redis-server` run python."""
    if not argv:
        return set()
    first = argv[0].strip()
    names = {os.path.basename(first), os.path.basename(first.split(" ", 1)[0])}
    if comm:
        names.add(comm)
    if any(_PYTHON.match(name) for name in names):
        names.add(_python_program(argv[1:]))
    names.discard("")
    return names


def _python_program(args: list[str]) -> str:
    """What a Python interpreter given `args` runs: the script's basename, the `-m` module's
    top-level package, or "" (`-c`, stdin, or a command line the interpreter would refuse)."""
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == "--":  # the end of the options: the script follows
            return os.path.basename(args[index]) if index < len(args) else ""
        if arg in _PYTHON_LONG_VALUE_OPTIONS:
            index += 1
            continue
        if arg.startswith("--"):
            return ""  # --help, --version: it runs nothing else; another: it refuses it
        if not arg.startswith("-") or arg == "-":
            return "" if arg == "-" else os.path.basename(arg)
        for position, flag in enumerate(arg[1:], start=2):
            if flag in _PYTHON_VALUE_FLAGS:
                value = arg[position:]
                if not value:  # the value is the next argument
                    value = args[index] if index < len(args) else ""
                    index += 1
                if flag == "m":
                    return value.split(".", 1)[0]
                if flag == "c":
                    return ""
                break  # -W/-X: the value is the rest of this argument
            if flag not in _PYTHON_FLAGS:
                return ""  # an option CPython refuses: it would have exited
    return ""


def runs_program(argv: list[str], comm: str | None, programs: Collection[str]) -> bool:
    """True if the argv (and `comm`) run one of `programs` (names, or paths: their basenames)."""
    return not program_names(argv, comm).isdisjoint(os.path.basename(p) for p in programs)


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


# Chaos programs: ours, and Chaos Toolkit's (its `chaos run` drives our activities, which inject
# through the local backend without the run lock).
CHAOS_PROGRAMS = ("ratequeue-chaos", "chaos", "chaostoolkit")
# Their commands that never inject a fault; any other command (or one not recognised, e.g. after
# an option taking a value) is taken to make faults, which errs on the side of leaving a fault.
HARMLESS_CHAOS_COMMANDS = frozenset(
    {"halt", "validate", "report", "export-journal", "testbed", "compare", "demo",
     "discover", "info", "init", "settings"}
)  # fmt: skip


def may_hold_faults(argv: list[str]) -> bool:
    """True if the command line runs a chaos program (`CHAOS_PROGRAMS`) that may hold a fault
    in force: any but a harmless command, `--help` or a dry run."""
    if not runs_program(argv, None, CHAOS_PROGRAMS):
        return False
    command = next((arg for arg in argv[1:] if arg in HARMLESS_CHAOS_COMMANDS | {"run"}), None)
    return command not in HARMLESS_CHAOS_COMMANDS and not {"--help", "--dry-run"} & set(argv)


def live_fault_makers() -> list[str]:
    """`pid: command line` of each live process on this host that `may_hold_faults`: while
    one lives, a local fault on this host may be its own, not a leftover."""
    found = []
    for entry in Path("/proc").iterdir():
        argv = read_cmdline(int(entry.name)) if entry.name.isdigit() else None
        if argv is not None and may_hold_faults(argv):
            found.append(f"{entry.name}: {' '.join(argv)}")
    return found
