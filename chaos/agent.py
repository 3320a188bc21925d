"""`chaos agent`: a Gremlin-compatible attacks API on loopback that runs attacks on this
machine's nodes through the local fault backend, so experiments written for Gremlin (and the
gremlin fault backend) run against the local testbed unchanged.

It serves, under `/v1` (the shape `chaos.faults.gremlin` documents, with its sources):
`POST /attacks/new` (201, the attack guid as text/plain), `GET /attacks/{guid}` (the attack
with `stage` and `stageLifecycle`), `DELETE /attacks/{guid}` (halt: roll back; 202),
`GET /attacks`, `/attacks/active`, `/attacks/completed`, `DELETE /attacks` (halt all),
`GET /executions?taskId={guid}` (one entry per target), and `GET /healthz` (no key needed).

Safety, in this order, before anything is done: the API key (`Authorization: Key <key>`; 401),
the request shape (400 naming the field), the allowlist of target identifiers (403), the
command and its args (400 naming the field). Only `{"type": "Exact", "exact": [...]}` targets
(or `hosts.ids` / `containers.ids`) are accepted, only on identifiers the targets file knows;
network attacks may only name the target's own port and its own addresses; the backend then
signals a pid only if its program (the executable, or a Python script or module: never a word
among its arguments) is the target's. Every refusal, the framework's too (unknown path 404,
another method 405 with `Allow`, a body over 64 KiB 413), is JSON `{"error": <reason>,
"message", "field"?}` quoting no long value back; no answer carries a traceback. The published
OpenAPI declares the body, the key and every status each operation answers.

Commands: `process_killer` (kill; `-p` must name the node's program), `process_pause` (agent
extension: SIGSTOP, halted by SIGCONT), `shutdown` (SIGTERM then SIGKILL; `-r` restarts it when
the targets file gives a `command`), `blackhole` (`-p`/`-n` ports, `-h`/`-i` addresses),
`latency` (`-m MS`, `-p`, `-h`). `-l`/`--length` (default 60 s, Gremlin's) rolls the attack
back by itself; stages go Pending → Distributed → Running → Successful, or → HaltRequested →
Halted on DELETE, or → Failed (with `output`) when the fault could not be injected.

Targets come from a testbed (`testbed.json` or its directory, re-read when it changes, so
replaced nodes' pids are current) or a targets file (YAML or JSON): `{"targets": [{"name":
..., "role": ..., "port": ..., "pid": ..., "peer_host": ..., "command": [argv to restart],
"expect": "program"}]}`.

Not for: anything off loopback, scheduling experiments, or Gremlin's scenarios and templates.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.responses import PlainTextResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict

from chaos.faults.base import FaultError, InjectedFault, NodeTarget
from chaos.faults.gremlin import MAX_LENGTH, programs_of
from chaos.faults.local import LocalFaultBackend
from common import input_files
from common.input_files import InputFileError
from common.nodes import PEER_HOST, Role, peer_host_of
from common.validation import header_secret_problem, quoted, validated
from ratequeue.errors import InvalidInput
from ratequeue.http_contract import (
    REASONS,
    ErrorShape,
    credential,
    error_responses,
    install_error_handlers,
    json_request_body,
    publish_contract,
    read_json_body,
    same_secret,
)

log = logging.getLogger(__name__)

DEFAULT_LENGTH = 60
LIFECYCLE = {
    "Pending": "NotStarted",
    "Distributed": "Active",
    "Running": "Active",
    "HaltRequested": "Active",
    "Successful": "Complete",
    "Halted": "Complete",
    "Failed": "Error",
}
TERMINAL = frozenset({"Successful", "Halted", "Failed"})


class AgentError(InvalidInput):
    """A request the agent refuses: HTTP status, the field at fault (if any), and why."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message, code=REASONS.get(status, "Error"), http_status=status)
        self.status = status
        self.field = field


class AgentErrorBody(BaseModel):
    """The agent's error envelope: the status's reason, why, and the request field at fault."""

    error: str
    message: str
    field: str | None = None


def _agent_error(status: int, code: str, message: str, field: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": REASONS.get(status, "Error"), "message": message}
    if field:
        body["field"] = field
    return body


AGENT_ERRORS = ErrorShape(AgentErrorBody, _agent_error)
MAX_BODY_BYTES = 64 * 1024


# ----------------------------------------------------------------------------- targets


class AgentTarget(BaseModel):
    """A node the agent may attack: where it is, and optionally how to restart it."""

    model_config = ConfigDict(extra="forbid")

    node: NodeTarget
    command: list[str] | None = None
    expect: str | None = None


class _TargetEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    role: Role
    shard: str | None = None
    host: str = "127.0.0.1"
    port: int
    peer_host: str | None = None
    pid: int | None = None
    command: list[str] | None = None
    expect: str | None = None


def load_targets(path: Path) -> dict[str, AgentTarget]:
    """Targets by identifier from a testbed (`testbed.json` or its directory) or a targets
    file (`targets:` list in YAML or JSON). Raises ValueError with the reason."""
    if path.is_dir():
        path = path / "testbed.json"
    expected = "a testbed.json or a 'targets:' list"
    data = input_files.load(path, expected=expected, shape=(dict, list))
    if isinstance(data, dict) and "nodes" in data:
        return _testbed_targets(data, path)
    entries = data.get("targets") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise InputFileError(f"{path}: expected {expected}")
    targets: dict[str, AgentTarget] = {}
    for index, raw in enumerate(entries):
        where = f"{path}: targets[{index}]"
        entry = validated(_TargetEntry, raw, where, error=InputFileError)
        fields = entry.model_dump(exclude={"command", "expect"})
        node = validated(NodeTarget, fields, where, error=InputFileError)
        targets[entry.name] = AgentTarget(node=node, command=entry.command, expect=entry.expect)
    return targets


def _testbed_targets(data: dict[str, Any], path: Path) -> dict[str, AgentTarget]:
    from chaos.testbed import TestbedState

    state = validated(TestbedState, data, str(path), error=InputFileError)
    targets = {}
    for node in state.nodes:
        peer = peer_host_of(node.role)
        targets[node.name] = AgentTarget(
            node=NodeTarget(
                name=node.name,
                role=node.role,
                shard=node.shard,
                host=node.host,
                port=node.port,
                peer_host=peer,
                pid=node.pid,
            )
        )
    return targets


class TargetSource:
    """A targets file, re-read whenever it changes (a testbed replaces nodes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._targets: dict[str, AgentTarget] = {}
        self._lock = threading.Lock()
        self.get_all()  # fail at start, not at the first attack

    def _file(self) -> Path:
        return self.path / "testbed.json" if self.path.is_dir() else self.path

    def get_all(self) -> dict[str, AgentTarget]:
        with self._lock:
            try:
                stat = self._file().stat()
                stamp = (stat.st_mtime, stat.st_size)
            except OSError:
                stamp = None
            if stamp is None or stamp != self._stamp:
                self._targets = load_targets(self.path)
                self._stamp = stamp
            return dict(self._targets)


# ----------------------------------------------------------------------------- commands


@dataclass
class Plan:
    """What an attack does on each target: a local action with its params."""

    type: str
    action: str
    length: int | None
    params: dict[str, Any] = field(default_factory=dict)
    reboot: bool = False
    process: str | None = None
    ports: list[int] | None = None
    hosts: list[str] | None = None


# flag -> (canonical name, takes a value)
_COMMON = {"-l": ("length", True), "--length": ("length", True)}
_FLAGS: dict[str, dict[str, tuple[str, bool]]] = {
    "process_killer": {
        **_COMMON,
        "-p": ("process", True), "--process": ("process", True),
        "-i": ("interval", True), "--interval": ("interval", True),
        "-g": ("group", True), "-u": ("user", True),
        "-e": ("exact", False), "--exact": ("exact", False),
        "-f": ("full", False), "--full": ("full", False),
        "-c": ("kill_children", False), "--kill_children": ("kill_children", False),
        "-n": ("newest", False), "--newest": ("newest", False),
        "-o": ("oldest", False), "--oldest": ("oldest", False),
    },
    "process_pause": {**_COMMON, "-p": ("process", True), "--process": ("process", True)},
    "shutdown": {
        "-d": ("delay", True), "--delay": ("delay", True),
        "-r": ("reboot", False), "--reboot": ("reboot", False),
    },
    "blackhole": {
        **_COMMON,
        "-p": ("egress_ports", True), "--egress_ports": ("egress_ports", True),
        "-n": ("ingress_ports", True), "--ingress_ports": ("ingress_ports", True),
        "-h": ("hostnames", True), "--hostnames": ("hostnames", True),
        "-i": ("ips", True), "--ipaddresses": ("ips", True),
        "-P": ("protocol", True), "--protocol": ("protocol", True),
        "-d": ("device", True), "--device": ("device", True),
    },
    "latency": {
        **_COMMON,
        "-m": ("ms", True), "--ms": ("ms", True),
        "-p": ("egress_ports", True), "--egress_ports": ("egress_ports", True),
        "-h": ("hostnames", True), "--hostnames": ("hostnames", True),
        "-i": ("ips", True), "--ipaddresses": ("ips", True),
        "-P": ("protocol", True), "--protocol": ("protocol", True),
        "-d": ("device", True), "--device": ("device", True),
    },
}  # fmt: skip
_ACTION = {
    "process_killer": "kill",
    "process_pause": "pause",
    "shutdown": "stop",
    "blackhole": "blackhole",
    "latency": "latency",
}


def _int(value: str, where: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise AgentError(400, f"{quoted(value)} is not an integer", where) from None
    if not low <= number <= high:
        raise AgentError(400, f"{quoted(number)} is outside {low}..{high}", where)
    return number


def _ports(value: str, where: str) -> list[int]:
    ports = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("^") or "-" in part:
            problem = f"port exclusions and ranges are not supported: {quoted(part)}"
            raise AgentError(400, problem, where)
        ports.append(_int(part, where, 1, 65535))
    return ports


def parse_command(command: Any) -> Plan:
    """Validate a Gremlin `command` object; raises AgentError(400) naming the field."""
    if not isinstance(command, dict):
        raise AgentError(400, "must be an object with 'type' and 'args'", "command")
    kind = command.get("type")
    if not isinstance(kind, str) or not kind:
        raise AgentError(400, "missing or not a string", "command.type")
    if kind not in _FLAGS:
        raise AgentError(
            400,
            f"unsupported attack type {quoted(kind)}; this agent runs {', '.join(sorted(_FLAGS))}",
            "command.type",
        )
    raw_args = command.get("args", [])
    if not isinstance(raw_args, list):
        raise AgentError(400, "must be a list of strings", "command.args")
    args: list[str] = []
    for index, arg in enumerate(raw_args):
        if isinstance(arg, bool) or not isinstance(arg, str | int | float):
            raise AgentError(400, "must be a string", f"command.args[{index}]")
        args.append(str(arg))
    # Gremlin's own payloads may repeat the attack type as the first CLI arg.
    if args and args[0] == kind:
        args = args[1:]
    flags = _FLAGS[kind]
    values: dict[str, str | bool] = {}
    index = 0
    while index < len(args):
        flag = args[index]
        where = f"command.args[{index}]"
        if flag not in flags:
            raise AgentError(400, f"unknown flag {quoted(flag)} for {kind}", where)
        name, takes_value = flags[flag]
        if takes_value:
            if index + 1 >= len(args):
                raise AgentError(400, f"{flag} needs a value", where)
            values[name] = args[index + 1]
            index += 2
        else:
            values[name] = True
            index += 1

    def arg(name: str) -> str | None:
        value = values.get(name)
        return value if isinstance(value, str) else None

    def where(name: str) -> str:
        flag = next(f for f, (n, _) in flags.items() if n == name)
        return f"command.args {flag}"

    length: int | None = None
    if kind != "shutdown":
        raw = arg("length")
        length = DEFAULT_LENGTH if raw is None else _int(raw, where("length"), 1, MAX_LENGTH)
    plan = Plan(type=kind, action=_ACTION[kind], length=length)
    if kind in ("process_killer", "process_pause"):
        plan.process = arg("process")
        if kind == "process_killer" and not plan.process:
            raise AgentError(400, "process_killer needs -p PROCESS", "command.args -p")
        if arg("interval") is not None:
            _int(arg("interval") or "", where("interval"), 1, MAX_LENGTH)
    elif kind == "shutdown":
        delay = _int(arg("delay") or "0", where("delay"), 0, 60 * 24)
        plan.params["delay_minutes"] = delay
        plan.reboot = bool(values.get("reboot"))
    else:
        protocol = arg("protocol")
        if protocol is not None and protocol.upper() != "TCP":
            raise AgentError(400, "only TCP traffic can be impacted here", where("protocol"))
        device = arg("device")
        if device is not None and device != "lo":
            raise AgentError(400, "only the loopback device 'lo' exists here", where("device"))
        ports: list[int] = []
        for name in ("egress_ports", "ingress_ports"):
            raw = arg(name)
            if raw is not None:
                ports += _ports(raw, where(name))
        plan.ports = sorted(set(ports)) or None
        hosts: list[str] = []
        for name in ("hostnames", "ips"):
            raw = arg(name)
            if raw is not None:
                for host in (h.strip() for h in raw.split(",") if h.strip()):
                    if host.startswith("^"):
                        raise AgentError(
                            400, f"exclusions are not supported: {quoted(host)}", where(name)
                        )
                    hosts.append(host)
        plan.hosts = sorted(set(hosts)) or None
        if kind == "latency":
            if arg("ms") is None:
                raise AgentError(400, "latency needs -m MILLISECONDS", "command.args -m")
            plan.params["latency_ms"] = _int(arg("ms") or "", where("ms"), 0, 600_000)
    return plan


def parse_target(target: Any) -> list[str]:
    """Host identifiers of an Exact target; raises AgentError(400) naming the field."""
    if not isinstance(target, dict):
        raise AgentError(400, "must be an object", "target")
    kind = target.get("type")
    if kind != "Exact":
        problem = f"only 'Exact' targets are supported, not {quoted(kind)}"
        raise AgentError(400, problem, "target.type")
    ids: Any = target.get("exact")
    where = "target.exact"
    if ids is None:
        for key in ("hosts", "containers"):
            if isinstance(target.get(key), dict) and "ids" in target[key]:
                ids, where = target[key]["ids"], f"target.{key}.ids"
                break
    if not isinstance(ids, list) or not ids:
        raise AgentError(400, "must be a non-empty list of host identifiers", where)
    for index, identifier in enumerate(ids):
        if not isinstance(identifier, str) or not identifier:
            raise AgentError(400, "must be a host identifier (string)", f"{where}[{index}]")
    return list(dict.fromkeys(ids))


# ----------------------------------------------------------------------------- attacks


@dataclass
class Attack:
    guid: str
    command: dict[str, Any]
    target: dict[str, Any]
    identifiers: list[str]
    plan: Plan
    nodes: list[AgentTarget]
    stage: str = "Pending"
    created_at: float = field(default_factory=time.time)
    start_time: float | None = None
    end_time: float | None = None
    output: str = ""
    stages: dict[str, str] = field(default_factory=dict)
    faults: list[InjectedFault] = field(default_factory=list)
    halt: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def view(self) -> dict[str, Any]:
        return {
            "guid": self.guid,
            "stage": self.stage,
            "stageLifecycle": LIFECYCLE.get(self.stage, "Active"),
            "command": self.command,
            "target": self.target,
            "targets": self.identifiers,
            "createdAt": _iso(self.created_at),
            "startTime": _iso(self.start_time),
            "endTime": _iso(self.end_time),
            "output": self.output or None,
            "source": "Adhoc",
        }

    def executions(self) -> list[dict[str, Any]]:
        return [
            {
                "guid": f"{self.guid}:{name}",
                "taskId": self.guid,
                "identifier": name,
                "stage": self.stages.get(name, self.stage),
                "stageLifecycle": LIFECYCLE.get(self.stages.get(name, self.stage), "Active"),
                "endTime": _iso(self.end_time),
                "output": self.output or None,
            }
            for name in self.identifiers
        ]


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp % 1 * 1000):03d}Z"


class Agent:
    """Attacks by guid, each run by its own thread through the local backend."""

    def __init__(
        self,
        *,
        api_key: str,
        allow: set[str] | frozenset[str],
        targets: TargetSource,
        backend: LocalFaultBackend | None = None,
        team_id: str | None = None,
        halt_wait: float = 10.0,
    ) -> None:
        if not api_key:
            raise ValueError("the agent needs an API key")
        problem = header_secret_problem(api_key)
        if problem:
            raise ValueError(f"the API key {problem}")
        self.api_key = api_key
        self.allow = frozenset(allow)
        self.targets = targets
        self.backend = backend or LocalFaultBackend()
        self.team_id = team_id or None
        self.halt_wait = halt_wait
        self.attacks: dict[str, Attack] = {}
        self._lock = threading.Lock()

    # -- checks

    def authorize(self, request: Request) -> None:
        if not same_secret(credential(request, "Key"), self.api_key):
            raise AgentError(401, "a valid 'Authorization: Key <API key>' header is required")
        if self.team_id and request.query_params.get("teamId") != self.team_id:
            raise AgentError(403, "teamId does not match this agent's team", "teamId")

    def create(self, body: Any) -> Attack:
        if not isinstance(body, dict):
            raise AgentError(400, "the body must be a JSON object with command and target", "body")
        for name in ("command", "target"):
            if name not in body:
                raise AgentError(400, "missing", name)
        identifiers = parse_target(body["target"])
        refused = [i for i in identifiers if i not in self.allow]
        if refused:
            raise AgentError(
                403, f"not on this agent's allowlist: {quoted(', '.join(refused))}", "target"
            )
        plan = parse_command(body["command"])
        try:
            known = self.targets.get_all()
        except ValueError as error:
            raise AgentError(400, f"the agent's targets file is unusable: {error}") from None
        nodes = []
        for index, identifier in enumerate(identifiers):
            if identifier not in known:
                raise AgentError(
                    400,
                    f"no such target {quoted(identifier)} in the targets file",
                    f"target.exact[{index}]",
                )
            nodes.append(known[identifier])
        for node in nodes:
            self._check_plan(plan, node)
        attack = Attack(
            guid=str(uuid.uuid4()),
            command=body["command"],
            target=body["target"],
            identifiers=identifiers,
            plan=plan,
            nodes=nodes,
        )
        with self._lock:
            self.attacks[attack.guid] = attack
        threading.Thread(
            target=self._run, args=(attack,), name=f"attack-{attack.guid[:8]}", daemon=True
        ).start()
        return attack

    def _check_plan(self, plan: Plan, target: AgentTarget) -> None:
        node = target.node
        if plan.process is not None:
            programs = (target.expect,) if target.expect else programs_of(node)
            if plan.process not in programs:
                runs = " or ".join(map(repr, programs))
                problem = f"{node.name} runs {runs}, not {quoted(plan.process)}"
                raise AgentError(400, problem, "command.args -p")
        if plan.action in ("blackhole", "latency"):
            bad = [p for p in plan.ports or [] if p != node.port]
            if bad:
                raise AgentError(
                    400,
                    f"{node.name} listens on {node.port} only; refusing ports {bad}",
                    "command.args -p",
                )
            peer = node.peer_host or PEER_HOST
            allowed = {peer} if plan.action == "latency" else {peer, node.host}
            for host in plan.hosts or []:
                if host not in allowed:
                    raise AgentError(
                        400,
                        f"{node.name} is reached at {sorted(allowed)} here, not {quoted(host)}",
                        "command.args -h",
                    )
        if plan.action == "stop" and plan.reboot and not target.command:
            raise AgentError(
                400, f"{node.name} has no restart command in the targets file", "command.args -r"
            )

    # -- running

    def _inject(self, attack: Attack, target: AgentTarget) -> list[InjectedFault]:
        plan, node = attack.plan, target.node
        params: dict[str, Any] = {}
        if plan.action in ("kill", "pause", "stop") and target.expect:
            params["expect"] = target.expect
        if plan.action in ("blackhole", "latency"):
            if "latency_ms" in plan.params:
                params["latency_ms"] = plan.params["latency_ms"]
            if plan.action == "blackhole" and plan.ports:
                params["ports"] = plan.ports
            hosts = plan.hosts or [node.peer_host or PEER_HOST]
            return [self.backend.inject(plan.action, node, peer_host=h, **params) for h in hosts]
        if plan.action == "stop" and target.command:
            params["command"] = target.command
        return [self.backend.inject(plan.action, node, **params)]

    def _run(self, attack: Attack) -> None:
        try:
            self._run_stages(attack)
        except Exception as error:  # never leave an attack without an end
            log.exception("attack %s failed", attack.guid)
            self._rollback(attack)
            self._finish(attack, "Failed", f"{type(error).__name__}: {error}")

    def _run_stages(self, attack: Attack) -> None:
        plan = attack.plan
        attack.stage = "Distributed"
        delay = plan.params.get("delay_minutes", 0) * 60
        if delay and attack.halt.wait(delay):
            self._finish(attack, "Halted", "halted before the shutdown")
            return
        for target in attack.nodes:
            if attack.halt.is_set():
                break
            try:
                attack.faults += self._inject(attack, target)
            except FaultError as error:
                attack.stages[target.node.name] = "Failed"
                self._rollback(attack)
                self._finish(attack, "Failed", str(error))
                return
            attack.stages[target.node.name] = "Running"
        attack.start_time = time.time()
        if plan.action == "stop":
            attack.stage = "Running"
            if plan.reboot:
                for fault in attack.faults:
                    fault.rollback()
            self._finish(attack, "Successful", "")
            return
        if not attack.halt.is_set():
            attack.stage = "Running"
        halted = attack.halt.wait(plan.length or DEFAULT_LENGTH)
        error = self._rollback(attack)
        if error:
            self._finish(attack, "Failed", f"rollback: {error}")
        else:
            self._finish(attack, "Halted" if halted else "Successful", "")

    def _rollback(self, attack: Attack) -> str:
        errors = []
        for fault in reversed(attack.faults):
            try:
                fault.rollback()
            except FaultError as error:
                errors.append(str(error))
        return "; ".join(errors)

    def _finish(self, attack: Attack, stage: str, output: str) -> None:
        attack.output = output
        attack.end_time = time.time()
        for name in attack.identifiers:
            if attack.stages.get(name) != "Failed":
                attack.stages[name] = stage
        attack.stage = stage
        attack.done.set()

    # -- queries and halts

    def get(self, guid: str) -> Attack:
        with self._lock:
            attack = self.attacks.get(guid)
        if attack is None:
            raise AgentError(404, f"no attack {quoted(guid)}")
        return attack

    def listing(self, which: str = "all") -> list[Attack]:
        with self._lock:
            attacks = sorted(self.attacks.values(), key=lambda a: a.created_at, reverse=True)
        if which == "active":
            return [a for a in attacks if a.stage not in TERMINAL]
        if which == "completed":
            return [a for a in attacks if a.stage in TERMINAL]
        return attacks

    def halt(self, guid: str, wait: float | None = None) -> Attack:
        attack = self.get(guid)
        if attack.stage not in TERMINAL:
            if attack.stage in ("Running", "Distributed"):
                attack.stage = "HaltRequested"
            attack.halt.set()
            attack.done.wait(self.halt_wait if wait is None else wait)
        return attack

    def halt_all(self, wait: float | None = None) -> list[Attack]:
        return [self.halt(a.guid, wait) for a in self.listing("active")]


# ----------------------------------------------------------------------------- the app

KEY_HEADER = APIKeyHeader(name="Authorization", scheme_name="apiKey", auto_error=False,
                          description="`Key <API key>`")  # fmt: skip
_IDS = {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}
# What `parse_command` and `parse_target` take, as published; they decide, naming the field.
ATTACK_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["command", "target"],
    "properties": {
        "command": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"enum": sorted(_FLAGS)},
                "args": {"type": "array", "items": {"type": ["string", "number"]},
                         "description": "the Gremlin CLI flags of the attack type"},
            },
        },
        "target": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"const": "Exact"},
                "exact": _IDS,
                "hosts": {"type": "object", "required": ["ids"], "properties": {"ids": _IDS}},
                "containers": {"type": "object", "required": ["ids"], "properties": {"ids": _IDS}},
            },
            "anyOf": [{"required": ["exact"]}, {"required": ["hosts"]},
                      {"required": ["containers"]}],
        },
    },
}  # fmt: skip


class AttackView(BaseModel):
    guid: str
    stage: str
    stageLifecycle: str
    command: dict[str, Any]
    target: dict[str, Any]
    targets: list[str]
    createdAt: str
    startTime: str | None
    endTime: str | None
    output: str | None
    source: str


class Execution(BaseModel):
    guid: str
    taskId: str
    identifier: str
    stage: str
    stageLifecycle: str
    endTime: str | None
    output: str | None


class Health(BaseModel):
    ok: bool
    active: int


def create_app(agent: Agent) -> FastAPI:
    """The HTTP API around `agent`; halts every active attack when the app shuts down."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await anyio.to_thread.run_sync(agent.halt_all)

    app = FastAPI(title="chaos agent (Gremlin-compatible attacks API)", lifespan=lifespan)
    app.state.agent = agent
    publish_contract(app, AGENT_ERRORS)
    install_error_handlers(app, AGENT_ERRORS)

    def authorized(request: Request, _: str | None = Security(KEY_HEADER)) -> None:
        agent.authorize(request)

    def v1(method: str, path: str, **options: Any) -> Callable[[Callable], Callable]:
        """Route `/v1{path}` behind the key. The key comes first (a dependency runs before the
        parameters are checked): a request without it learns nothing, not even what else is
        wrong with it."""
        return app.api_route(f"/v1{path}", methods=[method],
                             dependencies=[Depends(authorized)], **options)  # fmt: skip

    team = Query(None, description="the team of a team-scoped key (403 if it is not the agent's)")
    halting = {202: {"description": "halting: rolled back, or rolling back"}}

    def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
        return error_responses(AGENT_ERRORS, (401, 403, *statuses))

    @app.get("/healthz", response_model=Health)
    def healthz() -> dict[str, Any]:
        return {"ok": True, "active": len(agent.listing("active"))}

    guid_text = {"text/plain": {"schema": {"type": "string"}}}

    @v1(
        "POST",
        "/attacks/new",
        status_code=201,
        response_class=PlainTextResponse,
        openapi_extra=json_request_body(ATTACK_REQUEST),
        responses={201: {"description": "the new attack's guid", "content": guid_text},
                   **errors(400, 413)},
    )  # fmt: skip
    async def new_attack(request: Request, teamId: str | None = team) -> Response:
        try:
            body = await read_json_body(request, MAX_BODY_BYTES)
        except InvalidInput as error:
            raise AgentError(error.http_status, error.message, "body") from None
        attack = await anyio.to_thread.run_sync(agent.create, body)
        return PlainTextResponse(attack.guid, status_code=201)

    @v1("GET", "/attacks/active", response_model=list[AttackView], responses=errors())
    def active(teamId: str | None = team) -> list[dict[str, Any]]:
        return [a.view() for a in agent.listing("active")]

    @v1("GET", "/attacks/completed", response_model=list[AttackView], responses=errors())
    def completed(teamId: str | None = team) -> list[dict[str, Any]]:
        return [a.view() for a in agent.listing("completed")]

    @v1("GET", "/attacks", response_model=list[AttackView], responses=errors())
    def all_attacks(teamId: str | None = team) -> list[dict[str, Any]]:
        return [a.view() for a in agent.listing()]

    @v1("DELETE", "/attacks", status_code=202, response_class=Response,
               responses={**halting, **errors()})  # fmt: skip
    def halt_all(teamId: str | None = team) -> Response:
        agent.halt_all()
        return Response(status_code=202)

    @v1("GET", "/attacks/{guid}", response_model=AttackView, responses=errors(404))
    def get_attack(guid: str, teamId: str | None = team) -> dict[str, Any]:
        return agent.get(guid).view()

    @v1("DELETE", "/attacks/{guid}", status_code=202, response_class=Response,
               responses={**halting, **errors(404)})  # fmt: skip
    def halt_attack(guid: str, teamId: str | None = team) -> Response:
        agent.halt(guid)
        return Response(status_code=202)

    @v1("GET", "/executions", response_model=list[Execution], responses=errors(400, 404))
    def executions(
        taskId: str = Query(..., min_length=1, description="the attack's guid"),
        teamId: str | None = team,
    ) -> list[dict[str, Any]]:
        return agent.get(taskId).executions()

    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
