"""The engine: runs a workflow's steps in `needs` order, each with its retries and timeout,
recording every start and result before going on; resumes workflows whose owner died; escalates
(running `on_failure`) when a step fails for good or the workflow's deadline passes. It reads top
to bottom: start, own, run, run a step, fail a step, escalate.
Not for: what a definition may say (see `definition`, `loading`) or how records are kept (see
`store`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from lazarus_lite.coordination.interface import OWNER_LEASE_MS
from lazarus_lite.errors import Escalate, OwnershipLost, UndeclaredRead
from lazarus_lite.metrics import ControllerMetrics
from lazarus_lite.workflow.context import StepContext, StepEnvironment
from lazarus_lite.workflow.definition import StepDefinition, WorkflowDefinition
from lazarus_lite.workflow.records import StepRecord, WorkflowRecord
from lazarus_lite.workflow.registry import STEPS

log = logging.getLogger(__name__)


class WorkflowEngine:
    def __init__(
        self,
        env: StepEnvironment,
        definitions: dict[str, WorkflowDefinition],
        *,
        on_finished: Callable[[WorkflowRecord], Awaitable[None]] | None = None,
        metrics: ControllerMetrics | None = None,
    ) -> None:
        self.env = env
        self.metrics = metrics
        self.store = env.store.workflows
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
            existing = await self.store.bind_event(event_id, workflow_id)
            if existing is not None:
                found = await self.store.load(existing)
                if found is not None:
                    return found
                await self.store.rebind_event(event_id, workflow_id)
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
        Without a successful renewal for most of a lease, assume it lost (self-fencing): a
        renewal that neither answers nor fails (a store cut off, not refusing) is given only
        the time left before then, so the step stops before another node may claim it."""
        lease = OWNER_LEASE_MS / 1000
        fence_after = lease * 0.6
        last_renewed = time.monotonic()
        while True:
            left = last_renewed + fence_after - time.monotonic()
            await asyncio.sleep(min(lease / 3, max(left, 0.0)))
            left = last_renewed + fence_after - time.monotonic()
            if left <= 0:
                log.error("workflow %s: no lease renewal for %.1f s", workflow_id, fence_after)
                return
            # The store's lease restarts when the renewal reaches it (a keep-alive, then on
            # etcd a guarded read that may be sent to other members): count from before the
            # call, not from its answer, or the fence would fall after the lease's expiry.
            started = time.monotonic()
            try:
                renewed = await asyncio.wait_for(
                    self.store.renew(workflow_id, self.env.node_id), left
                )
                if not renewed:
                    return
                last_renewed = started
                await asyncio.wait_for(self._renew_lock(workflow_id), fence_after)
            except TimeoutError:
                log.warning("workflow %s: lease renewal did not answer in time", workflow_id)
            except Exception as error:  # the control store blinked
                log.warning("workflow %s: lease renewal failed: %s", workflow_id, error)

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
        spec = STEPS[definition.run]
        context = spec.context(record, definition.name, self.env)
        while True:
            step_record.status = "running"
            step_record.attempts += 1
            step_record.started_at = time.time()
            step_record.node = self.env.node_id
            step_record.error = None
            await self._record_step(
                record, "step_started", definition.name, attempt=step_record.attempts
            )
            try:
                context.store_reads = None
                if definition.changes_state and self.env.before_state_change is not None:
                    context.store_reads = await self.env.before_state_change(
                        record, definition.name
                    )
                output = await asyncio.wait_for(spec.function(context), timeout=definition.timeout)
                # Checked before it is recorded: a later step reads it as the declared model.
                stored = stored_output(output, spec.output)
            except Escalate as error:
                return await self._fail_step(record, definition, f"escalated: {error}")
            except UndeclaredRead as error:  # a bug in the step: retrying cannot help
                return await self._fail_step(record, definition, f"{error}")
            except TimeoutError:
                failure = f"timed out after {definition.timeout:g} s"
            except Exception as error:
                failure = f"{type(error).__name__}: {error}"
            else:
                step_record.status = "succeeded"
                step_record.finished_at = time.time()
                self._step_ended(record, definition.name, "succeeded", step_record)
                step_record.output = stored
                await self._record_step(
                    record,
                    "step_succeeded",
                    definition.name,
                    seconds=step_record.finished_at - step_record.started_at,
                )
                return None
            if step_record.attempts >= definition.retry.max_attempts:
                return await self._fail_step(record, definition, failure)
            self._step_ended(record, definition.name, "retried", step_record, time.time())
            await self._record_step(record, "step_retrying", definition.name, error=failure)
            await asyncio.sleep(definition.retry.delay(step_record.attempts))

    def _step_ended(
        self,
        record: WorkflowRecord,
        step: str,
        result: str,
        step_record: StepRecord,
        at: float | None = None,
    ) -> None:
        if self.metrics is not None and step_record.started_at is not None:
            ended = at if at is not None else step_record.finished_at or time.time()
            seconds = ended - step_record.started_at
            self.metrics.step_ended(record.definition.name, step, result, seconds)

    async def _record_step(
        self, record: WorkflowRecord, kind: str, step: str, **details: Any
    ) -> None:
        """Write one step's start, result, retry or failure to the workflow's history."""
        await self._record(
            record, {"kind": kind, "step": step, "node": self.env.node_id, **details}
        )

    async def _fail_step(
        self, record: WorkflowRecord, definition: StepDefinition, failure: str
    ) -> str:
        step_record = record.steps[definition.name]
        step_record.status = "failed"
        step_record.finished_at = time.time()
        self._step_ended(record, definition.name, "failed", step_record)
        step_record.error = failure
        await self._record_step(record, "step_failed", definition.name, error=failure)
        return failure

    async def _escalate(
        self, record: WorkflowRecord, step_name: str, reason: str
    ) -> WorkflowRecord:
        record.escalation = f"step {step_name}: {reason}"
        entry: dict[str, Any] = {"kind": "workflow_escalated", "node": self.env.node_id}
        if record.definition.on_failure is not None:
            spec = STEPS[record.definition.on_failure]
            context = spec.context(record, "on_failure", self.env)
            try:
                outcome = await asyncio.wait_for(spec.function(context), timeout=30)
                # What the clean-up did (say, a replacement removed) is read in the history.
                entry["on_failure"] = stored_output(outcome, spec.output)
            except Exception as error:
                record.escalation += f"; on_failure step failed: {error}"
        record.status = "escalated"
        record.finished_at = time.time()
        await self._record(record, {**entry, "reason": record.escalation})
        await self.store.disown(record.id, self.env.node_id)
        if self.on_finished is not None:
            await self.on_finished(record)
        return record

    async def stop(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)


def stored_output(
    output: BaseModel | dict[str, Any] | None, declared: type[BaseModel] | None = None
) -> dict[str, Any]:
    """A step's output as the record keeps it: JSON-compatible, and valid as the output model
    the step declared (a ValidationError otherwise: the attempt failed)."""
    if declared is not None and not isinstance(output, declared):
        output = declared.model_validate(output or {})
    if isinstance(output, BaseModel):
        return output.model_dump(mode="json")
    return output or {}
