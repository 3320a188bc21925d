"""Actuators: how the controller changes the fleet (here: provisions a replacement replica).

`LocalProcessActuator` starts a real `redis-server` node on loopback, parked (it follows nobody
and refuses writes: the workflow lists it in the topology before attaching it to the primary),
with a heartbeat sensor beside it when told the control store (and etcd's members, when the
topology is kept there), and records every process it
started in
`WORKDIR/provisioned.jsonl`, so the testbed's `down` stops them too. A cloud actuator would
implement the same `Actuator` protocol. Not for: deciding whether to provision (the workflow).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

from common.http_processes import wait_until_healthy
from common.nodes import CLIENT_HOST, PEER_HOST
from common.redis_processes import RedisProcess, free_port
from ratequeue.local_cluster import start_node
from ratequeue.topology import NodeRef

PROVISIONED_FILE = "provisioned.jsonl"
# How long `remove` lets a process end on SIGTERM (a replica saving its data) before SIGKILL.
REMOVE_GRACE_SECONDS = 5.0


def _runs(pid: int, program: bytes) -> bool:
    """Does `pid` still run `program` (not ended, not a zombie, not reused by another)?"""
    try:
        return program in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def store_environment(etcd_endpoints: str | None) -> dict[str, str]:
    """The environment that points a service host an actuator starts (an API, a controller, a
    sensor) at the coordination store on etcd, in each program's own settings family: a
    profile's command names only the control Redis, and on etcd the topology is not there.
    Empty when the store is the control Redis (every program's default)."""
    if etcd_endpoints is None:
        return {}
    return {
        "RATEQUEUE_TOPOLOGY_BACKEND": "etcd",
        "RATEQUEUE_ETCD_ENDPOINTS": etcd_endpoints,
        "LAZARUS_COORDINATION_BACKEND": "etcd",
        "LAZARUS_ETCD_ENDPOINTS": etcd_endpoints,
        "FAILOVER_ETCD_ENDPOINTS": etcd_endpoints,
    }


class Actuator(Protocol):
    async def provision_replica(self, shard: str, name: str) -> NodeRef:
        """Start a parked node named `name` for `shard` (or find the one an earlier call started)
        and return where it answers. It must not follow any primary yet."""

    async def provision_instance(
        self, service: str, name: str, command: list[str], healthcheck_path: str
    ) -> str:
        """Start a host of a stateless service; return its base URL once it is healthy."""

    def remove(self, name: str) -> list[str]:
        """Stop what this actuator started under `name` (a replica with its sensor); the names
        of what it stopped, none if it started nothing under that name (blocking)."""


@runtime_checkable
class DataCopier(Protocol):
    def copy_data_out(self, node: str, data_dir: Path, names: list[str], into: Path) -> None:
        """Copy the files (or directories) `names` of `data_dir` on the node called `node` into
        the directory `into` (made here), where the controller runs (blocking). A missing
        first name is FileNotFoundError; a missing later one is skipped. For nodes whose data
        directory the controller cannot read itself (a container); the forensics copy uses
        it when the actuator has it."""


class LocalProcessActuator:
    def __init__(
        self,
        workdir: Path,
        *,
        control_url: str | None = None,
        maxmemory: str | None = None,
        etcd_endpoints: str | None = None,
    ) -> None:
        """`maxmemory`: each replacement's memory limit (as its shard's other nodes have);
        `etcd_endpoints`: where its sensors, and the service hosts it starts, read the
        topology (and the coordination store) when the controllers keep it in etcd."""
        self.workdir = workdir
        self.control_url = control_url
        self.maxmemory = maxmemory
        self.etcd_endpoints = etcd_endpoints
        self._lock = threading.Lock()

    def provisioned(self) -> list[dict]:
        path = self.workdir / PROVISIONED_FILE
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def _record(self, entry: dict) -> None:
        with self._lock, (self.workdir / PROVISIONED_FILE).open("a") as out:
            out.write(json.dumps(entry) + "\n")

    async def provision_replica(self, shard: str, name: str) -> NodeRef:
        return await asyncio.to_thread(self._provision_replica, shard, name)

    def _recorded_replica(self, name: str) -> tuple[dict, bool] | None:
        """The last node this actuator started under `name`, and whether it still runs."""
        for entry in reversed(self.provisioned()):
            if entry.get("name") == name and entry.get("role") == "replica":
                return entry, _runs(int(entry["pid"]), b"redis-server")
        return None

    def remove(self, name: str) -> list[str]:
        """Stop the processes recorded under `name` and `sensor-name` that still run what was
        started (a pid reused by another program is left alone), and wait for them to end: SIGTERM,
        then, after `REMOVE_GRACE_SECONDS`, SIGKILL to those still running (not waited for:
        the kernel ends them); their data stays on disk."""
        stopping: list[tuple[int, bytes]] = []
        stopped = []
        for entry in self.provisioned():
            if entry.get("name") not in {name, f"sensor-{name}"}:
                continue
            started = b"redis-server" if entry.get("role") == "replica" else b"detection"
            if _runs(int(entry["pid"]), started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry["pid"]), signal.SIGTERM)
                stopping.append((int(entry["pid"]), started))
                stopped.append(str(entry["name"]))
        deadline = time.monotonic() + REMOVE_GRACE_SECONDS
        while any(_runs(pid, started) for pid, started in stopping):
            if time.monotonic() > deadline:
                for pid, started in stopping:
                    if _runs(pid, started):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        return stopped

    def _provision_replica(self, shard: str, name: str) -> NodeRef:
        self.workdir.mkdir(parents=True, exist_ok=True)
        recorded = self._recorded_replica(name)
        if recorded is not None and recorded[1]:
            # Started by an earlier, interrupted run of the step: the same node, not a second.
            return NodeRef(name=name, host=CLIENT_HOST, port=int(recorded[0]["port"]),
                           peer_host=PEER_HOST)  # fmt: skip
        # A node that died is started again where it was (port and data), so the address the
        # topology may list already stays the node's; a first start takes a free port.
        port = int(recorded[0]["port"]) if recorded is not None else None
        replica = start_node(name, "replica", shard, self.workdir, port=port, detached=True,
                             maxmemory=self.maxmemory)  # fmt: skip
        self._record(
            {
                "name": name,
                "role": "replica",
                "shard": shard,
                "host": replica.host,
                "port": replica.port,
                "pid": replica.pid,
            }
        )
        if self.control_url is not None and recorded is None:
            self._start_sensor(shard, replica)
        return NodeRef(name=name, host=CLIENT_HOST, port=replica.port, peer_host=PEER_HOST)

    async def provision_instance(
        self, service: str, name: str, command: list[str], healthcheck_path: str
    ) -> str:
        return await asyncio.to_thread(
            self._provision_instance, service, name, command, healthcheck_path
        )

    def _provision_instance(
        self, service: str, name: str, command: list[str], healthcheck_path: str
    ) -> str:
        """`command` may use {python}, {host}, {port} and {control_url}; on etcd the process's
        environment names the members (`store_environment`)."""
        port = free_port((CLIENT_HOST,))
        values = {
            "python": sys.executable,
            "host": CLIENT_HOST,
            "port": str(port),
            "control_url": self.control_url or "",
        }
        argv = [part.format(**values) for part in command]
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / f"{name}.log").open("ab") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **store_environment(self.etcd_endpoints)},
            )
        # What a process check matches: a `-m` module's top-level package, else the executable.
        module = argv[:2] == [sys.executable, "-m"] and len(argv) > 2
        program = argv[2].partition(".")[0] if module else Path(argv[0]).name
        self._record(
            {
                "name": name,
                "role": "instance",
                "shard": None,
                "host": CLIENT_HOST,
                "port": port,
                "pid": process.pid,
                "program": program,
            }
        )
        url = f"http://{CLIENT_HOST}:{port}"
        outcome = wait_until_healthy(process, f"{url}{healthcheck_path}")
        if outcome == "exited":
            raise RuntimeError(f"{name} exited at start; see {self.workdir}/{name}.log")
        if outcome == "timed_out":
            process.kill()
            raise RuntimeError(f"{name} not healthy within 20 s")
        return url

    def _start_sensor(self, shard: str, replica: RedisProcess) -> None:
        log = self.workdir / f"sensor-{replica.name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "detection",
                    "sensor",
                    "--control",
                    str(self.control_url),
                    "--replica",
                    f"{PEER_HOST}:{replica.port}",
                    "--name",
                    f"sensor-{replica.name}",
                    *(["--etcd-endpoints", self.etcd_endpoints] if self.etcd_endpoints else []),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._record(
            {
                "name": f"sensor-{replica.name}",
                "role": "sensor",
                "shard": shard,
                "host": PEER_HOST,
                "port": replica.port,
                "pid": process.pid,
            }
        )
