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

from common.cancellation import cancel_until_done, stop_if_cancelled
from lazarus_lite.coordination.interface import OWNER_LEASE_MS, StepReads
from lazarus_lite.coordination.unreachable import STORE_UNREACHABLE
from lazarus_lite.errors import Escalate, OwnershipLost, UndeclaredRead, WorkflowStartPending
from lazarus_lite.metrics import ControllerMetrics
from lazarus_lite.workflow.context import StepContext, StepEnvironment
from lazarus_lite.workflow.definition import StepDefinition, WorkflowDefinition
from lazarus_lite.workflow.records import StepRecord, WorkflowRecord
from lazarus_lite.workflow.registry import STEPS

log = logging.getLogger(__name__)

# How long a start that finds its event bound to a workflow another node is still starting
# (its claim held, no record yet: the record is one write away) waits for the record before
# refusing (`WorkflowStartPending`): a third of an owner lease, so this start's own claim,
# renewed only once its workflow runs, is still held when it goes on.
START_WAIT = OWNER_LEASE_MS / 1000 / 3
START_POLL = 0.05  # how often it looks for the record meanwhile


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
        # History entries whose save waits for the workflow's next one (`_record_later`).
        self._unsaved: dict[str, list[dict[str, Any]]] = {}

    async def _record(
        self,
        record: WorkflowRecord,
        entry: dict[str, Any],
        *,
        new: bool = False,
        while_bound: bool = False,
    ) -> None:
        """Save as this workflow's owner (raises OwnershipLost once another node took over),
        with the entries `_record_later` held back, in order (`new`: its first save;
        `while_bound`: only while its event's binding names it)."""
        held = self._unsaved.pop(record.id, [])
        await self.store.save(
            record, *held, entry, owner=self.env.node_id, new=new, while_bound=while_bound
        )

    async def _save_held(self, record: WorkflowRecord) -> None:
        """Save the entries `_record_later` holds, if any, before something that is not a
        save acts."""
        held = self._unsaved.pop(record.id, [])
        if held:
            await self.store.save(record, *held, owner=self.env.node_id)

    def _record_later(self, record: WorkflowRecord, entry: dict[str, Any]) -> None:
        """Append `entry` with the workflow's next save, which every path takes at once (the
        next step's start, the workflow's end): on etcd each save is a raft write on a
        failover's critical path, and a step's result and the next one's start were two in a
        row. Still saved before anything else is done (`_save_held` before a cleanup step
        that would come first); a crash in between leaves the step to be run again by whoever
        resumes, as a crash just before its result was saved did."""
        self._unsaved.setdefault(record.id, []).append({"at": time.time(), **entry})

    async def start(
        self, name: str, inputs: dict[str, Any], *, event_id: str | None = None
    ) -> WorkflowRecord:
        """Record a new workflow, claim it, and run it in the background."""
        definition = self.definitions[name]
        workflow_id = f"wf-{uuid.uuid4().hex[:16]}"
        # The last word before a workflow starts (`before_start`, e.g. the kill switch), the
        # owner lease of the new id and the event's binding go side by side (on etcd a read,
        # then a lease grant and a transaction each, on the decision's path). Nothing is
        # recorded under the id, and nothing run, before all three are done.
        checking = (
            self.env.before_start(definition, inputs)  # may raise WorkflowCancelled
            if self.env.before_start is not None
            else asyncio.sleep(0)  # nothing to wait for
        )
        binding = (
            self.store.bind_event(event_id, workflow_id)
            if event_id is not None
            else asyncio.sleep(0)  # no event to bind
        )
        # The claim's lease runs from when the claim reaches the store: the run's self-fencing
        # counts from before it is asked for, not from when the run starts (a start that waits
        # for another's workflow, below, may run its own a second later).
        claimed_at = time.monotonic()
        checked, bound, claimed = await asyncio.gather(
            checking,
            binding,
            self.store.claim(workflow_id, self.env.node_id),
            return_exceptions=True,
        )
        claim_taken = not isinstance(claimed, BaseException)
        failed = [r for r in (checked, bound, claimed) if isinstance(r, BaseException)]
        if failed:
            # A refusal, or a failed write: what was taken for the id is given back (nothing
            # is recorded under it), so the event is started afresh when it comes again.
            # The binding is ours, or its write failed and may be: dropped only if it names
            # this id (a binding to another workflow is never touched).
            if event_id is not None and not isinstance(bound, str):
                await self._best_effort(self.store.unbind_event(event_id, workflow_id), "binding")
            if claim_taken:
                await self._drop_spare_claim(workflow_id)
            raise failed[0]
        try:
            # One workflow per event: an event handled again (its first coordinator died
            # after starting the workflow, or handles it side by side) adopts the workflow
            # that exists or is being saved.
            if event_id is not None and bound is not None:
                found = await self._workflow_of_event(event_id, bound, workflow_id)
                if found is not None:
                    await self._drop_spare_claim(workflow_id)
                    return found
            record = self._new_record(workflow_id, definition, inputs, event_id)
            # Saved only while the event's binding names it: a start that found the binding
            # without a claim (ours had not reached the store yet) may have replaced it.
            await self._record(
                record,
                {
                    "kind": "workflow_started",
                    "node": self.env.node_id,
                    "definition": definition.name,
                    "version": definition.version,
                },
                new=True,
                while_bound=event_id is not None,
            )
        except BaseException:
            # Nothing runs the id, so nothing would renew its claim: dropped now (the save's
            # outcome may be unknown; a record saved after all is an orphan the next
            # `resume_orphans` takes). The binding stays: it may name that record, and one
            # to a record that is not there is replaced when the event comes again.
            await self._drop_spare_claim(workflow_id)
            raise
        # The run starts from a copy of the record just saved instead of reading it back; the
        # caller keeps this one, which the run does not change.
        self._spawn(record.id, claimed_at, record.model_copy(deep=True))
        return record

    async def _workflow_of_event(
        self, event_id: str, bound: str, workflow_id: str
    ) -> WorkflowRecord | None:
        """The workflow the event's binding names (`bound`), to adopt; None once the binding
        names `workflow_id` instead. A binding without a record is replaced only while no
        claim is held on its workflow: its start stopped before its first save (its node
        died, or the save failed) and saves nothing now, or its claim has not reached the
        store yet and its first save, made while bound, is refused. While its starter holds
        the claim, the record is waited for (it is one write away) for at most `START_WAIT`,
        then WorkflowStartPending: the event comes again, and is adopted or started then."""
        waited_until = time.monotonic() + START_WAIT
        while True:
            found, owner = await asyncio.gather(self.store.load(bound), self.store.owner(bound))
            if found is not None:
                return found
            if owner is None:
                if await self.store.rebind_event(event_id, workflow_id, replacing=bound):
                    return None
                # The record was saved meanwhile, or another start replaced the binding (or
                # it lapsed): look at what the binding names now.
                now_bound = await self.store.bind_event(event_id, workflow_id)
                if now_bound is None or now_bound == workflow_id:
                    return None
                bound = now_bound
                continue
            if time.monotonic() >= waited_until:
                raise WorkflowStartPending(
                    f"event {event_id}: its workflow {bound} is being started by node {owner} "
                    f"and was not saved within {START_WAIT:g} s; handled again later"
                )
            await asyncio.sleep(START_POLL)

    def _new_record(
        self,
        workflow_id: str,
        definition: WorkflowDefinition,
        inputs: dict[str, Any],
        event_id: str | None,
    ) -> WorkflowRecord:
        now = time.time()
        return WorkflowRecord(
            id=workflow_id,
            definition=definition,
            inputs=inputs,
            event_id=event_id,
            created_at=now,
            deadline=now + definition.timeout,
            steps={s.name: StepRecord() for s in definition.steps},
        )

    async def _drop_spare_claim(self, workflow_id: str) -> None:
        """Drop the owner claim of an id that was never recorded (its event is bound to another
        workflow, or its start failed). Best effort: if the store is away the claim lapses
        with its lease, so the caller goes on (an adopted workflow is still returned, a failed
        start's own error is raised)."""
        await self._best_effort(self.store.disown(workflow_id, self.env.node_id), "claim")

    async def _best_effort(self, dropping: Awaitable[None], what: str) -> None:
        """Give back what a start that did not happen took (`what`: for the log); the store
        away, it lapses with its lease instead."""
        try:
            await dropping
        except STORE_UNREACHABLE as error:
            log.warning(
                "node %s: an unused %s was not dropped (%s); it lapses with its lease",
                self.env.node_id,
                what,
                error,
            )

    def _spawn(
        self, workflow_id: str, claimed_at: float, record: WorkflowRecord | None = None
    ) -> asyncio.Task:
        """Run a workflow this node claimed; `claimed_at` (monotonic) is from before the claim
        was asked for: the lease is counted from then."""
        task = asyncio.get_running_loop().create_task(
            self._run_owned(workflow_id, claimed_at, record)
        )
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
            claimed_at = time.monotonic()
            if await self.store.claim(workflow_id, self.env.node_id):
                log.warning("node %s resumes workflow %s", self.env.node_id, workflow_id)
                self._spawn(workflow_id, claimed_at)
                resumed.append(workflow_id)
        return resumed

    async def _run_owned(
        self, workflow_id: str, claimed_at: float, record: WorkflowRecord | None = None
    ) -> None:
        """Run while holding the lease; if the lease is lost (another node may have taken the
        workflow over), the step in flight is cancelled: two nodes never go on side by side."""
        loop = asyncio.get_running_loop()
        heartbeat = loop.create_task(self._keep_ownership(workflow_id, claimed_at))
        running = loop.create_task(self.run(workflow_id, record))
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
            await cancel_until_done((heartbeat, running))
            # Entries of a run that stopped before its next save: whoever resumes the workflow
            # starts from the stored record, which does not have them.
            self._unsaved.pop(workflow_id, None)

    async def _keep_ownership(self, workflow_id: str, claimed_at: float | None = None) -> None:
        """Renew the lease (and the workflow's resource lock) until it is lost; returns then.
        Without a successful renewal for most of a lease, assume it lost (self-fencing): a
        renewal that neither answers nor fails (a store cut off, not refusing) is given only
        the time left before then, so the step stops before another node may claim it. The
        first lease is counted from `claimed_at` (monotonic, from before the claim was asked
        for; now if not given)."""
        lease = OWNER_LEASE_MS / 1000
        fence_after = lease * 0.6
        last_renewed = time.monotonic() if claimed_at is None else claimed_at
        while True:
            left = last_renewed + fence_after - time.monotonic()
            await asyncio.sleep(min(lease / 3, max(left, 0.0)))
            stop_if_cancelled()
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
            # A cancellation `wait_for` dropped as the renewal answered (Python 3.11) would
            # otherwise keep renewing a lease its node stopped using.
            stop_if_cancelled()

    async def _renew_lock(self, workflow_id: str) -> None:
        """A long step (an approval gate) must not let the workflow's lock expire."""
        record = await self.store.load(workflow_id)
        if record is None:
            return
        held = StepContext(workflow=record, step="-", env=self.env).held_lock()
        if held is not None:
            await self.env.locks.renew(held)

    async def run(self, workflow_id: str, record: WorkflowRecord | None = None) -> WorkflowRecord:
        """Run the workflow's remaining steps; `record`: as this node just saved it (else read)."""
        if record is None:
            record = await self.store.load(workflow_id)
        if record is None:
            raise LookupError(workflow_id)
        if record.status != "running":
            return record
        if not record.nodes or record.nodes[-1] != self.env.node_id:
            record.nodes.append(self.env.node_id)
            self._record_later(
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
            # The gate reads beside the start's save (on etcd a read and a raft write, a round
            # trip each, on a failover's critical path); the step acts only after both.
            saved, gated = await asyncio.gather(
                self._record_step(
                    record, "step_started", definition.name, attempt=step_record.attempts
                ),
                self._gate(record, definition),
                return_exceptions=True,
            )
            if isinstance(saved, BaseException):
                raise saved
            try:
                if isinstance(gated, BaseException):
                    raise gated
                context.store_reads = gated
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
                self._record_later(
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
            self._step_ended(record, definition.name, "retried", step_record, time.time())
            await self._record_step(record, "step_retrying", definition.name, error=failure)
            await asyncio.sleep(definition.retry.delay(step_record.attempts))
            stop_if_cancelled()

    async def _gate(self, record: WorkflowRecord, definition: StepDefinition) -> StepReads | None:
        """What the gate of a state-changing step read (it raises to stop the step); None for
        a step without one."""
        if definition.changes_state and self.env.before_state_change is not None:
            return await self.env.before_state_change(record, definition.name)
        return None

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
        if record.definition.on_failure is not None:
            # The cleanup step acts (on a shard: its topology, its lock) on what the record
            # says: a result `_record_later` holds is saved before it runs, not after.
            await self._save_held(record)
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
