"""The agent as a typed object, HTTP aside: its API key, team, allowlist and targets, and the
attacks by guid. `create` runs every check a request needs before anything is done (the key is
`authorize`'s), then carries the attack out on a thread of its own; `get`, `listing`, `halt` and
`halt_all` answer and stop them. Every refusal is an AgentError with its status and field.

Not for: HTTP (`app` is a thin layer over this), command shapes (`commands`), or how an attack
is carried out (`execution`).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any, Literal

from chaos.agent.attacks import Attack
from chaos.agent.commands import parse_command, parse_target
from chaos.agent.execution import carry_out, check_plan
from chaos.agent.targets import TargetSource
from chaos.errors import AgentError
from chaos.faults.local.backend import LocalFaultBackend
from common.http_contract import same_secret
from common.validation import header_secret_problem, quoted

Listing = Literal["all", "active", "completed"]


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

    def authorize(self, key: str | None, team_id: str | None) -> None:
        """Refuse (401) a request without this agent's key, (403) one for another team."""
        if not same_secret(key, self.api_key):
            raise AgentError(401, "a valid 'Authorization: Key <API key>' header is required")
        if self.team_id and team_id != self.team_id:
            raise AgentError(403, "teamId does not match this agent's team", "teamId")

    def create(self, body: Any) -> Attack:
        """Check a request body (shape, allowlist, command, targets) and start its attack."""
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
            check_plan(plan, node)
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
            target=carry_out,
            args=(attack, self.backend),
            name=f"attack-{attack.guid[:8]}",
            daemon=True,
        ).start()
        return attack

    # -- queries and halts

    def get(self, guid: str) -> Attack:
        with self._lock:
            attack = self.attacks.get(guid)
        if attack is None:
            raise AgentError(404, f"no attack {quoted(guid)}")
        return attack

    def listing(self, which: Listing = "all") -> list[Attack]:
        """The attacks, newest first: all, the active ones, or the completed ones."""
        with self._lock:
            attacks = sorted(self.attacks.values(), key=lambda a: a.created_at, reverse=True)
        if which == "active":
            return [a for a in attacks if not a.terminal]
        if which == "completed":
            return [a for a in attacks if a.terminal]
        return attacks

    def halt(self, guid: str, wait: float | None = None) -> Attack:
        """Ask the attack to stop and wait (up to `halt_wait`) for its rollback."""
        attack = self.get(guid)
        if not attack.terminal:
            if attack.stage in ("Running", "Distributed"):
                attack.stage = "HaltDistributed"
            attack.halt.set()
            attack.done.wait(self.halt_wait if wait is None else wait)
        return attack

    def halt_all(self, wait: float | None = None) -> list[Attack]:
        return [self.halt(a.guid, wait) for a in self.listing("active")]
