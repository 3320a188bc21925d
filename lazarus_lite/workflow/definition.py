"""What a workflow file says: its steps, their `needs` (a DAG), retries and timeouts.
Not for: whether the step functions exist or what they read (see `loading` and `references`),
or running a workflow (see `engine`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.durations import DurationSeconds
from common.retry import RetryPolicy
from common.validation import quoted

# What the kill switch suspends (`lazarus_lite.gates`, `/v1/killswitch`): a workflow file of any
# other category could be stopped only by switching off everything, so loading refuses it.
CATEGORIES = ("failover", "host_replacement", "scaling")


class StepDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,99}$")
    run: str
    needs: list[str] = Field(default_factory=list)
    retry: RetryPolicy = RetryPolicy()
    timeout: DurationSeconds = Field(30.0, gt=0)
    changes_state: bool = True
    params: dict[str, Any] = Field(default_factory=dict, description="given to the step")


class WorkflowDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,99}$")
    version: int = Field(1, ge=1)
    description: str = ""
    timeout: DurationSeconds = Field(1800.0, gt=0, description="whole workflow; default 30 minutes")
    # Checked against CATEGORIES where a file is loaded (`loading`), not here: a record started
    # by older code keeps the category it had, and must still load and resume.
    category: str = Field("failover", description="kill switch category")
    steps: list[StepDefinition] = Field(min_length=1)
    on_failure: str | None = Field(None, description="registered step run when escalating")

    @model_validator(mode="after")
    def _a_dag_of_known_names(self) -> WorkflowDefinition:
        names = [s.name for s in self.steps]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"step names used twice: {sorted(duplicates)}")
        for step in self.steps:
            unknown = [n for n in step.needs if n not in names]
            if unknown:
                raise ValueError(f"step '{step.name}': needs unknown steps {quoted(unknown)}")
        self.order()  # raises on a cycle
        return self

    def order(self) -> list[StepDefinition]:
        """Steps in an order that respects `needs` (file order among independent steps)."""
        done: list[str] = []
        pending = list(self.steps)
        while pending:
            ready = [s for s in pending if all(n in done for n in s.needs)]
            if not ready:
                raise ValueError(f"steps form a cycle: {[s.name for s in pending]}")
            done.append(ready[0].name)
            pending.remove(ready[0])
        by_name = {s.name: s for s in self.steps}
        return [by_name[n] for n in done]

    def step_named(self, name: str) -> StepDefinition | None:
        return next((s for s in self.steps if s.name == name), None)

    def ancestors(self, name: str) -> set[str]:
        """The steps that always finish before `name` starts: its `needs`, and theirs."""
        by_name = {s.name: s for s in self.steps}
        found: set[str] = set()
        pending = list(by_name[name].needs)
        while pending:
            current = pending.pop()
            if current not in found:
                found.add(current)
                pending += by_name[current].needs
        return found
