"""The gremlin fault backend against `ratequeue-chaos agent` over real HTTP (uvicorn in a thread on
a free loopback port), with real redis-server processes as targets: attacks pause and resume a
node, stages are polled, and a bad key, a target off the allowlist or a malformed command is
refused with nothing done. Every attack, rule and process is removed at teardown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry
from typer.testing import CliRunner

from chaos.agent.app import create_app
from chaos.agent.state import Agent
from chaos.agent.targets import TargetSource, load_targets
from chaos.cli import app as chaos_app
from chaos.errors import GremlinError
from chaos.faults.base import NodeTarget
from chaos.faults.gremlin import GremlinClient, GremlinFaultBackend, hosts_target
from chaos.faults.local.backend import LocalFaultBackend
from chaos.faults.local.cpu_burst import is_loop
from chaos.faults.local.iptables import iptables_unavailable_reason
from chaos.processes import process_state, read_cmdline, running
from chaos.testbed import TestbedNode, TestbedState
from common.nodes import CLIENT_HOST
from common.redis_processes import free_port
from ratequeue.local_cluster import ShardNode, start_node
from tests.conftest import ServedApp

API_KEY = f"test-key-{uuid.uuid4().hex}"
TEAM = "team-test"
NO_IPTABLES = iptables_unavailable_reason()


def answers(node: ShardNode, host: str | None = None, timeout: float = 0.5) -> bool:
    conn = redis.Redis(host=host or node.host, port=node.port, socket_timeout=timeout,
                       socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))  # fmt: skip
    try:
        return bool(conn.ping())
    except redis.RedisError:
        return False
    finally:
        conn.close()


def target_of(node: ShardNode) -> NodeTarget:
    return NodeTarget(name=node.name, role=node.role, shard=node.shard, host=node.host,
                      port=node.port, peer_host=node.peer_host, pid=node.pid)  # fmt: skip


def redis_target(node: ShardNode) -> dict[str, Any]:
    return {"name": node.name, "role": node.role, "shard": node.shard, "port": node.port,
            "peer_host": node.peer_host, "pid": node.pid}  # fmt: skip


class ServedAgent:
    """`ratequeue-chaos agent`'s app on a free loopback port, its nodes, and a client for it."""

    def __init__(
        self,
        tmp_path: Path,
        nodes: list[ShardNode],
        allow: set[str],
        others: list[dict[str, Any]] | None = None,
    ) -> None:
        self.nodes = {n.name: n for n in nodes}
        path = tmp_path / "targets.yaml"
        path.write_text(yaml.safe_dump({"targets": [*map(redis_target, nodes), *(others or [])]}))
        self.backend = LocalFaultBackend(chain=f"RQA{uuid.uuid4().hex[:10].upper()}")
        self.agent = Agent(api_key=API_KEY, allow=allow, targets=TargetSource(path),
                           backend=self.backend, team_id=TEAM)  # fmt: skip
        self.app = ServedApp(create_app(self.agent))
        self.url = f"{self.app.url}/v1"
        self.client = GremlinClient(API_KEY, team_id=TEAM, base_url=self.url)
        self.gremlin = GremlinFaultBackend(self.client, poll_interval=0.05, start_timeout=10,
                                           halt_timeout=10)  # fmt: skip

    def start(self) -> None:
        self.app.__enter__()

    def stop(self) -> None:
        self.app.__exit__(None, None, None)
        self.agent.halt_all(wait=10)
        self.client.close()
        if NO_IPTABLES is None:
            self.backend.cleanup_all()

    def post(self, body: Any, key: str = API_KEY) -> httpx.Response:
        return httpx.post(f"{self.url}/attacks", params={"teamId": TEAM}, json=body,
                          headers={"Authorization": f"Key {key}"}, timeout=10)  # fmt: skip


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedAgent]:
    nodes: list[ShardNode] = []
    agent: ServedAgent | None = None
    try:
        nodes.append(start_node("s0-primary", "primary", "s0", tmp_path))
        nodes.append(start_node("s1-primary", "primary", "s1", tmp_path))
        agent = ServedAgent(tmp_path, nodes, allow={"s0-primary"})
        agent.start()
        yield agent
    finally:
        if agent is not None:
            agent.stop()
        for node in nodes:
            node.stop()


def pause_body(name: str, length: int = 60) -> dict[str, Any]:
    return {"command": {"type": "process_pause", "args": ["-l", str(length), "-p", "redis-server"]},
            "target": hosts_target(name)}  # fmt: skip


def test_pause_attack_stops_the_node_and_halting_resumes_it(served: ServedAgent) -> None:
    node = served.nodes["s0-primary"]
    fault = served.gremlin.inject("pause", target_of(node))
    assert fault.details["stage"] == "Running"
    assert fault.details["command"]["type"] == "process_pause"
    assert not answers(node)
    fault.rollback()
    assert fault.details["stage"] == "UserHalted"
    assert answers(node)


def test_stage_polling_reports_running_then_halted(served: ServedAgent) -> None:
    body = pause_body("s0-primary")
    guid = served.client.create_attack(body["command"], body["target"])
    seen = [served.client.stage(guid)]
    assert served.client.wait_until_running(guid, timeout=10, interval=0.02).stage == "Running"
    seen.append(served.client.stage(guid))
    served.client.halt_attack(guid)
    seen.append(served.client.wait_until_finished(guid, timeout=10, interval=0.02).stage)
    assert seen[-2:] == ["Running", "UserHalted"]
    assert seen[0] in ("Pending", "Distributed", "Running")
    attack = served.client.get_attack(guid)
    assert attack["stageLifecycle"] == "Complete" and attack["endTime"]
    assert [e["stage"] for e in served.client.executions(guid)] == ["UserHalted"]
    assert answers(served.nodes["s0-primary"])


def test_a_length_rolls_the_attack_back_by_itself(served: ServedAgent) -> None:
    node = served.nodes["s0-primary"]
    body = pause_body(node.name, length=1)
    guid = served.client.create_attack(body["command"], body["target"])
    assert served.client.wait_until_running(guid, timeout=10, interval=0.02).stage == "Running"
    assert not answers(node, timeout=0.3)
    assert served.client.wait_until_finished(guid, timeout=10).stage == "Successful"
    assert answers(node)


def test_a_cpu_attack_keeps_cores_busy_until_halted(served: ServedAgent) -> None:
    fault = served.gremlin.inject("cpu", target_of(served.nodes["s0-primary"]), cores=1, length=30)
    assert fault.details["command"] == {"type": "cpu", "commandType": "CPU",
                                       "args": ["-l", "30", "-c", "1"]}  # fmt: skip
    assert fault.details["stage"] == "Running"
    pids = served.agent.attacks[fault.details["attack"]].faults[0].details["pids"]
    deadline = time.monotonic() + 5  # a child reads as its parent until it has exec'd
    while not is_loop(read_cmdline(pids[0]), served.backend.cpu_bursts.tag):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    loops = served.backend.cpu_bursts.leftovers()  # the agent's loops, found in /proc
    assert loops == pids
    fault.rollback()
    assert fault.details["stage"] == "UserHalted"
    deadline = time.monotonic() + 5
    while running(loops[0]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not running(loops[0])


def test_a_wrong_api_key_gets_401_and_nothing_happens(served: ServedAgent) -> None:
    answer = served.post(pause_body("s0-primary"), key="not-the-key")
    assert answer.status_code == 401
    assert answer.json()["error"] == "Unauthorized"
    assert "Traceback" not in answer.text
    wrong = GremlinClient("wrong", team_id=TEAM, base_url=served.url)
    with pytest.raises(GremlinError) as refused:
        GremlinFaultBackend(wrong).inject("pause", target_of(served.nodes["s0-primary"]))
    wrong.close()
    assert refused.value.status == 401
    assert httpx.get(f"{served.url}/attacks", timeout=5).status_code == 401
    assert served.agent.attacks == {}
    assert answers(served.nodes["s0-primary"])


def test_a_target_outside_the_allowlist_gets_403_and_nothing_happens(
    served: ServedAgent,
) -> None:
    outsider = served.nodes["s1-primary"]
    answer = served.post(pause_body(outsider.name))
    assert answer.status_code == 403
    assert "s1-primary" in answer.json()["message"]
    with pytest.raises(GremlinError) as refused:
        served.gremlin.inject("kill", target_of(outsider))
    assert refused.value.status == 403
    assert served.agent.attacks == {}
    assert answers(outsider) and outsider.alive()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"command": {"type": "latency", "args": ["-l", "10"]},
          "target": hosts_target("s0-primary")}, "command.args -m"),
        ({"command": {"type": "memory", "args": ["-g", "1"]},
          "target": hosts_target("s0-primary")}, "command.type"),
        ({"command": {"type": "process_pause", "args": "-l 10"},
          "target": hosts_target("s0-primary")}, "command.args"),
        ({"command": {"type": "process_pause", "args": ["-l", "soon"]},
          "target": hosts_target("s0-primary")}, "command.args -l"),
        ({"command": {"type": "process_pause", "args": ["--frobnicate"]},
          "target": hosts_target("s0-primary")}, "command.args[0]"),
        ({"command": {"type": "process_killer", "args": ["-p", "sshd"]},
          "target": hosts_target("s0-primary")}, "command.args -p"),
        ({"command": {"type": "blackhole", "args": ["-p", "22"]},
          "target": hosts_target("s0-primary")}, "command.args -p"),
        ({"command": {"type": "process_pause", "args": []},
          "target": {"type": "Random", "percent": 100}}, "target.type"),
        ({"command": {"type": "process_pause", "args": []}}, "target"),
    ],
)  # fmt: skip
def test_a_malformed_command_gets_400_naming_the_field(
    served: ServedAgent, body: dict[str, Any], field: str
) -> None:
    answer = served.post(body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == field
    assert served.agent.attacks == {}
    assert answers(served.nodes["s0-primary"])


@pytest.mark.parametrize(
    ("kind", "args", "field"),
    [
        ("blackhole", ["-l", "10", "-p", "\u0668\u0660"], "command.args -p"),  # Arabic-Indic 80
        ("process_pause", ["-l", "\u0661\u0660"], "command.args -l"),  # Arabic-Indic 10
        ("process_pause", ["-l", "1_0"], "command.args -l"),
        ("process_pause", ["-l", " 10"], "command.args -l"),
    ],
)  # fmt: skip
def test_a_number_not_in_ascii_digits_gets_400_naming_the_flag(
    served: ServedAgent, kind: str, args: list[str], field: str
) -> None:
    answer = served.post({"command": {"type": kind, "args": args},
                          "target": hosts_target("s0-primary")})  # fmt: skip
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == field
    assert "is not an integer (ASCII digits 0-9" in answer.json()["message"], answer.text
    assert served.agent.attacks == {}
    assert answers(served.nodes["s0-primary"])


@pytest.mark.parametrize("digits", [20, 5000])
def test_a_number_of_more_digits_than_int64_gets_400_naming_the_flag(
    served: ServedAgent, digits: int
) -> None:
    answer = served.post({"command": {"type": "process_pause", "args": ["-l", "1" * digits]},
                          "target": hosts_target("s0-primary")})  # fmt: skip
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == "command.args -l"
    assert "is outside" in answer.json()["message"], answer.text
    assert served.agent.attacks == {}


def test_a_body_that_is_not_json_gets_400_and_an_unknown_attack_404(served: ServedAgent) -> None:
    answer = httpx.post(f"{served.url}/attacks", content=b"{not json",
                        params={"teamId": TEAM}, headers={"Authorization": f"Key {API_KEY}"},
                        timeout=5)  # fmt: skip
    assert answer.status_code == 400 and answer.json()["field"] == "body"
    with pytest.raises(GremlinError) as missing:
        served.client.get_attack("no-such-attack")
    assert missing.value.status == 404


@pytest.mark.skipif(NO_IPTABLES is not None, reason=f"needs iptables: {NO_IPTABLES}")
def test_a_blackhole_attack_cuts_the_peer_path_until_halted(served: ServedAgent) -> None:
    node = served.nodes["s0-primary"]
    fault = served.gremlin.inject("blackhole", target_of(node))
    assert fault.details["command"]["args"][-2:] == ["-h", node.peer_host]
    assert not answers(node, host=node.peer_host)
    assert answers(node)
    fault.rollback()
    assert answers(node, host=node.peer_host)
    assert served.backend.rules() == []


def test_targets_come_from_a_testbed_state_file(tmp_path: Path) -> None:
    state = TestbedState(api="http://127.0.0.1:1", control="redis://127.0.0.1:2/0", nodes=[
        TestbedNode(name="s0-primary", role="primary", shard="s0", host="127.0.0.1", port=7001,
                    pid=11),
        TestbedNode(name="api", role="api", host="127.0.0.1", port=8000, pid=12),
    ])  # fmt: skip
    (tmp_path / "testbed.json").write_text(state.model_dump_json())
    targets = load_targets(tmp_path)
    assert targets["s0-primary"].node.peer_host == "127.0.0.2"
    assert targets["s0-primary"].node.pid == 11
    assert targets["api"].node.peer_host is None


def test_a_process_killer_attack_kills_the_node(served: ServedAgent) -> None:
    node = served.nodes["s0-primary"]
    fault = served.gremlin.inject("kill", target_of(node))
    assert fault.details["command"]["args"] == ["-l", "1", "-i", "1", "-p", "redis-server", "-e"]
    assert node.process is not None and node.process.wait(timeout=5) == -9
    fault.rollback()
    assert fault.details["lifecycle"] == "Complete"
    assert fault.details["stage"] in ("Successful", "UserHalted")


# -- hostile requests: a 4xx in the agent's envelope, never a 5xx ---------------------------------


def test_a_body_nested_thousands_deep_gets_400_not_500(served: ServedAgent) -> None:
    content = b'{"command": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    answer = httpx.post(f"{served.url}/attacks", content=content, params={"teamId": TEAM},
                        headers={"Authorization": f"Key {API_KEY}"}, timeout=5)  # fmt: skip
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == "body" and "nested deeper" in answer.json()["message"]
    assert served.agent.attacks == {}


def test_a_body_over_64_kib_gets_413_and_nothing_happens(served: ServedAgent) -> None:
    body = pause_body("s0-primary")
    body["command"]["args"] += ["-l", "1" * 70_000]
    answer = served.post(body)
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"] == "Content Too Large"
    assert served.agent.attacks == {} and answers(served.nodes["s0-primary"])


@pytest.mark.parametrize(("method", "path", "allow"),
                         [("PUT", "/attacks", "DELETE, GET, POST"),
                          ("PATCH", "/attacks/active", "GET"),
                          ("POST", "/attacks/some-guid", "DELETE, GET")])  # fmt: skip
def test_a_method_a_path_does_not_serve_gets_405_with_allow(
    served: ServedAgent, method: str, path: str, allow: str
) -> None:
    answer = httpx.request(method, f"{served.url}{path}", timeout=5)
    assert answer.status_code == 405, answer.text
    assert answer.headers["allow"] == allow
    assert answer.json()["error"] == "Method Not Allowed"


def test_an_unknown_path_gets_404_in_the_agents_envelope(served: ServedAgent) -> None:
    answer = httpx.get(f"{served.url}/nothing/here", timeout=5)
    assert answer.status_code == 404
    assert answer.json()["error"] == "Not Found" and "/v1/nothing/here" in answer.json()["message"]


def test_a_long_value_is_not_echoed_back_whole(served: ServedAgent) -> None:
    body = pause_body("s0-primary")
    body["command"]["type"] = "x" * 50_000
    answer = served.post(body)
    assert answer.status_code == 400 and answer.json()["field"] == "command.type"
    assert "xxxx" in answer.json()["message"] and len(answer.text) < 400


def test_the_key_is_checked_before_the_query(served: ServedAgent) -> None:
    answer = httpx.get(f"{served.url}/executions", timeout=5)
    assert answer.status_code == 401, answer.text


def test_chaos_agent_refuses_a_non_ascii_key_naming_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    targets = tmp_path / "targets.yaml"
    targets.write_text("targets: [{name: n, role: primary, port: 1}]\n")
    monkeypatch.setenv("AGENT_TEST_KEY", "clé-of-the-agent")
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("the agent started"))
    result = CliRunner().invoke(chaos_app, ["agent", "--targets", str(targets), "--allow", "n",
                                            "--api-key-env", "AGENT_TEST_KEY"])  # fmt: skip
    assert isinstance(result.exception, SystemExit) and result.exit_code == 2, result.output
    assert "AGENT_TEST_KEY: the API key must be visible ASCII" in " ".join(result.output.split())


# -- the program, not a word among its arguments ------------------------------------------------


@pytest.mark.parametrize(
    "decoy",
    [
        # a shell that waits for its `sleep`, with the words as its own arguments
        {"argv": ["sh", "-c", "sleep 300; true", "redis-server", "127.0.0.1:{port}"],
         "role": "primary"},
        {"argv": [sys.executable, "-c", "import time; time.sleep(300)  # redis-server :{port}"],
         "role": "replica"},
        # -c with its code attached: the next argument is the code's, not a script
        {"argv": [sys.executable, "-cimport time; time.sleep(300)", "redis-server",
                  "127.0.0.1:{port}"], "role": "primary"},
        {"argv": ["sh", "-c", "sleep 300; true", "redis-server"], "role": "api",
         "expect": "redis-server"},
    ],
)  # fmt: skip
@pytest.mark.parametrize("attack", ["process_pause", "process_killer"])
def test_a_process_that_only_names_the_program_in_its_arguments_is_not_signalled(
    tmp_path: Path, decoy: dict[str, Any], attack: str
) -> None:
    port = free_port((CLIENT_HOST,))
    # A session of its own, so the shell's `sleep` goes with it at the end.
    process = subprocess.Popen([arg.format(port=port) for arg in decoy["argv"]],
                               start_new_session=True)  # fmt: skip
    agent: ServedAgent | None = None
    try:
        target = {"name": "decoy", "role": decoy["role"], "port": port, "pid": process.pid,
                  **({"expect": decoy["expect"]} if "expect" in decoy else {})}  # fmt: skip
        agent = ServedAgent(tmp_path, [], allow={"decoy"}, others=[target])
        agent.start()
        command = {"type": attack, "args": ["-l", "30", "-p", "redis-server"]}
        guid = agent.client.create_attack(command, hosts_target("decoy"))
        ended = agent.client.wait_until_finished(guid, timeout=10, interval=0.02)
        assert (ended.stage, ended.stageLifecycle) == ("Failed", "Error")
        assert "refusing to signal" in agent.client.get_attack(guid)["output"]
        assert process.poll() is None and process_state(process.pid) not in ("T", "t")
    finally:
        if agent is not None:
            agent.stop()
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
