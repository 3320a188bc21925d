"""Host replacement for stateless services (the stateless profile's workflow, the seed's
replace-host runbook): take the failed host out of the load balancer, provision a replacement
through the actuator, verify its healthcheck, put it in the balancer, hold the failed host for
forensics. Every step is idempotent. Not for: Redis shards (see `ratequeue_promotion`)."""

from __future__ import annotations

from typing import Any

import httpx

from lazarus_lite.service_registry import ServiceRegistry
from lazarus_lite.workflow import Escalate, StepContext, step


def _host(ctx: StepContext) -> str:
    return str(ctx.inputs["host"]).rstrip("/")


@step("stateless.remove_from_lb")
async def remove_from_load_balancer(ctx: StepContext) -> dict[str, Any]:
    await ctx.assert_lock()
    removed = await ServiceRegistry(ctx.env.control).remove(ctx.inputs["service"], _host(ctx))
    return {"removed": removed, "host": _host(ctx)}


@step("stateless.provision_replacement")
async def provision_replacement_host(ctx: StepContext) -> dict[str, Any]:
    actuator = ctx.env.collaborators.get("actuator")
    if actuator is None:
        raise Escalate("no actuator configured: a person must provision the replacement")
    command = ctx.inputs.get("command")
    if not command:
        raise Escalate(f"the profile of {ctx.inputs['service']} gives no command to start a host")
    await ctx.assert_lock()
    url = await actuator.provision_instance(
        ctx.inputs["service"],
        f"{ctx.inputs['service']}-{ctx.workflow.id[-8:]}",
        list(command),
        ctx.inputs.get("healthcheck_path", "/healthz"),
    )
    return {"host": url}


@step("stateless.verify_health")
async def verify_replacement_health(ctx: StepContext) -> dict[str, Any]:
    url = ctx.output("provision_replacement")["host"]
    path = ctx.inputs.get("healthcheck_path", "/healthz")
    async with httpx.AsyncClient(timeout=3) as http:
        answer = await http.get(f"{url}{path}")
    if answer.status_code != 200:
        raise RuntimeError(f"{url}{path} answered {answer.status_code}")
    return {"host": url, "status": answer.status_code}


@step("stateless.add_to_lb")
async def add_to_load_balancer(ctx: StepContext) -> dict[str, Any]:
    await ctx.assert_lock()
    url = ctx.output("provision_replacement")["host"]
    await ServiceRegistry(ctx.env.control).add(
        ctx.inputs["service"], url, replaces=_host(ctx), workflow=ctx.workflow.id
    )
    return {"host": url}


@step("stateless.hold_for_forensics")
async def hold_failed_host(ctx: StepContext) -> dict[str, Any]:
    await ServiceRegistry(ctx.env.control).hold_for_forensics(
        ctx.inputs["service"], _host(ctx), f"replaced by workflow {ctx.workflow.id}"
    )
    return {"host": _host(ctx), "state": "forensics"}
