"""Gremlin's attack commands and targets as the agent takes them: `parse_command` turns a
`{"type", "args"}` command (Gremlin's CLI flags) into a `Plan`, `parse_target` an Exact target
into host identifiers, each refusing with AgentError(400) naming the field; `ATTACK_REQUEST` is
what both take, as published.

Not for: whether a plan may touch a given node (`execution.check_plan`), or running it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from chaos.errors import AgentError
from chaos.faults.base import CPU_MAX_CORES, CPU_MAX_LENGTH, DEFAULT_LENGTH
from chaos.faults.gremlin import COMMAND_TYPES, MAX_LENGTH
from common.validation import quoted


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
    # gremlin-python `GremlinCPUAttack`: -c cores, -a all cores, -p capacity (percent). Short
    # flags only: no published source gives the CLI's long names for these.
    "cpu": {**_COMMON, "-c": ("cores", True), "-a": ("all_cores", False), "-p": ("capacity", True)},
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
    "cpu": "cpu",
}


# Gremlin's CLI reads its numbers with Go's strconv.Atoi: ASCII digits, an optional sign, nothing
# else. Python's int() takes more (other scripts' digits: '٨٠' is 80; '8_0'; spaces around), so a
# flag it would take is not one Gremlin would.
_INTEGER = re.compile(r"[+-]?[0-9]+")


def _int(value: str, where: str, low: int, high: int) -> int:
    if not _INTEGER.fullmatch(value):
        problem = f"{quoted(value)} is not an integer (ASCII digits 0-9, as Gremlin's CLI takes)"
        raise AgentError(400, problem, where)
    if len(value.lstrip("+-").lstrip("0")) > 19:
        # Past int64 (Atoi refuses it too), and Python converts no more than 4,300 digits.
        raise AgentError(400, f"{quoted(value)} is outside {low}..{high}", where)
    digits = value.lstrip("+-").lstrip("0") or "0"  # int() counts leading zeros against its limit
    number = -int(digits) if value.startswith("-") else int(digits)
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
    command_type = command.get("commandType")
    if command_type is not None and command_type != COMMAND_TYPES[kind]:
        expected = COMMAND_TYPES[kind]
        problem = f"{quoted(command_type)} is not the commandType of {kind}: {expected!r}"
        raise AgentError(400, problem, "command.commandType")
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
    elif kind == "cpu":
        # The local busy loops take a whole core each: no fraction of one.
        capacity = arg("capacity")
        if capacity is not None and _int(capacity, where("capacity"), 1, 100) != 100:
            raise AgentError(400, "only whole cores (-p 100) can be loaded here", where("capacity"))
        cores = arg("cores")
        if cores is not None and values.get("all_cores"):
            raise AgentError(400, "-c and -a exclude each other", where("cores"))
        # Gremlin's default is one core; -a, every core of the host (the backend's default).
        if not values.get("all_cores"):
            plan.params["cores"] = _int(cores or "1", where("cores"), 1, CPU_MAX_CORES)
        if plan.length is not None and plan.length > CPU_MAX_LENGTH:
            # The cpu fault's own bound on every backend (the loops of a day at most).
            raise AgentError(400, f"{plan.length} is outside 1..{CPU_MAX_LENGTH}", where("length"))
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
    """Host identifiers of an Exact target; raises AgentError(400) naming the field.

    gremlin-python (`GremlinTargetHosts.api_model`, `GremlinTargetContainers.api_model`) names
    hosts under `hosts.ids` and containers under `containers.ids`, and sends `exact` as a
    count (a string); the Concord plugin sends the identifiers as an `exact` list."""
    if not isinstance(target, dict):
        raise AgentError(400, "must be an object", "target")
    kind = target.get("type")
    if kind != "Exact":
        problem = f"only 'Exact' targets are supported, not {quoted(kind)}"
        raise AgentError(400, problem, "target.type")
    ids: Any = None
    where = "target.hosts.ids"
    for key in ("hosts", "containers"):
        if isinstance(target.get(key), dict) and "ids" in target[key]:
            ids, where = target[key]["ids"], f"target.{key}.ids"
            break
    if ids is None and isinstance(target.get("exact"), list):
        ids, where = target["exact"], "target.exact"
    if not isinstance(ids, list) or not ids:
        raise AgentError(400, "must be a non-empty list of host identifiers", where)
    for index, identifier in enumerate(ids):
        if not isinstance(identifier, str) or not identifier:
            raise AgentError(400, "must be a host identifier (string)", f"{where}[{index}]")
    return list(dict.fromkeys(ids))


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
                "commandType": {"enum": sorted(set(COMMAND_TYPES.values())),
                                "description": "gremlin-python's name of the type"},
                "args": {"type": "array", "items": {"type": ["string", "number"]},
                         "description": "the Gremlin CLI flags of the attack type"},
            },
            # A commandType, when given, is the type's own.
            "anyOf": [{"properties": {"type": {"const": kind},
                                      "commandType": {"const": COMMAND_TYPES[kind]}}}
                      for kind in sorted(_FLAGS)],
        },
        "target": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"const": "Exact"},
                "exact": {"anyOf": [_IDS, {"type": "string"}],
                          "description": "identifiers, or gremlin-python's count (ignored)"},
                "hosts": {"type": "object", "required": ["ids"], "properties": {"ids": _IDS}},
                "containers": {"type": "object", "required": ["ids"], "properties": {"ids": _IDS}},
            },
            "anyOf": [{"required": ["hosts"]}, {"required": ["containers"]},
                      {"required": ["exact"], "properties": {"exact": _IDS}}],
        },
    },
}  # fmt: skip
