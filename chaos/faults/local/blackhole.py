"""The blackhole fault: DROP rules that cut a node's peer path (both directions, established
connections too) while its client address keeps working; or, with `from_target`, only one
process's path to it (that process moved into a cgroup of its own, its held connections
matched by their local ports). Undo deletes exactly those rules and moves the process back.

Not for: slowing a path down (`latency`), or the chains the rules live in (`iptables`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chaos.errors import FaultError
from chaos.faults.base import InjectedFault, NodeTarget
from chaos.faults.local.cgroups import Cgroup
from chaos.faults.local.checked_process import CheckedProcess
from chaos.faults.local.iptables import COMMENT_PREFIX, Iptables
from chaos.faults.local.peer_address import peer_address


class BlackholeFaults:
    """The blackhole action of one backend (`backend` names it in every fault)."""

    def __init__(self, backend: str, iptables: Iptables) -> None:
        self.backend = backend
        self.iptables = iptables

    def blackhole(
        self,
        target: NodeTarget,
        *,
        peer_host: str | None = None,
        ports: Sequence[int] | None = None,
        from_target: NodeTarget | None = None,
        from_expect: str | None = None,
    ) -> InjectedFault:
        host = peer_address(target, peer_host)
        port_list = sorted({int(p) for p in (ports or [target.port])})
        fault_id = uuid.uuid4().hex[:12]
        comment = ["-m", "comment", "--comment", f"{COMMENT_PREFIX}{fault_id}"]
        one_process: dict[str, Any] = {}
        rules: list[list[str]] = []
        group: Cgroup | None = None
        if from_target is None:
            for port in port_list:
                # Toward the node (matches in OUTPUT and INPUT on lo) and back from it.
                rules.append(
                    ["-p", "tcp", "-d", host, "--dport", str(port), *comment, "-j", "DROP"]
                )
                rules.append(
                    ["-p", "tcp", "-s", host, "--sport", str(port), *comment, "-j", "DROP"]
                )
        else:
            process = CheckedProcess(from_target, from_expect)
            process.close()
            group = Cgroup.move(process.pid, f"{self.iptables.chain.lower()}-{fault_id}")
            one_process.update(from_node=from_target.name, from_pid=process.pid, cgroup=group.name)
            for port in port_list:
                # New connections of that process: by its cgroup (sockets made from now on).
                by_group = ["-m", "cgroup", "--path", group.name]
                rules.append(["-p", "tcp", "-d", host, "--dport", str(port), *by_group,
                              *comment, "-j", "DROP"])  # fmt: skip
                # Connections it already holds: by their local port, both directions.
                for local_port in _connected_ports(process.pid, host, port):
                    rules.append(["-p", "tcp", "-d", host, "--dport", str(port),
                                  "--sport", str(local_port), *comment, "-j", "DROP"])  # fmt: skip
                    rules.append(["-p", "tcp", "-s", host, "--sport", str(port),
                                  "--dport", str(local_port), *comment, "-j", "DROP"])  # fmt: skip
        added: list[list[str]] = []
        try:
            for rule in rules:
                self.iptables.append("filter", rule)
                added.append(rule)
        except BaseException:
            for rule in added:
                with contextlib.suppress(FaultError):
                    self.iptables.delete("filter", rule)
            if group is not None:
                group.restore()
            raise
        details = {"id": fault_id, "peer_host": host, "ports": port_list,
                   **self.iptables.tag(fault_id), **one_process}  # fmt: skip
        fault = InjectedFault("blackhole", target, self.backend, details=details)

        def undo() -> None:
            for rule in rules:
                self.iptables.delete("filter", rule)
            if group is not None:
                group.restore()

        fault.undo = undo
        return fault


def _connected_ports(pid: int, host: str, port: int) -> list[int]:
    """Local ports of the TCP connections `pid` holds to host:port (IPv4)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    remote = "{:08X}:{:04X}".format(int.from_bytes(socket.inet_aton(host), "little"), port)
    found = []
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[2] == remote and fields[9] in inodes:
                found.append(int(fields[1].split(":")[1], 16))
    return sorted(set(found))
