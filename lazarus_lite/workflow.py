"""The durable workflow engine: YAML DAGs of named, idempotent Python steps.

Every step's start and result is written to the control store before the next step begins, and
the workflow's record carries a snapshot of its definition; so any controller node can resume an
interrupted workflow from its history, under the definition it started with (versioning). A node
owns a running workflow through a short lease it renews; when the owner dies the lease lapses and
another node claims and resumes it. A step fails after its retries, or raises `Escalate`: the
workflow runs its `on_failure` step and is escalated to a person.
Not for: the steps themselves (see `steps`) or deciding to start (see `controller`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common import input_files
from common.validation import kind_of, quoted, validated
from lazarus_lite.locks import HeldLock, Locks

log = logging.getLogger(__name__)

ACTIVE_WORKFLOWS = "lz:wf:active"
OWNER_LEASE_MS = 3000


def parse_duration(value: object) -> float:
    """Seconds from `90`, `1.5`, `500ms`, `5s`, `10m`, `4h`; anything else (a list, null,
    true, a word) is a ValueError that says what a duration looks like."""
    # bool is an int: `timeout: yes` must not quietly mean one second.
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a duration (e.g. 500ms, 5s, 10m, 4h)")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration (e.g. 500ms, 5s, 10m, 4h), not {kind_of(value)}")
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", value)
    if not match:
        raise ValueError(f"{quoted(value)} is not a duration (e.g. 500ms, 5s, 10m, 4h)")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


class WorkflowError(ValueError):
    """A workflow definition is invalid; the message names the file, the step and the field."""


class Escalate(Exception):
    """A step found that a person must decide: no retry, the workflow escalates."""


class WorkflowCancelled(Exception):
    """The engine refused to start a workflow (kill switch, control realm): the coordinator is
    told, marks the event NO_ACTION and escalates it."""


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(1, ge=1, le=100)
    backoff: float = Field(0.2, ge=0, le=600, description="seconds before the 2nd attempt")
    factor: float = Field(2.0, ge=1, le=10)

    def delay(self, attempt: int) -> float:
        return self.backoff * self.factor ** max(0, attempt - 1)


class StepDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,99}$")
    run: str
    needs: list[str] = Field(default_factory=list)
    retry: RetryPolicy = RetryPolicy()
    timeout: float = Field(30.0, gt=0)
    changes_state: bool = True
    params: dict[str, Any] = Field(default_factory=dict, description="given to the step")

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)


class WorkflowDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,99}$")
    version: int = Field(1, ge=1)
    description: str = ""
    timeout: float = Field(1800.0, gt=0, description="whole workflow; default 30 minutes")
    category: str = Field("failover", description="kill switch category")
    steps: list[StepDefinition] = Field(min_length=1)
    on_failure: str | None = Field(None, description="registered step run when escalating")

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

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


class StepRecord(BaseModel):
    status: Literal["pending", "running", "succeeded", "failed"] = "pending"
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    node: str | None = None
    output: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class WorkflowRecord(BaseModel):
    id: str
    definition: WorkflowDefinition
    inputs: dict[str, Any]
    event_id: str | None = None
    status: Literal["running", "succeeded", "escalated"] = "running"
    created_at: float
    deadline: float
    finished_at: float | None = None
    escalation: str | None = None
    steps: dict[str, StepRecord]
    nodes: list[str] = Field(default_factory=list, description="nodes that ran it, in order")

    def output(self, step: str) -> dict[str, Any]:
        return self.steps[step].output


# -- step registry ---------------------------------------------------------------------------
@dataclass
class StepEnvironment:
    """What steps may use: the control store, the locks, the node, and named collaborators
    (such as the actuator) the controller provides."""

    control: aioredis.Redis
    locks: Locks
    node_id: str
    collaborators: dict[str, Any] = field(default_factory=dict)
    before_state_change: Callable[[WorkflowRecord, str], Awaitable[None]] | None = None
    before_start: Callable[[WorkflowDefinition, dict[str, Any]], Awaitable[None]] | None = None


@dataclass
class StepContext:
    workflow: WorkflowRecord
    step: str
    env: StepEnvironment

    @property
    def inputs(self) -> dict[str, Any]:
        return self.workflow.inputs

    @property
    def params(self) -> dict[str, Any]:
        for definition in self.workflow.definition.steps:
            if definition.name == self.step:
                return definition.params
        return {}

    def output(self, step: str) -> dict[str, Any]:
        return self.workflow.output(step)

    def held_lock(self) -> HeldLock | None:
        for record in self.workflow.steps.values():
            lock = record.output.get("lock")
            if lock:
                return HeldLock(lock["key"], lock["holder"], int(lock["token"]))
        return None

    async def assert_lock(self) -> None:
        """Call before changing state: raises LockLost when the workflow's lock is gone."""
        lock = self.held_lock()
        if lock is not None:
            await self.env.locks.assert_held(lock)


StepFunction = Callable[[StepContext], Awaitable[dict[str, Any] | None]]
STEPS: dict[str, StepFunction] = {}


def step(name: str) -> Callable[[StepFunction], StepFunction]:
    def register(function: StepFunction) -> StepFunction:
        STEPS[name] = function
        return function

    return register


def parse_workflow(text: str, source: str) -> WorkflowDefinition:
    raw = input_files.parse(
        text, source, expected="a workflow: a mapping with name and steps", error=WorkflowError
    )
    definition = validated(WorkflowDefinition, raw, source, error=WorkflowError)
    for s in definition.steps:
        if s.run not in STEPS:
            raise WorkflowError(
                f"{source}: step '{s.name}': unknown step function {quoted(s.run)}; "
                f"expected one of {sorted(STEPS)}"
            )
    if definition.on_failure is not None and definition.on_failure not in STEPS:
        raise WorkflowError(
            f"{source}: field 'on_failure': unknown step function "
            f"{quoted(definition.on_failure)}; expected one of {sorted(STEPS)}"
        )
    return definition


def load_workflows(directory: Path) -> dict[str, WorkflowDefinition]:
    found = {}
    for path in input_files.yaml_files(directory, what="workflow files", error=WorkflowError):
        definition = parse_workflow(input_files.read_text(path, error=WorkflowError), str(path))
        found[definition.name] = definition
    return found


# -- persistence -----------------------------------------------------------------------------
def record_key(workflow_id: str) -> str:
    return f"lz:wf:{workflow_id}"


def history_key(workflow_id: str) -> str:
    return f"lz:wf:{workflow_id}:history"


def owner_key(workflow_id: str) -> str:
    return f"lz:wf:{workflow_id}:owner"


# Save only while the lease is ours: a node that lost its workflow cannot overwrite the new
# owner's record.
_SAVE = """
if ARGV[4] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[4] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then redis.call('RPUSH', KEYS[2], ARGV[2]) end
if ARGV[3] == '1' then redis.call('SADD', KEYS[3], ARGV[5])
else redis.call('SREM', KEYS[3], ARGV[5]) end
return 1
"""
_RENEW_OWNER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
_DISOWN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class WorkflowStore:
    def __init__(self, control: aioredis.Redis) -> None:
        self._control = control
        self._save = control.register_script(_SAVE)
        self._renew = control.register_script(_RENEW_OWNER)
        self._disown = control.register_script(_DISOWN)

    async def save(
        self,
        record: WorkflowRecord,
        entry: dict[str, Any] | None = None,
        *,
        owner: str | None = None,
    ) -> None:
        """Write the record (and a history entry) in one step; with `owner`, only while that
        node still holds the workflow's lease (else OwnershipLost: another node took over)."""
        written = await self._save(
            keys=[
                record_key(record.id),
                history_key(record.id),
                ACTIVE_WORKFLOWS,
                owner_key(record.id),
            ],
            args=[
                record.model_dump_json(),
                _json({"at": time.time(), **entry}) if entry is not None else "",
                "1" if record.status == "running" else "0",
                owner or "",
                record.id,
            ],
        )
        if not int(written):
            raise OwnershipLost(f"{owner} no longer owns workflow {record.id}; not saved")

    async def load(self, workflow_id: str) -> WorkflowRecord | None:
        raw = await self._control.get(record_key(workflow_id))
        return None if raw is None else WorkflowRecord.model_validate_json(raw)

    async def history(self, workflow_id: str) -> list[dict[str, Any]]:
        return [json.loads(e) for e in await self._control.lrange(history_key(workflow_id), 0, -1)]

    async def active(self) -> list[str]:
        return sorted(m.decode() for m in await self._control.smembers(ACTIVE_WORKFLOWS))

    async def claim(self, workflow_id: str, node_id: str) -> bool:
        return bool(
            await self._control.set(owner_key(workflow_id), node_id, nx=True, px=OWNER_LEASE_MS)
        )

    async def renew(self, workflow_id: str, node_id: str) -> bool:
        keys = [owner_key(workflow_id)]
        return bool(int(await self._renew(keys=keys, args=[node_id, OWNER_LEASE_MS])))

    async def disown(self, workflow_id: str, node_id: str) -> None:
        await self._disown(keys=[owner_key(workflow_id)], args=[node_id])


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


class OwnershipLost(RuntimeError):
    pass


# -- the engine ------------------------------------------------------------------------------
class WorkflowEngine:
    def __init__(
        self,
        env: StepEnvironment,
        definitions: dict[str, WorkflowDefinition],
        *,
        on_finished: Callable[[WorkflowRecord], Awaitable[None]] | None = None,
    ) -> None:
        self.env = env
        self.store = WorkflowStore(env.control)
        self.definitions = definitions
        self.on_finished = on_finished
        self._running: dict[str, asyncio.Task] = {}

    async def _record(self, record: WorkflowRecord, entry: dict[str, Any] | None = None) -> None:
        """Save as this workflow's owner (raises OwnershipLost once another node took over)."""
        await self.store.save(record, entry, owner=self.env.node_id)

    async def start(
        self, name: str, inputs: dict[str, Any], *, event_id: str | None = None
    ) -> WorkflowRecord:
        """Record a new workflow, claim it, and run it in the background."""
        definition = self.definitions[name]
        if self.env.before_start is not None:
            await self.env.before_start(definition, inputs)  # may raise WorkflowCancelled
        workflow_id = f"wf-{uuid.uuid4().hex[:16]}"
        if event_id is not None:
            # One workflow per event: an event handled again (its first coordinator died after
            # starting the workflow) adopts the workflow that exists.
            key = f"lz:event:{event_id}:workflow"
            if not await self.env.control.set(key, workflow_id, nx=True, ex=30 * 24 * 3600):
                existing = await self.env.control.get(key)
                found = await self.store.load(existing.decode()) if existing else None
                if found is not None:
                    return found
                await self.env.control.set(key, workflow_id, ex=30 * 24 * 3600)
        now = time.time()
        record = WorkflowRecord(
            id=workflow_id,
            definition=definition,
            inputs=inputs,
            event_id=event_id,
            created_at=now,
            deadline=now + definition.timeout,
            steps={s.name: StepRecord() for s in definition.steps},
        )
        await self.store.claim(record.id, self.env.node_id)
        await self._record(
            record,
            {
                "kind": "workflow_started",
                "node": self.env.node_id,
                "definition": definition.name,
                "version": definition.version,
            },
        )
        self._spawn(record.id)
        return record

    def _spawn(self, workflow_id: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(self._run_owned(workflow_id))
        self._running[workflow_id] = task
        task.add_done_callback(lambda _: self._running.pop(workflow_id, None))
        return task

    async def wait(self, workflow_id: str) -> None:
        task = self._running.get(workflow_id)
        if task is not None:
            await asyncio.shield(task)

    async def resume_orphans(self) -> list[str]:
        """Claim and resume every running workflow whose owner's lease has lapsed."""
        resumed = []
        for workflow_id in await self.store.active():
            if workflow_id in self._running:
                continue
            if await self.store.claim(workflow_id, self.env.node_id):
                log.warning("node %s resumes workflow %s", self.env.node_id, workflow_id)
                self._spawn(workflow_id)
                resumed.append(workflow_id)
        return resumed

    async def _run_owned(self, workflow_id: str) -> None:
        """Run while holding the lease; if the lease is lost (another node may have taken the
        workflow over), the step in flight is cancelled: two nodes never go on side by side."""
        loop = asyncio.get_running_loop()
        heartbeat = loop.create_task(self._keep_ownership(workflow_id))
        running = loop.create_task(self.run(workflow_id))
        try:
            await asyncio.wait({running, heartbeat}, return_when=asyncio.FIRST_COMPLETED)
            if not running.done():
                log.error(
                    "workflow %s: node %s lost its lease; stopping here",
                    workflow_id,
                    self.env.node_id,
                )
                running.cancel()
            await running
        except (OwnershipLost, asyncio.CancelledError) as error:
            log.error("workflow %s on %s: %s", workflow_id, self.env.node_id, error or "stopped")
        except Exception:
            log.exception("workflow %s crashed on node %s", workflow_id, self.env.node_id)
        finally:
            for task in (heartbeat, running):
                task.cancel()
            await asyncio.gather(heartbeat, running, return_exceptions=True)

    async def _keep_ownership(self, workflow_id: str) -> None:
        """Renew the lease (and the workflow's resource lock) until it is lost; returns then.
        Without a successful renewal for most of a lease, assume it lost (self-fencing)."""
        last_renewed = time.monotonic()
        while True:
            await asyncio.sleep(OWNER_LEASE_MS / 3000)
            try:
                if not await self.store.renew(workflow_id, self.env.node_id):
                    return
                last_renewed = time.monotonic()
                await self._renew_lock(workflow_id)
            except Exception as error:  # the control store blinked
                log.warning("workflow %s: lease renewal failed: %s", workflow_id, error)
                if time.monotonic() - last_renewed > OWNER_LEASE_MS * 0.6 / 1000:
                    return

    async def _renew_lock(self, workflow_id: str) -> None:
        """A long step (an approval gate) must not let the workflow's lock expire."""
        record = await self.store.load(workflow_id)
        if record is None:
            return
        held = StepContext(workflow=record, step="-", env=self.env).held_lock()
        if held is not None:
            await self.env.locks.renew(held)

    async def run(self, workflow_id: str) -> WorkflowRecord:
        record = await self.store.load(workflow_id)
        if record is None:
            raise LookupError(workflow_id)
        if record.status != "running":
            return record
        if not record.nodes or record.nodes[-1] != self.env.node_id:
            record.nodes.append(self.env.node_id)
            await self._record(
                record,
                {
                    "kind": "workflow_resumed" if len(record.nodes) > 1 else "workflow_running",
                    "node": self.env.node_id,
                },
            )
        for definition in record.definition.order():
            if record.steps[definition.name].status == "succeeded":
                continue
            if time.time() > record.deadline:
                return await self._escalate(
                    record,
                    definition.name,
                    f"workflow timed out after {record.definition.timeout:g} s",
                )
            error = await self._run_step(record, definition)
            if error is not None:
                return await self._escalate(record, definition.name, error)
        record.status = "succeeded"
        record.finished_at = time.time()
        await self._record(record, {"kind": "workflow_succeeded", "node": self.env.node_id})
        await self.store.disown(record.id, self.env.node_id)
        if self.on_finished is not None:
            await self.on_finished(record)
        return record

    async def _run_step(self, record: WorkflowRecord, definition: StepDefinition) -> str | None:
        """Run one step with its retries and timeout; returns None or the final error."""
        step_record = record.steps[definition.name]
        function = STEPS[definition.run]
        context = StepContext(workflow=record, step=definition.name, env=self.env)
        while True:
            step_record.status = "running"
            step_record.attempts += 1
            step_record.started_at = time.time()
            step_record.node = self.env.node_id
            step_record.error = None
            await self._record(
                record,
                {
                    "kind": "step_started",
                    "step": definition.name,
                    "attempt": step_record.attempts,
                    "node": self.env.node_id,
                },
            )
            try:
                if definition.changes_state and self.env.before_state_change is not None:
                    await self.env.before_state_change(record, definition.name)
                output = await asyncio.wait_for(function(context), timeout=definition.timeout)
            except Escalate as error:
                return await self._fail_step(record, definition, f"escalated: {error}")
            except TimeoutError:
                failure = f"timed out after {definition.timeout:g} s"
            except Exception as error:
                failure = f"{type(error).__name__}: {error}"
            else:
                step_record.status = "succeeded"
                step_record.finished_at = time.time()
                step_record.output = output or {}
                await self._record(
                    record,
                    {
                        "kind": "step_succeeded",
                        "step": definition.name,
                        "node": self.env.node_id,
                        "seconds": step_record.finished_at - step_record.started_at,
                    },
                )
                return None
            if step_record.attempts >= definition.retry.max_attempts:
                return await self._fail_step(record, definition, failure)
            await self._record(
                record,
                {
                    "kind": "step_retrying",
                    "step": definition.name,
                    "error": failure,
                    "node": self.env.node_id,
                },
            )
            await asyncio.sleep(definition.retry.delay(step_record.attempts))

    async def _fail_step(
        self, record: WorkflowRecord, definition: StepDefinition, failure: str
    ) -> str:
        step_record = record.steps[definition.name]
        step_record.status = "failed"
        step_record.finished_at = time.time()
        step_record.error = failure
        await self._record(
            record,
            {
                "kind": "step_failed",
                "step": definition.name,
                "error": failure,
                "node": self.env.node_id,
            },
        )
        return failure

    async def _escalate(
        self, record: WorkflowRecord, step_name: str, reason: str
    ) -> WorkflowRecord:
        record.escalation = f"step {step_name}: {reason}"
        if record.definition.on_failure is not None:
            context = StepContext(workflow=record, step="on_failure", env=self.env)
            try:
                await asyncio.wait_for(STEPS[record.definition.on_failure](context), timeout=30)
            except Exception as error:
                record.escalation += f"; on_failure step failed: {error}"
        record.status = "escalated"
        record.finished_at = time.time()
        await self._record(
            record,
            {"kind": "workflow_escalated", "reason": record.escalation, "node": self.env.node_id},
        )
        await self.store.disown(record.id, self.env.node_id)
        if self.on_finished is not None:
            await self.on_finished(record)
        return record

    async def stop(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
