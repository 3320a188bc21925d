"""The gremlin fault backend: faults as attacks through Gremlin's REST API (or through
`chaos agent`, which serves the same shape on loopback and runs them with the local backend).

The API as used here, and where it comes from:

- Base URL `https://api.gremlin.com/v1`; every request carries `Authorization: Key <API key>`
  and, with a team-scoped key, the query parameter `teamId` (chaostoolkit-gremlin
  `chaosgremlin/__init__.py` `GREMLIN_BASE_URL` and `auth_key`, its README on
  `GREMLIN_TEAM_ID`; walmartlabs/concord-plugins `tasks/gremlin/.../GremlinClient.java`).
- `POST /attacks/new` with `{"command": {"type": ..., "args": [...]}, "target": {...}}` creates
  an attack and answers 201 with the attack's guid as plain text (chaostoolkit-gremlin
  `chaosgremlin/actions.py`; concord `Utils.createAttackOnHosts`, success code 201). Targets by
  host identifier: `{"type": "Exact", "exact": ["<identifier>", ...]}` (concord
  `Utils.createAttackOnHosts`); gremlin/gremlin-python `attack_helpers.py` also writes
  `{"type": "Exact", "hosts": {"ids": [...]}}` and `{"type": "Random", "percent": N, ...}`.
- Command args are the Gremlin CLI flags (gremlin-python `attack_helpers.py`, concord
  `NetworkAttacks.java` / `StateAttacks.java`): every attack `-l LENGTH` (seconds, 1..31449600,
  default 60); `latency -m MS`, `-p` egress ports, `-h` hostnames, `-i` IP addresses, `-s`
  source ports; `blackhole -p` egress ports, `-n` ingress ports, `-h`, `-i`; `process_killer
  -p PROCESS -i INTERVAL` (`--exact`, `--full`, ...); `shutdown -d DELAY` (`-r`: reboot);
  `cpu -c CORES` (default 1) or `-a` (all cores), `-p CAPACITY` (percent of each core, 1..100,
  default 100) (gremlin-python `attack_helpers.py` `GremlinCPUAttack`: shortType `cpu`,
  `_cores` `['-c', int]`, `_all_cores` `['-a']`, `_capacity` `['-p', int]`; Gremlin's docs page
  "CPU Experiment", gremlin.com/docs/infrastructure-layer/attacks/cpu: one thread per targeted
  core, at normal priority, so the OS scheduler still balances it with every other process).
- `GET /attacks/{guid}` gives the attack, `DELETE /attacks/{guid}` halts it (202 in concord's
  `Utils.halt`), `DELETE /attacks` halts all (gremlin-python `attacks.py`). Per-target status
  comes from `GET /executions?taskId={guid}` as `[{guid, stage, stageLifecycle, endTime,
  output}]`, and a `stageLifecycle` of `Error` is a failure (spinnaker/orca
  `orca-integrations-gremlin` `GremlinService` and `MonitorGremlinAttackTask`).
- Stage names: `Pending`, `Distributed`, `Running`, `Successful`, `Failed`, `Halted` (and
  `HaltRequested` on the way to `Halted`) are the ones this client relies on; none of the
  sources above lists them all, so they are an assumption checked only against `chaos agent`.
  Besides the stages in `TERMINAL_STAGES`, a `stageLifecycle` of `Error` ends the wait as a
  failure.

Action mapping (`GremlinFaultBackend.inject`):

- kill → `process_killer -i 1 -p <program>` (param `process`, default the node's program:
  `redis-server` for Redis roles). Gremlin keeps killing for the attack's length.
- stop → `shutdown -d DELAY` (minutes, param `delay`, default 0; gremlin-python allows only 1
  or more, so pass `delay=1` against the real API).
- pause → `process_pause -p <program>`: an extension of `chaos agent`; Gremlin has no pause
  attack, so against the real API this fails with the API's 400.
- blackhole → `blackhole -p PORTS -n PORTS -h PEER_HOST` (params `ports`, `peer_host`).
- latency → `latency -m MS -p PORTS -h PEER_HOST` (param `latency_ms`).
- cpu → `cpu -c CORES` (param `cores`), or `cpu -a` (every core) without it; the load is on
  the target's host, whichever node of it is named.

Every attack but shutdown gets `-l` from `length` or `seconds` (default `default_length`,
300 s; rounded up to whole seconds, so a short fault never becomes 0 s), so a forgotten attack
ends by itself. The target is `NodeTarget.gremlin` or
`{"type": "Exact", "exact": [target.name]}`. inject() returns once the attack is Running (or
already Successful); undo halts it and waits until the API reports it ended.

Not for: Gremlin scenarios, templates, Kubernetes targets, or the Gremlin agent install.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import httpx

from chaos.errors import FaultError, GremlinError
from chaos.faults.base import InjectedFault, NodeTarget, check_cores, check_length, whole_seconds
from common.nodes import PEER_HOST, PROGRAMS_OF_ROLE

DEFAULT_API_URL = "https://api.gremlin.com/v1"
ACTIVE_STAGES = frozenset({"Running"})
TERMINAL_STAGES = frozenset({"Successful", "Failed", "Halted", "TargetNotFound"})
FAILED_STAGES = frozenset({"Failed", "TargetNotFound"})
FAILED_LIFECYCLE = "Error"
MAX_LENGTH = 31_449_600  # gremlin-python's bound: about one year in seconds


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

    def _params(self, **extra: str) -> dict[str, str]:
        params = dict(extra)
        if self.team_id:
            params["teamId"] = self.team_id
        return params

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, params=self._params(), **kwargs)
        except httpx.HTTPError as error:
            raise GremlinError(f"{method} {path}: {error}") from error
        if response.status_code >= 400:
            raise GremlinError(
                f"{method} {path}: HTTP {response.status_code}: {response.text[:300]}",
                response.status_code,
            )
        return response

    def create_attack(self, command: dict[str, Any], target: dict[str, Any]) -> str:
        """Create an attack; returns its guid."""
        response = self._request("POST", "/attacks/new",
                                 json={"command": command, "target": target})  # fmt: skip
        guid = response.text.strip().strip('"')
        if not guid:
            raise GremlinError("POST /attacks/new: empty answer, no attack guid")
        return guid

    def get_attack(self, guid: str) -> dict[str, Any]:
        response = self._request("GET", f"/attacks/{guid}")
        try:
            body = response.json()
        except ValueError as error:
            raise GremlinError(f"GET /attacks/{guid}: not JSON: {response.text[:200]}") from error
        if not isinstance(body, dict):
            raise GremlinError(f"GET /attacks/{guid}: unexpected answer {body!r:.200}")
        return body

    def stage(self, guid: str) -> str:
        return str(self.get_attack(guid).get("stage", ""))

    def state(self, guid: str) -> tuple[str, str]:
        """(stage, stageLifecycle) of an attack."""
        attack = self.get_attack(guid)
        return str(attack.get("stage", "")), str(attack.get("stageLifecycle", ""))

    def executions(self, guid: str) -> list[dict[str, Any]]:
        try:
            response = self._http.get("/executions", params=self._params(taskId=guid))
        except httpx.HTTPError as error:
            raise GremlinError(f"GET /executions: {error}") from error
        if response.status_code >= 400:
            raise GremlinError(f"GET /executions: HTTP {response.status_code}",
                               response.status_code)  # fmt: skip
        body = response.json()
        return body if isinstance(body, list) else []

    def halt_attack(self, guid: str) -> None:
        self._request("DELETE", f"/attacks/{guid}")

    def halt_all(self) -> None:
        self._request("DELETE", "/attacks")

    def wait_for_stage(
        self, guid: str, wanted: frozenset[str] | set[str], timeout: float, interval: float = 0.2
    ) -> str:
        """Poll until the stage is in `wanted` or terminal; returns it. Raises GremlinError on
        timeout."""
        deadline = time.monotonic() + timeout
        while True:
            stage, lifecycle = self.state(guid)
            if stage in wanted or stage in TERMINAL_STAGES:
                return stage
            if lifecycle == FAILED_LIFECYCLE:
                return stage or "Failed"
            if time.monotonic() > deadline:
                raise GremlinError(f"attack {guid}: still {stage or 'unknown'} after {timeout} s")
            time.sleep(interval)


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
        process = params.get("process") or programs_of(target)[0]
        if action == "kill":
            return {"type": "process_killer", "args": [*args, "-i", "1", "-p", process]}
        if action == "pause":
            return {"type": "process_pause", "args": [*args, "-p", process]}
        if action == "stop":
            # shutdown has no length in Gremlin: it ends when the target is down.
            return {"type": "shutdown", "args": ["-d", str(int(params.get("delay", 0)))]}
        if action == "blackhole":
            return {"type": "blackhole", "args": [*args, "-p", ports, "-n", ports, "-h", peer]}
        if action == "latency":
            if "latency_ms" not in params:
                raise FaultError("latency needs latency_ms")
            ms = int(float(params["latency_ms"]))
            return {"type": "latency", "args": [*args, "-m", str(ms), "-p", ports, "-h", peer]}
        if action == "cpu":
            cores = check_cores(params.get("cores"))
            if cores is None:
                return {"type": "cpu", "args": [*args, "-a"]}
            return {"type": "cpu", "args": [*args, "-c", str(cores)]}
        raise FaultError(f"gremlin backend: unsupported action {action!r}")

    def target_for(self, target: NodeTarget) -> dict[str, Any]:
        return dict(target.gremlin) if target.gremlin else {"type": "Exact",
                                                             "exact": [target.name]}  # fmt: skip

    def inject(self, action: str, target: NodeTarget, **params: Any) -> InjectedFault:
        if not self.supports(action):
            raise FaultError(f"gremlin backend: unsupported action {action!r}")
        command = self.command_for(action, target, **params)
        gremlin_target = self.target_for(target)
        guid = self.client.create_attack(command, gremlin_target)
        fault = InjectedFault(action=action, target=target, backend=self.name,
                              details={"attack": guid, "command": command,
                                       "target": gremlin_target})  # fmt: skip
        try:
            stage = self.client.wait_for_stage(guid, ACTIVE_STAGES, self.start_timeout,
                                               self.poll_interval)  # fmt: skip
        except GremlinError:
            self._halt_quietly(guid)
            raise
        fault.details["stage"] = stage
        if stage in FAILED_STAGES or stage not in ACTIVE_STAGES | TERMINAL_STAGES:
            output = self._failure_output(guid)
            raise FaultError(f"attack {guid} ({command['type']} on {target.name}): {stage}"
                             f"{': ' + output if output else ''}")  # fmt: skip

        def undo() -> None:
            try:
                self.client.halt_attack(guid)
            except GremlinError as error:
                # Halting an attack that already ended may be refused; that is done, too.
                if not 400 <= error.status < 500 or self.client.stage(guid) not in TERMINAL_STAGES:
                    raise
            fault.details["stage"] = self.client.wait_for_stage(
                guid, TERMINAL_STAGES, self.halt_timeout, self.poll_interval
            )

        fault.undo = undo
        return fault

    def _halt_quietly(self, guid: str) -> None:
        with contextlib.suppress(GremlinError):
            self.client.halt_attack(guid)

    def _failure_output(self, guid: str) -> str:
        try:
            attack = self.client.get_attack(guid)
        except GremlinError:
            return ""
        return str(attack.get("output") or "")[:300]
