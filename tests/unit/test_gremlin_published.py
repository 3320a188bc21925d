"""The gremlin client and `ratequeue-chaos agent` against what Gremlin publishes, not against each
other: the requests the client sends are the ones gremlin-python writes, its reading of attacks,
halts and executions is checked on response bodies in the published shapes (fixtures in
`gremlin_published/`, whose README says where each comes from), and the agent takes the SDK's
bodies as they are.

Not for: attacks carried out by the agent over HTTP (tests/chaos/test_gremlin_agent.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from chaos.agent.commands import parse_command, parse_target
from chaos.errors import AgentError, FaultError
from chaos.faults.base import NodeTarget
from chaos.faults.gremlin import GremlinClient, GremlinFaultBackend

PUBLISHED = Path(__file__).parent / "gremlin_published"
PRIMARY = NodeTarget(name="s0-primary", role="primary", port=7000)
GUID = "8a2b7f0e-5d1c-4f3a-9e6b-2c4d8f1a0b3e"


def published(name: str) -> Any:
    return json.loads((PUBLISHED / name).read_text())


class PublishedGremlin:
    """An httpx transport that answers as Gremlin does: the guid as text on create, 202 on a
    halt, and `GET /attacks/{guid}` from a list of published bodies (the last one repeats)."""

    def __init__(self, *attacks: str, halt_status: int = 202) -> None:
        self.attacks = [published(name) for name in attacks]
        self.halt_status = halt_status
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if request.method == "POST" and path == "/v1/attacks":
            return httpx.Response(201, text=GUID)
        if request.method == "DELETE" and path == f"/v1/attacks/{GUID}":
            return httpx.Response(self.halt_status)
        if request.method == "GET" and path == f"/v1/attacks/{GUID}":
            body = self.attacks.pop(0) if len(self.attacks) > 1 else self.attacks[0]
            return httpx.Response(200, json=body)
        if request.method == "GET" and path == "/v1/executions":
            return httpx.Response(200, json=published("executions.json"))
        return httpx.Response(404, json={"message": f"not published: {request.method} {path}"})

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]


def backend(gremlin: PublishedGremlin, **options: Any) -> GremlinFaultBackend:
    client = GremlinClient("the-key", team_id="the-team", base_url="https://api.gremlin.com/v1",
                           transport=httpx.MockTransport(gremlin))  # fmt: skip
    return GremlinFaultBackend(client, poll_interval=0.01, **options)


def flags(args: list[str]) -> set[str]:
    return set(args)


def test_an_attack_is_created_with_post_attacks_and_the_sdks_body() -> None:
    gremlin = PublishedGremlin("attack_running.json")
    backend(gremlin).inject("pause", PRIMARY, length=30)
    (create,) = gremlin.sent("POST", "/v1/attacks")
    assert create.headers["Authorization"] == "Key the-key"
    assert create.url.params["teamId"] == "the-team"
    body = json.loads(create.content)
    assert body["target"] == {"type": "Exact", "hosts": {"ids": ["s0-primary"]}}
    assert gremlin.sent("POST", "/v1/attacks/new") == []


def test_a_kill_is_the_sdks_process_killer_of_one_process_once() -> None:
    sdk = published("sdk_process_killer_on_hosts.json")["command"]
    ours = GremlinFaultBackend(client=object()).command_for("kill", PRIMARY)  # type: ignore[arg-type]
    assert (ours["type"], ours["commandType"]) == (sdk["type"], sdk["commandType"])
    # The SDK's `-f` is its full_match setter's slip, not something asked for.
    assert flags(ours["args"]) == flags(sdk["args"]) - {"-f"}
    assert ours["args"][ours["args"].index("-l") + 1] == ours["args"][ours["args"].index("-i") + 1]


@pytest.mark.parametrize(
    ("action", "short_type", "command_type"),
    [("kill", "process_killer", "Process Killer"), ("cpu", "cpu", "CPU"),
     ("blackhole", "blackhole", "Blackhole"), ("stop", "shutdown", "Shutdown")],
)  # fmt: skip
def test_every_command_carries_the_sdks_command_type(
    action: str, short_type: str, command_type: str
) -> None:
    ours = GremlinFaultBackend(client=object()).command_for(action, PRIMARY, length=5)  # type: ignore[arg-type]
    assert (ours["type"], ours["commandType"]) == (short_type, command_type)


def test_rolling_back_a_halted_attack_ends_at_user_halted_complete() -> None:
    gremlin = PublishedGremlin("attack_running.json", "attack_running.json",
                               "attack_user_halted.json")  # fmt: skip
    fault = backend(gremlin, halt_timeout=5).inject("pause", PRIMARY, length=30)
    assert fault.details["stage"] == "Running"
    fault.rollback()
    assert (fault.details["stage"], fault.details["lifecycle"]) == ("UserHalted", "Complete")
    assert len(gremlin.sent("DELETE", f"/v1/attacks/{GUID}")) == 1


def test_a_kill_that_finished_before_the_first_poll_is_injected() -> None:
    gremlin = PublishedGremlin("attack_successful.json")
    fault = backend(gremlin).inject("kill", PRIMARY)
    assert (fault.details["stage"], fault.details["lifecycle"]) == ("Successful", "Complete")


def test_halting_an_attack_that_already_finished_is_done_too() -> None:
    gremlin = PublishedGremlin("attack_running.json", "attack_successful.json", halt_status=400)
    fault = backend(gremlin).inject("pause", PRIMARY, length=30)
    fault.rollback()
    assert fault.details["stage"] == "Successful"


def test_an_error_lifecycle_fails_the_injection_with_the_stage() -> None:
    gremlin = PublishedGremlin("attack_failed.json")
    with pytest.raises(FaultError, match="TargetNotFound"):
        backend(gremlin).inject("pause", PRIMARY, length=30)


@pytest.mark.parametrize(
    ("wait", "attacks"),
    [
        (lambda c: c.wait_until_running(GUID, timeout=0.2, interval=0.01), ["attack_failed.json"]),
        (lambda c: c.wait_until_finished(GUID, timeout=0.2, interval=0.01),
         ["attack_user_halted.json"]),
    ],
)  # fmt: skip
def test_a_finished_lifecycle_ends_every_wait(
    wait: Callable[[GremlinClient], Any], attacks: list[str]
) -> None:
    gremlin = PublishedGremlin(*attacks)
    client = GremlinClient("k", transport=httpx.MockTransport(gremlin))
    assert wait(client).finished


def test_a_halt_that_never_finishes_fails_after_the_halt_timeout() -> None:
    gremlin = PublishedGremlin("attack_running.json")
    fault = backend(gremlin, halt_timeout=0.2).inject("pause", PRIMARY, length=30)
    with pytest.raises(FaultError, match=r"not finished after 0\.2 s"):
        fault.rollback()


def test_executions_are_read_as_published() -> None:
    gremlin = PublishedGremlin("attack_running.json")
    client = GremlinClient("k", transport=httpx.MockTransport(gremlin))
    (execution,) = client.executions(GUID)
    assert [s["stage"] for s in execution["service_states"]][-1] == "Successful"
    (request,) = gremlin.sent("GET", "/v1/executions")
    assert request.url.params["taskId"] == GUID


@pytest.mark.parametrize(
    ("fixture", "ids"),
    [("sdk_process_killer_on_hosts.json", ["s0-primary"]),
     ("sdk_cpu_on_containers.json", ["c0ffee"])],
)  # fmt: skip
def test_the_agent_takes_the_sdks_bodies(fixture: str, ids: list[str]) -> None:
    body = published(fixture)
    assert parse_target(body["target"]) == ids
    assert parse_command(body["command"]).type == body["command"]["type"]


def test_the_agent_refuses_a_command_type_that_is_not_the_types() -> None:
    command = {"type": "process_killer", "commandType": "CPU", "args": ["-p", "redis-server"]}
    with pytest.raises(AgentError) as refused:
        parse_command(command)
    assert (refused.value.status, refused.value.field) == (400, "command.commandType")


def test_the_agent_takes_a_number_with_leading_zeros_as_gremlins_cli_does() -> None:
    # Go's Atoi reads "0...01" as 1; Python's int() refuses past 4,300 characters, zeros or not.
    command = {"type": "process_pause", "args": ["-l", "0" * 4400 + "30"]}
    assert parse_command(command).length == 30
