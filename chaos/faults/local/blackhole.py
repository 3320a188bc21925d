"""The blackhole fault: DROP rules that cut a node's peer path (both directions, established
connections too) while its client address keeps working; or, with `from_target`, only one
process's path to it (that process moved into a cgroup of its own, its held connections
matched by their local ports); or, with `whole_node`, every path of the node's process, for a
store node every client and peer reaches the same way (the control Redis, an etcd member): its
listening ports both ways on loopback, the connections it opened by their address pairs (not
their local ports alone, which another process may use toward another peer), and those it
opens meanwhile by its cgroup. Undo deletes exactly those rules and moves the process
back.

Not for: slowing a path down (`latency`), or the chains the rules live in (`iptables`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
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
        whole_node: bool = False,
    ) -> InjectedFault:
        if whole_node:
            return self._cut_off(target)
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
            prefix = f"{self.iptables.chain.lower()}-"
            group = Cgroup.move(process.pid, f"{prefix}{fault_id}", ours=prefix)
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
        details = {"id": fault_id, "peer_host": host, "ports": port_list,
                   **self.iptables.tag(fault_id), **one_process}  # fmt: skip
        return self._installed(target, rules, group, details)

    def _cut_off(self, target: NodeTarget) -> InjectedFault:
        """Every path of the target's process, whoever is at the other end."""
        process = CheckedProcess(target, None)
        process.close()
        fault_id = uuid.uuid4().hex[:12]
        comment = ["-m", "comment", "--comment", f"{COMMENT_PREFIX}{fault_id}"]
        # Into the cgroup first: a connection opened after the sockets are read is its rule's.
        prefix = f"{self.iptables.chain.lower()}-"
        group = Cgroup.move(process.pid, f"{prefix}{fault_id}", ours=prefix)
        try:
            sockets = _sockets(process.pid)
            listening = sorted({s.local_port for s in sockets if s.state == _LISTEN})
            if not listening:
                raise FaultError(f"{target.name}: pid {process.pid} listens on no TCP port")
        except BaseException:
            group.restore()
            raise
        opened = sorted({s for s in sockets if s.state == _ESTABLISHED
                         and s.local_port not in listening}, key=str)  # fmt: skip
        drop = [*comment, "-j", "DROP"]
        rules = [["-m", "cgroup", "--path", group.name, *drop]]
        for port in listening:
            rules.append(["-p", "tcp", "-d", LOOPBACK, "--dport", str(port), *drop])
            rules.append(["-p", "tcp", "-s", LOOPBACK, "--sport", str(port), *drop])
        for held in opened:
            # By the whole address pair: another process may use the same local port number.
            local, remote = held.local_address(), held.remote_address()
            rules.append(_connection_rule(local, remote, drop))
            rules.append(_connection_rule(remote, local, drop))
        details = {"id": fault_id, "whole_node": True, "ports": listening,
                   "opened": [s.pair() for s in opened],
                   "cgroup": group.name, **self.iptables.tag(fault_id)}  # fmt: skip
        return self._installed(target, rules, group, details)

    def _installed(
        self,
        target: NodeTarget,
        rules: list[list[str]],
        group: Cgroup | None,
        details: dict[str, Any],
    ) -> InjectedFault:
        """The rules in place (all, or none and the process moved back), as one fault."""
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
        fault = InjectedFault("blackhole", target, self.backend, details=details)

        def undo() -> None:
            for rule in rules:
                self.iptables.delete("filter", rule)
            if group is not None:
                group.restore()

        fault.undo = undo
        return fault


LOOPBACK = "127.0.0.0/8"
_LISTEN, _ESTABLISHED = "0A", "01"  # the states as /proc/net/tcp writes them


@dataclass(frozen=True)
class _Socket:
    local: str  # as /proc/net/tcp writes it: address and port in hex
    remote: str
    state: str

    @property
    def local_port(self) -> int:
        return int(self.local.split(":")[1], 16)

    def local_address(self) -> tuple[str, int]:
        return _address(self.local)

    def remote_address(self) -> tuple[str, int]:
        return _address(self.remote)

    def pair(self) -> str:
        """ "host:port->host:port", for people."""
        (local, local_port), (remote, remote_port) = self.local_address(), self.remote_address()
        return f"{local}:{local_port}->{remote}:{remote_port}"


def _address(written: str) -> tuple[str, int]:
    """A /proc/net/tcp IPv4 address ("0100007F:1F90": host-order hex) as host and port."""
    host, port = written.split(":")
    return socket.inet_ntoa(int(host, 16).to_bytes(4, "little")), int(port, 16)


def _connection_rule(
    source: tuple[str, int], destination: tuple[str, int], drop: list[str]
) -> list[str]:
    return ["-p", "tcp", "-s", source[0], "--sport", str(source[1]),
            "-d", destination[0], "--dport", str(destination[1]), *drop]  # fmt: skip


def _sockets(pid: int) -> list[_Socket]:
    """The IPv4 TCP sockets `pid` holds."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    found = []
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[9] in inodes:
                found.append(_Socket(fields[1], fields[2], fields[3]))
    return found


def _connected_ports(pid: int, host: str, port: int) -> list[int]:
    """Local ports of the TCP connections `pid` holds to host:port (IPv4)."""
    remote = "{:08X}:{:04X}".format(int.from_bytes(socket.inet_aton(host), "little"), port)
    return sorted({s.local_port for s in _sockets(pid) if s.remote == remote})
