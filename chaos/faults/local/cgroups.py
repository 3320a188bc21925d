"""One process moved into a cgroup v2 group of its own, so an iptables rule can match its
sockets with `-m cgroup --path`, and moved back by `restore()`.

Not for: the rules themselves (`blackhole`).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from chaos.errors import FaultError


def cgroup2_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (None if it is not)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                return Path(left.split()[4])
    return None


class Cgroup:
    """A process moved into a cgroup v2 group of its own (so iptables can match its sockets
    with `-m cgroup --path`), and moved back by `restore()`."""

    def __init__(self, root: Path, name: str, pid: int, original: str) -> None:
        self.root, self.name, self.pid, self.original = root, name, pid, original

    @classmethod
    def move(cls, pid: int, name: str, ours: str = "") -> Cgroup:
        """Move `pid` into a new group `name`. A process already in a group whose name starts
        with `ours` (another fault's) is refused: moving it again would silently disarm the
        rules that match the first group."""
        root = cgroup2_mount()
        if root is None:
            raise FaultError("a blackhole from one node needs the cgroup v2 hierarchy mounted")
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
            original = next(line[3:] for line in lines if line.startswith("0::"))
        except (OSError, StopIteration):
            raise FaultError(f"pid {pid}: no cgroup v2 membership to read") from None
        if ours and original.rstrip("/").rsplit("/", 1)[-1].startswith(ours):
            raise FaultError(
                f"pid {pid} is already cut off by another fault from one process (cgroup "
                f"{original}): name every port in one fault, roll that one back, or, if its run "
                "died, clear what it left (`ratequeue-chaos run` does before it injects; "
                "`ratequeue-chaos testbed down`; `LocalFaultBackend.remove_leftovers`)"
            )
        group = root / name
        try:
            group.mkdir()
            (group / "cgroup.procs").write_text(f"{pid}\n")
        except OSError as error:
            with contextlib.suppress(OSError):
                group.rmdir()
            raise FaultError(f"cannot move pid {pid} into cgroup {group}: {error}") from None
        return cls(root, name, pid, original)

    def restore(self) -> None:
        """Move the process back where it was (if it still runs) and remove the group."""
        group = self.root / self.name
        if not group.exists():
            return
        with contextlib.suppress(OSError):
            for pid in (group / "cgroup.procs").read_text().split():
                back = self.root / self.original.lstrip("/") / "cgroup.procs"
                with contextlib.suppress(OSError):
                    back.write_text(f"{pid}\n")
        for _ in range(50):
            try:
                group.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)
        raise FaultError(f"cannot remove cgroup {group}: processes are still in it")
