"""Host replacement for stateless services (the stateless profile's workflow, the seed's
replace-host runbook): take the failed host out of the load balancer, provision a replacement
through the actuator, verify its healthcheck, put it in the balancer, hold the failed host for
forensics. Every step is idempotent. Not for: Redis shards (see `ratequeue_promotion`)."""

from __future__ import annotations

import httpx
from pydantic import Field

from lazarus_lite.errors import Escalate
from lazarus_lite.workflow.context import StepContext, StepOutput, WorkflowInputs
from lazarus_lite.workflow.registry import step

# The workflow step names the profile's template gives these steps (`lazarus_lite.profiles`).
PROVISION_REPLACEMENT = "provision_replacement"


class HostReplacementInputs(WorkflowInputs):
    service: str
    host: str | None = None
    command: list[str] | None = Field(None, description="starts a host; from the profile")
    healthcheck_path: str = "/healthz"

    @property
    def failed_host(self) -> str:
        return str(self.host).rstrip("/")


class RemovedFromBalancer(StepOutput):
    removed: bool
    host: str


class HostProvisioned(StepOutput):
    host: str


class HostHealthy(StepOutput):
    host: str
    status: int


class AddedToBalancer(StepOutput):
    host: str


class HostHeld(StepOutput):
    host: str
    state: str


@step("stateless.remove_from_lb", output=RemovedFromBalancer, inputs=HostReplacementInputs)
async def remove_from_load_balancer(ctx: StepContext) -> RemovedFromBalancer:
    inputs = ctx.inputs_as(HostReplacementInputs)
    await ctx.assert_lock()
    removed = await ctx.env.store.services.remove(inputs.service, inputs.failed_host)
    return RemovedFromBalancer(removed=removed, host=inputs.failed_host)


@step("stateless.provision_replacement", output=HostProvisioned, inputs=HostReplacementInputs)
async def provision_replacement_host(ctx: StepContext) -> HostProvisioned:
    actuator = ctx.env.collaborators.get("actuator")
    if actuator is None:
        raise Escalate("no actuator configured: a person must provision the replacement")
    inputs = ctx.inputs_as(HostReplacementInputs)
    if not inputs.command:
        raise Escalate(f"the profile of {inputs.service} gives no command to start a host")
    await ctx.assert_lock()
    url = await actuator.provision_instance(
        inputs.service,
        f"{inputs.service}-{ctx.workflow.id[-8:]}",
        list(inputs.command),
        inputs.healthcheck_path,
    )
    return HostProvisioned(host=url)


@step(
    "stateless.verify_health",
    output=HostHealthy,
    reads={PROVISION_REPLACEMENT: HostProvisioned},
    inputs=HostReplacementInputs,
)
async def verify_replacement_health(ctx: StepContext) -> HostHealthy:
    url = ctx.output_of(PROVISION_REPLACEMENT, HostProvisioned).host
    path = ctx.inputs_as(HostReplacementInputs).healthcheck_path
    async with httpx.AsyncClient(timeout=3) as http:
        answer = await http.get(f"{url}{path}")
    if answer.status_code != 200:
        raise RuntimeError(f"{url}{path} answered {answer.status_code}")
    return HostHealthy(host=url, status=answer.status_code)


@step(
    "stateless.add_to_lb",
    output=AddedToBalancer,
    reads={PROVISION_REPLACEMENT: HostProvisioned},
    inputs=HostReplacementInputs,
)
async def add_to_load_balancer(ctx: StepContext) -> AddedToBalancer:
    inputs = ctx.inputs_as(HostReplacementInputs)
    await ctx.assert_lock()
    url = ctx.output_of(PROVISION_REPLACEMENT, HostProvisioned).host
    await ctx.env.store.services.add(
        inputs.service, url, replaces=inputs.failed_host, workflow=ctx.workflow.id
    )
    return AddedToBalancer(host=url)


@step("stateless.hold_for_forensics", output=HostHeld, inputs=HostReplacementInputs)
async def hold_failed_host(ctx: StepContext) -> HostHeld:
    inputs = ctx.inputs_as(HostReplacementInputs)
    await ctx.env.store.services.hold_for_forensics(
        inputs.service, inputs.failed_host, f"replaced by workflow {ctx.workflow.id}"
    )
    return HostHeld(host=inputs.failed_host, state="forensics")
