"""The gremlin fault backend: faults as attacks through Gremlin's REST API (or through
`ratequeue-chaos agent`, which serves the same shapes on loopback and runs them with the local
backend).

The API as used here, and where each part is published (SDK paths are in gremlin/gremlin-python
at bc3483f, `gremlinapi/`):

- Base URL `https://api.gremlin.com/v1`; every request carries `Authorization: Key <API key>`
  and, with a team-scoped key, the query parameter `teamId` (`config.py`; `gremlinapi.py`
  `_optional_team_endpoint`; https://www.gremlin.com/docs/api-reference/examples/).
- `POST /attacks` creates an attack and answers 201 with its guid as plain text. The older
  `POST /attacks/new` (still what gremlin-python's `attacks.py` `create_attack` posts to, and
  what https://www.gremlin.com/docs/api-reference/examples/ shows) is deprecated in Gremlin's
  API reference in favour of `POST /attacks` (issue 14); the body is the same.
- The body is `{"target": ..., "command": ...}` as `attack_helpers.py` `GremlinAttackHelper.
  api_model` writes it. A target of named hosts is `{"type": "Exact", "hosts": {"ids": [...]}}`
  and of named containers `{"type": "Exact", "containers": {"ids": [...]}}`
  (`GremlinTargetHosts.api_model`, `GremlinTargetContainers.api_model`). A command is
  `{"type": <short type>, "commandType": <display name>, "args": [CLI flags]}`
  (`GremlinAttackCommandHelper.api_model` and its `_typeMap`: `process_killer` → `Process
  Killer`, `cpu` → `CPU`, `blackhole` → `Blackhole`, `latency` → `Latency`, `shutdown` →
  `Shutdown`); every command starts with `-l LENGTH`, seconds, 1..31449600 (`length` setter).
- Command args (`attack_helpers.py`): `process_killer` (`GremlinProcessKillerAttack.api_model`):
  `-i INTERVAL` (seconds between kills, an integer of at least 1), `-p PROCESS` (required),
  `-e` (the name matches exactly, not as a substring), `-f` (match the full command line), `-n`
  / `-o` (newest / oldest matching process only); `shutdown -d DELAY` (minutes, at least 1) and
  `-r` (reboot) (`GremlinShutdownAttack`); `blackhole` / `latency` `-p` egress ports, `-n`
  ingress ports, `-h` hostnames, `-i` IPs, latency `-m MS` (`GremlinNetworkAttackHelper`,
  `GremlinBlackholeAttack`, `GremlinLatencyAttack`); `cpu -c CORES` or `-a`, `-p CAPACITY`
  (`GremlinCPUAttack`; Gremlin's "CPU Experiment" page: one thread per targeted core at
  normal priority).
- `GET /attacks/{guid}` answers the attack as Gremlin's `Task` schema: `guid`, `stage`,
  `stageLifecycle`, `command`, `target`, `targets`, `startTime`, `endTime`, ... (the Task model
  of Gremlin's published OpenAPI, as its generated client documents it). `DELETE
  /attacks/{guid}` halts one attack, `DELETE /attacks` every attack (`attacks.py`
  `halt_attack`, `halt_all_attacks`). `GET /executions?taskId={guid}` lists the attack's
  executions, one per target (`executions.py` `list_executions`;
  https://www.gremlin.com/docs/viewing-experiment-execution-details).
- Stages are the Task schema's `stage` enum: `Pending`, `Distributed`, `Initializing`,
  `Running`, `HaltDistributed`, `TearingDown`, `Successful`, `UserHalted`, `Failed`,
  `InvalidArgument`, `TargetNotFound`, `ClientAborted`, `LostCommunication`,
  `InitializationFailed`, `TeardownFailed`, `HaltFailed`, ... A halted attack ends in stage
  `UserHalted`; an attack that ran its length in `Successful` (the executions page shows
  `Pending → Distributed → Initializing → Running → TearingDown → Successful`).
  `stageLifecycle` says where the attack is: `NotStarted`, `Active`, `Complete` or `Error`,
  and `Complete`/`Error` mean it has finished (issue 14, from Gremlin's attacks API reference;
  the Task schema types it as a string). This client therefore decides "finished" by the
  lifecycle and "failed" by an `Error` lifecycle, and never waits for a stage name.

Action mapping (`GremlinFaultBackend.command_for`):

- kill → `process_killer -l 1 -i 1 -p <program> -e` (param `process`, default the node's
  program: `redis-server` for Redis roles): one kill of the process named exactly so, in an
  attack one interval long, so the node is killed once and stays down (the controllers, not
  Gremlin, decide what comes back). Gremlin matches the name on the target host, so the host
  must run one such process; `ratequeue-chaos agent` checks the name against the node's program and
  kills that node's pid only.
- stop → `shutdown -d DELAY` (minutes, param `delay`, default 0; gremlin-python allows only 1
  or more, so pass `delay=1` against the real API).
- pause → `process_pause -p <program>`: an extension of `ratequeue-chaos agent`; Gremlin has no
  pause attack, so against the real API this fails with the API's 400.
- blackhole → `blackhole -p PORTS -n PORTS -h PEER_HOST` (params `ports`, `peer_host`).
- latency → `latency -m MS -p PORTS -h PEER_HOST` (param `latency_ms`).
- cpu → `cpu -c CORES` (param `cores`), or `cpu -a` (every core) without it.

Every attack but kill and shutdown gets `-l` from `length` or `seconds` (default
`default_length`, 300 s; rounded up to whole seconds, so a short fault never becomes 0 s), so
a forgotten attack ends by itself. The target is `NodeTarget.gremlin` or `{"type": "Exact",
"hosts": {"ids": [target.name]}}`. inject() returns once the attack is Running or has finished
well (a kill may be over before the first poll); undo halts it and waits, at most
`halt_timeout`, until its lifecycle is `Complete` or `Error`. Every wait is bounded.

Not for: Gremlin scenarios, templates, Kubernetes targets, or the Gremlin agent install.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from chaos.errors import FaultError, GremlinError
from chaos.faults.base import InjectedFault, NodeTarget, check_cores, check_length, whole_seconds
from common.nodes import PEER_HOST, PROGRAMS_OF_ROLE

DEFAULT_API_URL = "https://api.gremlin.com/v1"
# The Task schema's `stage` values this client acts on (the rest only matter through the
# lifecycle: see the module docstring).
RUNNING = "Running"
SUCCESSFUL = "Successful"
USER_HALTED = "UserHalted"
# `stageLifecycle` values that mean the attack has finished.
COMPLETE = "Complete"
ERROR = "Error"
FINISHED_LIFECYCLES = frozenset({COMPLETE, ERROR})
MAX_LENGTH = 31_449_600  # attack_helpers.py `length` setter: about one year in seconds
# attack_helpers.py `GremlinAttackCommandHelper._typeMap`: short type → commandType.
COMMAND_TYPES = {
    "process_killer": "Process Killer",
    "shutdown": "Shutdown",
    "blackhole": "Blackhole",
    "latency": "Latency",
    "cpu": "CPU",
    "process_pause": "Process Pause",  # chaos agent's own; Gremlin has no pause attack
}


class AttackState(BaseModel):
    """Where an attack is, as `GET /attacks/{guid}` reports it (the Task schema's fields this
    client reads; the others are kept unread)."""

    model_config = ConfigDict(extra="allow")

    guid: str = ""
    stage: str = ""
    stageLifecycle: str = ""
    output: str | None = None

    @property
    def finished(self) -> bool:
        return self.stageLifecycle in FINISHED_LIFECYCLES

    @property
    def failed(self) -> bool:
        return self.stageLifecycle == ERROR

    @property
    def running(self) -> bool:
        return self.stage == RUNNING and not self.finished


def command(kind: str, args: list[str]) -> dict[str, Any]:
    """A command as gremlin-python's `GremlinAttackCommandHelper.api_model` writes it."""
    return {"type": kind, "commandType": COMMAND_TYPES[kind], "args": args}


def hosts_target(*identifiers: str) -> dict[str, Any]:
    """Named hosts as gremlin-python's `GremlinTargetHosts.api_model` writes them."""
    return {"type": "Exact", "hosts": {"ids": list(identifiers)}}


class GremlinClient:
    """The attacks part of Gremlin's REST API, with an API key (`Authorization: Key ...`)."""

    def __init__(
        self,
        api_key: str,
        *,
        team_id: str | None = None,
        base_url: str = DEFAULT_API_URL,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not api_key:
            raise GremlinError("no Gremlin API key")
        self.team_id = team_id or None
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Key {api_key}", "X-Gremlin-Agent": "ratequeue-chaos"},
            timeout=timeout,
            transport=transport,
        )

    @classmethod
    def from_env(cls, **kwargs: Any) -> GremlinClient:
        """GREMLIN_API_KEY, GREMLIN_TEAM_ID and GREMLIN_API_URL (default the real API)."""
        return cls(
            os.environ.get("GREMLIN_API_KEY", ""),
            team_id=os.environ.get("GREMLIN_TEAM_ID") or None,
            base_url=os.environ.get("GREMLIN_API_URL") or DEFAULT_API_URL,
            **kwargs,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GremlinClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self, method: str, path: str, params: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        query = dict(params or {})
        if self.team_id:
            query["teamId"] = self.team_id
        try:
            response = self._http.request(method, path, params=query, **kwargs)
        except httpx.HTTPError as error:
            raise GremlinError(f"{method} {path}: {error}") from error
        if response.status_code >= 400:
            raise GremlinError(
                f"{method} {path}: HTTP {response.status_code}: {response.text[:300]}",
                response.status_code,
            )
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as error:
            raise GremlinError(f"{method} {path}: not JSON: {response.text[:200]}") from error

    def create_attack(self, command: dict[str, Any], target: dict[str, Any]) -> str:
        """Create an attack (`POST /attacks`); returns its guid."""
        response = self._request("POST", "/attacks", json={"target": target, "command": command})
        guid = response.text.strip().strip('"')
        if not guid:
            raise GremlinError("POST /attacks: empty answer, no attack guid")
        return guid

    def get_attack(self, guid: str) -> dict[str, Any]:
        body = self._json("GET", f"/attacks/{guid}")
        if not isinstance(body, dict):
            raise GremlinError(f"GET /attacks/{guid}: unexpected answer {body!r:.200}")
        return body

    def state(self, guid: str) -> AttackState:
        """The attack's stage and lifecycle."""
        try:
            return AttackState.model_validate(self.get_attack(guid))
        except ValidationError as error:
            raise GremlinError(f"GET /attacks/{guid}: {error.errors()[0]['msg']}") from None

    def stage(self, guid: str) -> str:
        return self.state(guid).stage

    def executions(self, guid: str) -> list[dict[str, Any]]:
        """The attack's executions, one per target (`GET /executions?taskId=`)."""
        body = self._json("GET", "/executions", params={"taskId": guid})
        if not isinstance(body, list):
            raise GremlinError(f"GET /executions: expected a list, got {body!r:.200}")
        return body

    def halt_attack(self, guid: str) -> None:
        self._request("DELETE", f"/attacks/{guid}")

    def halt_all(self) -> None:
        self._request("DELETE", "/attacks")

    def wait_until_running(self, guid: str, timeout: float, interval: float = 0.2) -> AttackState:
        """Poll until the attack is Running or has finished; raises GremlinError after
        `timeout` seconds."""
        return self._wait(guid, lambda s: s.running or s.finished, "running", timeout, interval)

    def wait_until_finished(self, guid: str, timeout: float, interval: float = 0.2) -> AttackState:
        """Poll until the attack's lifecycle is Complete or Error; raises GremlinError after
        `timeout` seconds."""
        return self._wait(guid, lambda s: s.finished, "finished", timeout, interval)

    def _wait(
        self,
        guid: str,
        done: Callable[[AttackState], bool],
        wanted: str,
        timeout: float,
        interval: float,
    ) -> AttackState:
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(guid)
            if done(state):
                return state
            if time.monotonic() >= deadline:
                raise GremlinError(
                    f"attack {guid}: not {wanted} after {timeout} s (stage "
                    f"{state.stage or 'unknown'}, lifecycle {state.stageLifecycle or 'unknown'})"
                )
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def programs_of(target: NodeTarget) -> tuple[str, ...]:
    """The names the target's program goes by; the first is the one an attack names."""
    return PROGRAMS_OF_ROLE.get(target.role, (target.name,))


class GremlinFaultBackend:
    """Faults as Gremlin attacks: create, wait until Running, halt on rollback."""

    name = "gremlin"
    ACTIONS = frozenset({"kill", "pause", "stop", "blackhole", "latency", "cpu"})

    def __init__(
        self,
        client: GremlinClient | None = None,
        *,
        default_length: int = 300,
        start_timeout: float = 60.0,
        halt_timeout: float = 60.0,
        poll_interval: float = 0.2,
    ) -> None:
        self.client = client or GremlinClient.from_env()
        self.default_length = default_length
        self.start_timeout = start_timeout
        self.halt_timeout = halt_timeout
        self.poll_interval = poll_interval

    @classmethod
    def from_env(cls, **kwargs: Any) -> GremlinFaultBackend:
        """A backend on `GremlinClient.from_env()` (GREMLIN_API_KEY, GREMLIN_TEAM_ID,
        GREMLIN_API_URL); raises GremlinError when there is no API key."""
        return cls(GremlinClient.from_env(), **kwargs)

    def supports(self, action: str) -> bool:
        return action in self.ACTIONS

    def command_for(self, action: str, target: NodeTarget, **params: Any) -> dict[str, Any]:
        """The Gremlin command JSON for `action` on `target` (see the module docstring)."""
        process = params.get("process") or programs_of(target)[0]
        if action == "kill":
            # One interval in a one-interval attack: a single kill (`-i` is the SDK's interval).
            return command("process_killer", ["-l", "1", "-i", "1", "-p", process, "-e"])
        if action == "stop":
            # shutdown has no length in Gremlin: it ends when the target is down.
            return command("shutdown", ["-d", str(int(params.get("delay", 0)))])
        length = params.get("length", params.get("seconds"))
        if action == "cpu" and length is not None:
            length = check_length(length)  # the cpu bounds every backend shares
        # Rounded up: Gremlin takes whole seconds, and a short fault must not become 0 s.
        length = self.default_length if length is None else whole_seconds(float(length))
        if not 1 <= length <= MAX_LENGTH:
            raise FaultError(f"attack length must be 1..{MAX_LENGTH} s, not {length}")
        args = ["-l", str(length)]
        peer = params.get("peer_host") or target.peer_host or PEER_HOST
        ports = ",".join(str(p) for p in (params.get("ports") or [target.port]))
        if action == "pause":
            return command("process_pause", [*args, "-p", process])
        if action == "blackhole":
            return command("blackhole", [*args, "-p", ports, "-n", ports, "-h", peer])
        if action == "latency":
            if "latency_ms" not in params:
                raise FaultError("latency needs latency_ms")
            ms = int(float(params["latency_ms"]))
            return command("latency", [*args, "-m", str(ms), "-p", ports, "-h", peer])
        if action == "cpu":
            cores = check_cores(params.get("cores"))
            if cores is None:
                return command("cpu", [*args, "-a"])
            return command("cpu", [*args, "-c", str(cores)])
        raise FaultError(f"gremlin backend: unsupported action {action!r}")

    def target_for(self, target: NodeTarget) -> dict[str, Any]:
        return dict(target.gremlin) if target.gremlin else hosts_target(target.name)

    def inject(self, action: str, target: NodeTarget, **params: Any) -> InjectedFault:
        if not self.supports(action):
            raise FaultError(f"gremlin backend: unsupported action {action!r}")
        attack_command = self.command_for(action, target, **params)
        gremlin_target = self.target_for(target)
        guid = self.client.create_attack(attack_command, gremlin_target)
        fault = InjectedFault(action=action, target=target, backend=self.name,
                              details={"attack": guid, "command": attack_command,
                                       "target": gremlin_target})  # fmt: skip
        try:
            state = self.client.wait_until_running(guid, self.start_timeout, self.poll_interval)
        except GremlinError:
            self._halt_quietly(guid)
            raise
        fault.details["stage"] = state.stage
        fault.details["lifecycle"] = state.stageLifecycle
        if state.failed or (state.finished and state.stage != SUCCESSFUL):
            output = self._failure_output(guid, state)
            raise FaultError(f"attack {guid} ({attack_command['type']} on {target.name}): "
                             f"{state.stage}{': ' + output if output else ''}")  # fmt: skip

        def undo() -> None:
            try:
                self.client.halt_attack(guid)
            except GremlinError as error:
                # Halting an attack that already finished may be refused; that is done, too.
                if not 400 <= error.status < 500 or not self.client.state(guid).finished:
                    raise
            ended = self.client.wait_until_finished(guid, self.halt_timeout, self.poll_interval)
            fault.details["stage"] = ended.stage
            fault.details["lifecycle"] = ended.stageLifecycle
            if ended.failed:
                output = self._failure_output(guid, ended)
                raise FaultError(f"attack {guid}: halting ended in {ended.stage}"
                                 f"{': ' + output if output else ''}")  # fmt: skip

        fault.undo = undo
        return fault

    def _halt_quietly(self, guid: str) -> None:
        with contextlib.suppress(GremlinError):
            self.client.halt_attack(guid)

    def _failure_output(self, guid: str, state: AttackState) -> str:
        """What the attack or its executions say went wrong ("" when nothing)."""
        if state.output:
            return state.output[:300]
        try:
            executions = self.client.executions(guid)
        except GremlinError:
            return ""
        said = [str(e.get("output") or "") for e in executions if isinstance(e, dict)]
        return "; ".join(s for s in said if s)[:300]
