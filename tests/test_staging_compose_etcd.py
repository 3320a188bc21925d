"""The staging deployment on etcd: docker-compose.etcd.yml adds three etcd members to
docker-compose.yml, each on the peer network at an address of its own with the testbed's flags
(common/etcd_processes.py), and points every part that reads the coordination store at them
(controllers, API, topology-init, sensors, the chaos service's target); `docker compose config`
accepts the two files together; deploy/staging-etcd-target.yaml names the members' published
ports; the etcd image (docker/etcd-image.sh) forms a cluster from the file's own settings.

Not for: the Redis-only file (tests/test_staging_compose.py) or the stack running end to end.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest
import yaml

from chaos.faults.docker import engine_unavailable_reason
from chaos.targets import load_deployment
from common.etcd_processes import EtcdMember, EtcdTimings, _member_argv
from tests.docker_deployment import bridge_network
from tests.test_staging_compose import (
    COMPOSE_FILE,
    CONTROLLERS,
    ROOT,
    SENSORS,
    _compose_command,
    address,
    interpolate,
    published,
)

ETCD_FILE = ROOT / "docker-compose.etcd.yml"
ETCD_TARGET_FILE = ROOT / "deploy" / "staging-etcd-target.yaml"
ETCD_IMAGE_SCRIPT = ROOT / "docker" / "etcd-image.sh"
ETCD_IMAGE = "ratequeue-etcd:local"
MEMBERS = ("etcd1", "etcd2", "etcd3")
# Flags whose values are per member or per network (names, addresses, data directory) and the
# cluster's token: the compose file sets its own.
PER_MEMBER = {"--name", "--data-dir", "--listen-client-urls", "--advertise-client-urls",
              "--listen-peer-urls", "--initial-advertise-peer-urls", "--initial-cluster",
              "--initial-cluster-token"}  # fmt: skip


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    return interpolate(yaml.safe_load(ETCD_FILE.read_text()))


@pytest.fixture(scope="module")
def etcd_services(override: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return override["services"]


def endpoints_of(etcd_services: dict[str, dict[str, Any]]) -> str:
    """The members' client URLs on their peer addresses, as every part should be given them."""
    return ",".join(f"http://{address(etcd_services[m], 'peer')}:2379" for m in MEMBERS)


def flags_as_environment(argv: tuple[str, ...]) -> dict[str, str]:
    """etcd's `--some-flag value` (or `--flag=value`) as the `ETCD_SOME_FLAG` variable it also
    reads, for the flags that are not per member."""
    variables: dict[str, str] = {}
    args = list(argv[1:])
    while args:
        flag = args.pop(0)
        name, equals, value = flag.partition("=")
        if not equals:
            value = args.pop(0)
        if name not in PER_MEMBER:
            variables["ETCD_" + name.removeprefix("--").replace("-", "_").upper()] = value
    return variables


def test_three_members_each_on_the_peer_network_at_its_own_address(
    etcd_services: dict[str, dict[str, Any]],
) -> None:
    addresses = [address(etcd_services[m], "peer") for m in MEMBERS]
    assert addresses == ["10.231.2.5", "10.231.2.6", "10.231.2.7"]
    for member, at in zip(MEMBERS, addresses, strict=True):
        environment = etcd_services[member]["environment"]
        assert environment["ETCD_NAME"] == member
        assert environment["ETCD_ADVERTISE_CLIENT_URLS"] == f"http://{at}:2379"
        assert environment["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == f"http://{at}:2380"
        assert environment["ETCD_INITIAL_CLUSTER"] == ",".join(
            f"{m}=http://{a}:2380" for m, a in zip(MEMBERS, addresses, strict=True)
        )
        assert etcd_services[member]["labels"]["ratequeue.role"] == "etcd"


def test_members_run_with_the_testbeds_flags(etcd_services: dict[str, dict[str, Any]]) -> None:
    member = EtcdMember("m", 2379, 2380, Path("/data"))
    testbed = flags_as_environment(_member_argv("etcd", member, "", "", EtcdTimings()))
    for name in MEMBERS:
        environment = etcd_services[name]["environment"]
        assert {k: environment.get(k) for k in testbed} == testbed, name


def test_every_part_reads_the_coordination_store_in_the_members(
    etcd_services: dict[str, dict[str, Any]], override: dict[str, Any]
) -> None:
    endpoints = endpoints_of(etcd_services)
    for name in CONTROLLERS:
        environment = etcd_services[name]["environment"]
        assert environment["LAZARUS_COORDINATION_BACKEND"] == "etcd", name
        assert environment["LAZARUS_ETCD_ENDPOINTS"] == endpoints, name
    for name in ("api", "topology-init"):
        environment = etcd_services[name]["environment"]
        assert environment["RATEQUEUE_TOPOLOGY_BACKEND"] == "etcd", name
        assert environment["RATEQUEUE_ETCD_ENDPOINTS"] == endpoints, name
    for name in SENSORS:
        assert etcd_services[name]["environment"]["FAILOVER_ETCD_ENDPOINTS"] == endpoints, name
    target = yaml.safe_load(override["configs"]["chaos-target"]["content"])
    assert target["etcd_endpoints"] == endpoints


def test_the_first_topology_waits_for_healthy_members(
    etcd_services: dict[str, dict[str, Any]],
) -> None:
    waits = etcd_services["topology-init"]["depends_on"]
    assert {m: waits[m]["condition"] for m in MEMBERS} == dict.fromkeys(MEMBERS, "service_healthy")


def test_target_file_names_the_members_published_ports(
    etcd_services: dict[str, dict[str, Any]],
) -> None:
    deployment = load_deployment(ETCD_TARGET_FILE)
    assert deployment.etcd_endpoints == ",".join(
        f"http://127.0.0.1:{published(etcd_services[m])[1]}" for m in MEMBERS
    )
    assert deployment.docker_deployment == "ratequeue"


def test_docker_compose_config_accepts_the_two_files_together() -> None:
    command = _compose_command()
    if command is None:
        if os.environ.get("RATEQUEUE_REQUIRE_COMPOSE") == "1":
            pytest.fail("no Docker Compose v2")
        pytest.skip("no Docker Compose v2 (`docker compose` or docker-compose v2)")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("RQ_", "LAZARUS_"))}
    files = ["-f", str(COMPOSE_FILE), "-f", str(ETCD_FILE)]

    def config(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *files, "config", *args],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env={**environment, **extra},
        )  # fmt: skip

    checked = config("-q")
    assert checked.returncode == 0, checked.stderr
    assert set(MEMBERS) <= set(config("--services").stdout.split())
    resolved = yaml.safe_load(config("--format", "json", RQ_PEER_NET="10.77.2").stdout)
    lazarus = resolved["services"]["lazarus1"]["environment"]
    assert lazarus["LAZARUS_ETCD_ENDPOINTS"].split(",")[0] == "http://10.77.2.5:2379"
    assert lazarus["LAZARUS_CONTROL_URL"] == "redis://10.77.2.2:6379/0"  # the stream stays


# -- the image, on a real engine ----------------------------------------------------------------

_UNAVAILABLE = engine_unavailable_reason()


@pytest.fixture
def etcd_image() -> Iterator[docker.DockerClient]:
    if _UNAVAILABLE is not None:
        pytest.skip(f"needs a Docker engine: {_UNAVAILABLE}")
    client = docker.from_env()
    try:
        client.images.get(ETCD_IMAGE)
    except docker.errors.ImageNotFound:
        build = subprocess.run([str(ETCD_IMAGE_SCRIPT)], capture_output=True, text=True,
                               timeout=300)  # fmt: skip
        assert build.returncode == 0, f"{ETCD_IMAGE_SCRIPT} failed:\n{build.stderr}"
    try:
        yield client
    finally:
        client.close()


def test_the_etcd_image_forms_a_cluster_from_the_files_settings(
    etcd_image: docker.DockerClient, etcd_services: dict[str, dict[str, Any]]
) -> None:
    """The three members as the file declares them (their variables, with the addresses moved
    to a throwaway network) elect a leader and serve a write read back from another member."""
    name = f"rqtest-{uuid.uuid4().hex[:8]}"
    labels = {"ratequeue.deployment": name}
    bridge_network(etcd_image, name, labels)
    network = etcd_image.networks.get(name)
    subnet = network.attrs["IPAM"]["Config"][0]["Subnet"].rsplit(".", 1)[0]
    try:
        for member in MEMBERS:
            environment = {
                key: value.replace("10.231.2.", f"{subnet}.")
                for key, value in etcd_services[member]["environment"].items()
            }
            container = etcd_image.containers.create(
                ETCD_IMAGE, name=f"{name}-{member}", labels=labels, environment=environment,
                network=name,
                networking_config={name: etcd_image.api.create_endpoint_config(
                    ipv4_address=address(etcd_services[member], "peer").replace(
                        "10.231.2.", f"{subnet}."))},
            )  # fmt: skip
            container.start()
        first, second = (f"http://{subnet}.{last}:2379" for last in (5, 6))
        deadline = time.monotonic() + 30
        while True:
            try:
                put = httpx.post(f"{first}/v3/kv/put", json={"key": "YQ==", "value": "Yg=="},
                                 timeout=2)  # fmt: skip
                if put.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the members elected no leader within 30 s"
            time.sleep(0.2)
        got = httpx.post(f"{second}/v3/kv/range", json={"key": "YQ=="}, timeout=5).json()
        assert got["kvs"][0]["value"] == "Yg=="
    finally:
        mine = {"label": [f"ratequeue.deployment={name}"]}
        for container in etcd_image.containers.list(all=True, filters=mine):
            container.remove(force=True, v=True)
        network.remove()
