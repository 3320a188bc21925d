"""How an attack is carried out: whether its plan may touch a node at all (`check_plan`, before
the attack exists), what the local backend is asked to do on each target (`inject_plan`), and
the run itself (`carry_out`: distribute, inject, wait out the length or a halt, roll back).

Not for: parsing commands (`commands`), keeping attacks by guid (`state`), or the signals and
iptables rules themselves (`chaos.faults.local`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from chaos.agent.attacks import Attack
from chaos.agent.commands import Plan
from chaos.agent.targets import AgentTarget
from chaos.errors import AgentError, FaultError
from chaos.faults.base import DEFAULT_LENGTH, InjectedFault
from chaos.faults.gremlin import SUCCESSFUL, USER_HALTED, programs_of
from chaos.faults.local.backend import LocalFaultBackend
from chaos.faults.local.peer_address import peer_address
from common.validation import quoted

log = logging.getLogger(__name__)


def check_plan(plan: Plan, target: AgentTarget) -> None:
    """Refuse (AgentError 400, naming the flag) a plan that would reach beyond `target`: another
    program, another port, another address, or a restart nobody said how to do."""
    node = target.node
    if plan.process is not None:
        programs = (target.expect,) if target.expect else programs_of(node)
        if plan.process not in programs:
            runs = " or ".join(map(repr, programs))
            problem = f"{node.name} runs {runs}, not {quoted(plan.process)}"
            raise AgentError(400, problem, "command.args -p")
    if plan.action in ("blackhole", "latency"):
        bad = [p for p in plan.ports or [] if p != node.port]
        if bad:
            raise AgentError(
                400,
                f"{node.name} listens on {node.port} only; refusing ports {bad}",
                "command.args -p",
            )
        peer = peer_address(node, None)
        allowed = {peer} if plan.action == "latency" else {peer, node.host}
        for host in plan.hosts or []:
            if host not in allowed:
                raise AgentError(
                    400,
                    f"{node.name} is reached at {sorted(allowed)} here, not {quoted(host)}",
                    "command.args -h",
                )
    if plan.action == "stop" and plan.reboot and not target.command:
        raise AgentError(
            400, f"{node.name} has no restart command in the targets file", "command.args -r"
        )


def inject_plan(backend: LocalFaultBackend, plan: Plan, target: AgentTarget) -> list[InjectedFault]:
    """Inject `plan` on one target: one fault, or one per address a network attack names."""
    node = target.node
    params: dict[str, Any] = {}
    if plan.action in ("kill", "pause", "stop") and target.expect:
        params["expect"] = target.expect
    if plan.action in ("blackhole", "latency"):
        if "latency_ms" in plan.params:
            params["latency_ms"] = plan.params["latency_ms"]
        if plan.action == "blackhole" and plan.ports:
            params["ports"] = plan.ports
        hosts = plan.hosts or [peer_address(node, None)]
        return [backend.inject(plan.action, node, peer_host=h, **params) for h in hosts]
    if plan.action == "stop" and target.command:
        params["command"] = target.command
    if plan.action == "cpu":
        # The loops end with the attack's length by themselves, also if the agent dies.
        params["length"] = plan.length or DEFAULT_LENGTH
        if "cores" in plan.params:
            params["cores"] = plan.params["cores"]
    return [backend.inject(plan.action, node, **params)]


def carry_out(attack: Attack, backend: LocalFaultBackend) -> None:
    """Run `attack` to its end (the attack's own thread): it always ends, Failed with the
    reason if anything raised, and its faults are rolled back."""
    try:
        _run_stages(attack, backend)
    except Exception as error:  # never leave an attack without an end
        log.exception("attack %s failed", attack.guid)
        attack.rollback()
        attack.finish("Failed", f"{type(error).__name__}: {error}")


def _run_stages(attack: Attack, backend: LocalFaultBackend) -> None:
    plan = attack.plan
    attack.stage = "Distributed"
    delay = plan.params.get("delay_minutes", 0) * 60
    if delay and attack.halt.wait(delay):
        attack.finish(USER_HALTED, "halted before the shutdown")
        return
    for target in attack.nodes:
        if attack.halt.is_set():
            break
        try:
            attack.faults += inject_plan(backend, plan, target)
        except FaultError as error:
            attack.stages[target.node.name] = "Failed"
            attack.rollback()
            attack.finish("Failed", str(error))
            return
        attack.stages[target.node.name] = "Running"
    attack.start_time = time.time()
    if plan.action == "stop":
        attack.stage = "Running"
        if plan.reboot:
            for fault in attack.faults:
                fault.rollback()
        attack.finish(SUCCESSFUL, "")
        return
    if not attack.halt.is_set():
        attack.stage = "Running"
    halted = attack.halt.wait(plan.length or DEFAULT_LENGTH)
    error = attack.rollback()
    if error:
        attack.finish("Failed", f"rollback: {error}")
    else:
        attack.finish(USER_HALTED if halted else SUCCESSFUL, "")
