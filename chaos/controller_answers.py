"""What the controllers did, read from their REST answers through lazarus_lite's own models:
the audit records about the faulted shards (`AuditRecord`), their workflows (`WorkflowRecord`),
the workflow's owner, and the approval of a gate. Not for: judging what was read (see
`hypotheses`) or placing it on the timeline (see `recovery_watch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, TypeVar

import httpx
from pydantic import ValidationError

from chaos.errors import TargetError
from chaos.journal import Say
from chaos.targets import Deployment
from lazarus_lite.audit import AuditRecord
from lazarus_lite.coordination.opening import opened_coordination_store
from lazarus_lite.steps.approval import APPROVAL_STEP
from lazarus_lite.workflow.records import WorkflowRecord

Answer = TypeVar("Answer", bound=AuditRecord | WorkflowRecord)

# What a run's journal keeps of each decision (the whole record stays in the control store).
DECISION_FIELDS = (
    "event_id",
    "coordinator",
    "outcome",
    "reason",
    "rule",
    "workflow_id",
    "received_at",
    "decided_at",
    "quorum",
)


class ControllerAnswers:
    def __init__(self, deployment: Deployment, http: httpx.Client, say: Say) -> None:
        self.deployment = deployment
        self._http = http
        self.say = say
        # Answers that did not read as lazarus_lite's models (say, controllers of another
        # version): the run's journal lists them, so a hypothesis that saw nothing says why.
        self.unreadable: set[str] = set()

    def decisions(
        self, since: float, shards: set[str]
    ) -> tuple[list[AuditRecord], list[WorkflowRecord]]:
        """Audit records about `shards` since `since` (the first controller that answers), and
        their workflows."""
        for url in self.deployment.controller_urls():
            try:
                answer = self._http.get(
                    f"{url}/v1/events", params={"since": since - 2, "limit": 500}
                ).json()["events"]
            except (httpx.HTTPError, ValueError, KeyError):  # not answering: ask the next one
                continue
            events = [self._read(AuditRecord, e, f"{url}: an audit record") for e in answer]
            mine = [e for e in events if e is not None and e.event.get("shard") in shards]
            workflows = []
            for record in mine:
                if record.workflow_id:
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        answer = self._http.get(f"{url}/v1/workflows/{record.workflow_id}").json()
                        workflow = self._read(
                            WorkflowRecord, answer, f"{url}: workflow {record.workflow_id}"
                        )
                        if workflow is not None:
                            workflows.append(workflow)
            return sorted(mine, key=lambda e: e.received_at), workflows
        return [], []

    def _read(self, model: type[Answer], data: Any, what: str) -> Answer | None:
        try:
            return model.model_validate(data)
        except ValidationError as error:
            problem = f"{what} does not read as {model.__name__}: {error.errors()[0]['msg']}"
            if problem not in self.unreadable:
                self.unreadable.add(problem)
                self.say(problem)
            return None

    def shard_workflow(self, shard: str) -> WorkflowRecord | None:
        """The shard's latest running workflow (within the last ten minutes)."""
        _, workflows = self.decisions(time.time() - 600, {shard})
        running = [w for w in workflows if w.status == "running"]
        return running[-1] if running else None

    def workflow_owner(self, shard: str) -> str | None:
        """The controller node that holds the lease of the shard's running workflow."""
        workflow = self.shard_workflow(shard)
        if workflow is None:
            return None
        return asyncio.run(self._owner_of(workflow.id))

    async def _owner_of(self, workflow_id: str) -> str | None:
        async with opened_coordination_store(self.deployment.store_address(), timeout=3) as store:
            return await store.workflows.owner(workflow_id)

    def approve(self, gate: str, shard: str) -> None:
        """Approve the gate step `gate` of the shard's running workflow on any controller."""
        workflow = self.shard_workflow(shard)
        if workflow is None:
            raise TargetError("no workflow to approve")
        token = self.deployment.lazarus_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        answers = []
        for url in self.deployment.controller_urls():
            try:
                answer = self._http.post(
                    f"{url}/v1/workflows/{workflow.id}/approve",
                    json={"step": gate},
                    headers=headers,
                )
            except httpx.HTTPError as error:
                answers.append(f"{url}: {type(error).__name__}")
                continue
            if answer.status_code == 200:
                self.say(f"approved gate '{gate}' of {workflow.id} via {url}")
                return
            answers.append(f"{url}: {answer.status_code} {answer.text[:200]}")
        raise TargetError(f"no controller accepted the approval of {workflow.id}: {answers}")


def waiting_gates(workflow: WorkflowRecord) -> list[str]:
    """The approval gates of `workflow` that are running (waiting for their approval)."""
    gates = {s.name for s in workflow.definition.steps if s.run == APPROVAL_STEP}
    return [name for name, s in workflow.steps.items() if s.status == "running" and name in gates]


def decision_summary(record: AuditRecord) -> dict[str, Any]:
    """The journal's line about one decision."""
    dumped = record.model_dump(mode="json")
    return {key: dumped.get(key) for key in DECISION_FIELDS} | {
        "shard": record.event.get("shard"),
        "type": record.event["type"],
        "source": record.event["source"],
    }
