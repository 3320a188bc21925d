"""One attack's state and its lifecycle: Gremlin's stages (Pending → Distributed → Running →
Successful, or → HaltDistributed → UserHalted, or → Failed), the faults injected so far, how it
ends, and the Gremlin-shaped views the API answers with (`AttackView`, `Execution`). The stage
names and their lifecycles are the published ones (`chaos.faults.gremlin` says where).

Not for: parsing the command (`commands`) or carrying the attack out (`execution`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from chaos.agent.commands import Plan
from chaos.agent.targets import AgentTarget
from chaos.errors import FaultError
from chaos.faults.base import InjectedFault
from chaos.faults.gremlin import COMPLETE, ERROR, SUCCESSFUL, USER_HALTED

# Gremlin's stage → stageLifecycle, for the stages this agent goes through: a halted attack is
# `UserHalted` and `Complete`; `Complete` and `Error` are the finished lifecycles.
LIFECYCLE = {
    "Pending": "NotStarted",
    "Distributed": "Active",
    "Running": "Active",
    "HaltDistributed": "Active",
    SUCCESSFUL: COMPLETE,
    USER_HALTED: COMPLETE,
    "Failed": ERROR,
}
TERMINAL = frozenset(stage for stage, cycle in LIFECYCLE.items() if cycle in (COMPLETE, ERROR))


# An attack as `GET /v1/attacks…` answers it (no docstring: it would enter the published schema).
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


# One target's part of an attack, as `GET /v1/executions` answers it.
class Execution(BaseModel):
    guid: str
    taskId: str
    identifier: str
    stage: str
    stageLifecycle: str
    endTime: str | None
    output: str | None


@dataclass
class Attack:
    """An attack by guid: what was asked, on which nodes, and how far it got."""

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

    @property
    def terminal(self) -> bool:
        return self.stage in TERMINAL

    def rollback(self) -> str:
        """Roll back every fault injected so far, newest first; the errors, joined ("" if
        none)."""
        errors = []
        for fault in reversed(self.faults):
            try:
                fault.rollback()
            except FaultError as error:
                errors.append(str(error))
        return "; ".join(errors)

    def finish(self, stage: str, output: str) -> None:
        """End the attack in `stage` (each target too, unless it failed on its own)."""
        self.output = output
        self.end_time = time.time()
        for name in self.identifiers:
            if self.stages.get(name) != "Failed":
                self.stages[name] = stage
        self.stage = stage
        self.done.set()

    def view(self) -> AttackView:
        return AttackView(
            guid=self.guid,
            stage=self.stage,
            stageLifecycle=LIFECYCLE.get(self.stage, "Active"),
            command=self.command,
            target=self.target,
            targets=self.identifiers,
            createdAt=_iso(self.created_at),
            startTime=_iso(self.start_time),
            endTime=_iso(self.end_time),
            output=self.output or None,
            source="Adhoc",
        )

    def executions(self) -> list[Execution]:
        return [
            Execution(
                guid=f"{self.guid}:{name}",
                taskId=self.guid,
                identifier=name,
                stage=self.stages.get(name, self.stage),
                stageLifecycle=LIFECYCLE.get(self.stages.get(name, self.stage), "Active"),
                endTime=_iso(self.end_time),
                output=self.output or None,
            )
            for name in self.identifiers
        ]


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp % 1 * 1000):03d}Z"
