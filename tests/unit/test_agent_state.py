"""The fault agent's decisions without HTTP: `Agent` refuses what the API refuses, with the
same status and field, and nothing is attacked (every request here is refused before a thread
starts; the only target's pid is this test's own and nothing may signal it).

Not for: the HTTP answers and the published schema (tests/chaos/test_gremlin_agent.py,
tests/test_fuzz_published_schemas.py), or running attacks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from chaos.agent.commands import parse_command
from chaos.agent.state import Agent
from chaos.agent.targets import TargetSource
from chaos.errors import AgentError
from chaos.faults.base import NodeTarget
from chaos.faults.gremlin import GremlinFaultBackend, hosts_target


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    targets = tmp_path / "targets.yaml"
    targets.write_text(
        f"targets: [{{name: s0-primary, role: primary, port: 7000, pid: {os.getpid()}}}]\n"
    )
    return Agent(api_key="k", allow={"s0-primary"}, targets=TargetSource(targets), team_id="t")


def refusal(call: Any, *args: Any) -> tuple[int, str | None]:
    with pytest.raises(AgentError) as caught:
        call(*args)
    return caught.value.status, caught.value.field


def exact(*ids: str) -> dict[str, Any]:
    return hosts_target(*ids)


def test_the_key_comes_first_then_the_team(agent: Agent) -> None:
    assert refusal(agent.authorize, None, "t") == (401, None)
    assert refusal(agent.authorize, "wrong", "t") == (401, None)
    assert refusal(agent.authorize, "k", "other") == (403, "teamId")
    agent.authorize("k", "t")


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        ([1], (400, "body")),
        ({"target": exact("s0-primary")}, (400, "command")),
        ({"command": {"type": "latency"}, "target": exact("elsewhere")}, (403, "target")),
        ({"command": {"type": "nope"}, "target": exact("s0-primary")}, (400, "command.type")),
        (
            {"command": {"type": "blackhole", "args": ["-p", "1"]}, "target": exact("s0-primary")},
            (400, "command.args -p"),
        ),
        (
            {
                "command": {"type": "process_killer", "args": ["-p", "sh"]},
                "target": exact("s0-primary"),
            },
            (400, "command.args -p"),
        ),
        (
            {"command": {"type": "shutdown", "args": ["-r"]}, "target": exact("s0-primary")},
            (400, "command.args -r"),
        ),
    ],
)
def test_a_refused_request_starts_no_attack(
    agent: Agent, body: Any, answer: tuple[int, str | None]
) -> None:
    assert refusal(agent.create, body) == answer
    assert agent.attacks == {}


def test_unknown_guids_are_404(agent: Agent) -> None:
    assert refusal(agent.get, "no-such") == (404, None)
    assert refusal(agent.halt, "no-such") == (404, None)
    assert agent.halt_all() == []


def test_a_command_becomes_a_plan() -> None:
    plan = parse_command({"type": "latency", "args": ["latency", "-m", "150", "-l", "5"]})
    assert (plan.action, plan.length, plan.params) == ("latency", 5, {"latency_ms": 150})
    assert refusal(parse_command, {"type": "latency", "args": ["-l", "5"]}) == (
        400,
        "command.args -m",
    )


def test_a_gremlin_cpu_command_becomes_a_cpu_plan() -> None:
    # The shape the gremlin backend sends (gremlin-python's GremlinCPUAttack flags).
    sent = GremlinFaultBackend(client=object()).command_for(  # type: ignore[arg-type]
        "cpu", NodeTarget(name="s0-primary", role="primary", port=7000), cores=2, length=4
    )
    assert sent == {"type": "cpu", "commandType": "CPU", "args": ["-l", "4", "-c", "2"]}
    plan = parse_command(sent)
    assert (plan.action, plan.length, plan.params) == ("cpu", 4, {"cores": 2})
    every_core = parse_command({"type": "cpu", "args": ["-l", "9", "-a", "-p", "100"]})
    assert (every_core.action, every_core.length, every_core.params) == ("cpu", 9, {})
    assert parse_command({"type": "cpu", "args": []}).params == {"cores": 1}  # Gremlin's default


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["-p", "50"], "command.args -p"),
        (["-c", "0"], "command.args -c"),
        (["-c", "2", "-a"], "command.args -c"),
        (["-m", "5"], "command.args[0]"),
        (["-c", "257"], "command.args -c"),
        (["-l", "86401"], "command.args -l"),  # the cpu fault's bound: a day
        (["--all_cores"], "command.args[0]"),  # not a Gremlin CLI flag
        (["--cores", "2"], "command.args[0]"),
    ],
)
def test_a_cpu_command_this_agent_cannot_carry_out_is_refused(args: list[str], field: str) -> None:
    assert refusal(parse_command, {"type": "cpu", "args": args}) == (400, field)
