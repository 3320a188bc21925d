"""What a step sees while it runs: the workflow's inputs and the outputs of the steps before it,
as the pydantic models the steps declared, the resource lock, and the collaborators the
controller provides; and the base models every workflow's inputs and every step's output derive
from. Not for: registering steps (see `registry`) or running them (see `engine`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from lazarus_lite.coordination.interface import (
    CoordinationStore,
    HeldLock,
    ResourceLocks,
    StepReads,
)
from lazarus_lite.errors import UndeclaredRead
from lazarus_lite.workflow.definition import WorkflowDefinition
from lazarus_lite.workflow.records import WorkflowRecord


class WorkflowInputs(BaseModel):
    """Base of the models of a workflow's inputs. The controller gives every workflow the same
    set of inputs (from the rule and the event); each step's model names those it uses."""

    model_config = ConfigDict(extra="allow")


class StepOutput(BaseModel):
    """Base of every step's output; stored in the workflow record as JSON."""


class LockToken(BaseModel):
    key: str
    holder: str
    token: int


class LockTaken(StepOutput):
    """The output of a step that took the workflow's resource lock: the engine keeps the lock
    alive while the workflow runs, and `assert_lock` checks it before a change of state."""

    lock: LockToken


InputsT = TypeVar("InputsT", bound=WorkflowInputs)
OutputT = TypeVar("OutputT", bound=StepOutput)


@dataclass
class StepEnvironment:
    """What steps may use: the coordination store (its locks among it), the node, and named
    collaborators (such as the actuator) the controller provides."""

    store: CoordinationStore
    node_id: str
    collaborators: dict[str, Any] = field(default_factory=dict)
    # The gate of a state-changing step: raises to stop it, else returns what it read of the
    # store for the step (`StepContext.store_reads`).
    before_state_change: Callable[[WorkflowRecord, str], Awaitable[StepReads | None]] | None = None
    before_start: Callable[[WorkflowDefinition, dict[str, Any]], Awaitable[None]] | None = None

    @property
    def locks(self) -> ResourceLocks:
        return self.store.locks


@dataclass
class StepContext:
    """`reads` and `inputs_model` are what the running step declared at registration: reading
    anything else is refused (UndeclaredRead), so the declarations stay true."""

    workflow: WorkflowRecord
    step: str
    env: StepEnvironment
    reads: Mapping[str, type[StepOutput]] | None = None
    inputs_model: type[WorkflowInputs] | None = None
    store_reads: StepReads | None = None
    """What the gate before this attempt read of the store (a state-changing step's topology
    at the revision its kill switch was checked at); None: read it yourself."""

    def inputs_as(self, model: type[InputsT]) -> InputsT:
        """The workflow's inputs as `model` (the one the step declared)."""
        if self.inputs_model is not None and not issubclass(self.inputs_model, model):
            raise UndeclaredRead(
                f"step {self.step} reads its inputs as {model.__name__} but declared "
                f"{self.inputs_model.__name__}"
            )
        return model.model_validate(self.workflow.inputs)

    def output_of(self, step: str, model: type[OutputT]) -> OutputT:
        """The output of the earlier step named `step` in this workflow, as `model`."""
        if self.reads is not None and not issubclass(model, self.reads.get(step, type(None))):
            raise UndeclaredRead(
                f"step {self.step} reads {step} as {model.__name__} without declaring it"
            )
        return model.model_validate(self.workflow.steps[step].output)

    @property
    def params(self) -> dict[str, Any]:
        definition = self.workflow.definition.step_named(self.step)
        return definition.params if definition is not None else {}

    def held_lock(self) -> HeldLock | None:
        for record in self.workflow.steps.values():
            if record.output.get("lock"):
                lock = LockTaken.model_validate(record.output).lock
                return HeldLock(lock.key, lock.holder, lock.token)
        return None

    async def assert_lock(self) -> None:
        """Call before changing state: raises LockLost when the workflow's lock is gone."""
        lock = self.held_lock()
        if lock is not None:
            await self.env.locks.assert_held(lock)
