"""The step registry: step functions by the name workflow files `run`, each registered with the
model of its output, what it reads (which steps' outputs, as which models) and the model of the
inputs it uses, so a workflow file can be checked before it runs (see `references`).
Not for: the steps themselves (see `lazarus_lite.steps`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from lazarus_lite.workflow.context import (
    StepContext,
    StepEnvironment,
    StepOutput,
    WorkflowInputs,
)
from lazarus_lite.workflow.records import WorkflowRecord

StepFunction = Callable[[StepContext], Awaitable[BaseModel | dict[str, Any] | None]]


@dataclass(frozen=True)
class StepSpec:
    """A registered step. `output` None: the step's output is untyped (no step may read it);
    `reads` maps the workflow step names it reads to the models it expects from them."""

    name: str
    function: StepFunction
    output: type[StepOutput] | None = None
    reads: Mapping[str, type[StepOutput]] = field(default_factory=dict)
    inputs: type[WorkflowInputs] | None = None

    def context(self, workflow: WorkflowRecord, step: str, env: StepEnvironment) -> StepContext:
        return StepContext(
            workflow=workflow, step=step, env=env, reads=self.reads, inputs_model=self.inputs
        )


STEPS: dict[str, StepSpec] = {}


def step(
    name: str,
    *,
    output: type[StepOutput] | None = None,
    reads: Mapping[str, type[StepOutput]] | None = None,
    inputs: type[WorkflowInputs] | None = None,
) -> Callable[[StepFunction], StepFunction]:
    """Register a step function under `name` (what a workflow file's `run` says)."""

    def register(function: StepFunction) -> StepFunction:
        STEPS[name] = StepSpec(name, function, output, dict(reads or {}), inputs)
        return function

    return register
