"""Heartbeat sensors and `detection check` against real redis-server processes, publishing on a
real Redis event stream in the control store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import generate_latest
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from typer.testing import CliRunner

from common.redis_processes import free_port
from detection.cli import app
from detection.events import Event, parse_event
from detection.sensor import Sensor, SensorConfig
from detection.streams import EVENTS_STREAM, RedisEventStream
from ratequeue.local_cluster import LocalCluster, ShardNode
from ratequeue.topology import NodeRef, TopologyStore
from tests.conftest import MapOnSuiteControl
from tests.prometheus_samples import metric_samples
from tests.suite_control import suite_control

REPO = Path(__file__).resolve().parents[1]
MakeSensor = Callable[..., Awaitable[Sensor]]


def published(cluster: LocalCluster, type: str | None = None) -> list[Event]:
    with cluster.control.client() as conn:
        entries = conn.xrange(EVENTS_STREAM)
    events = [parse_event(fields[b"event"]) for _, fields in entries]
    return [event for event in events if type is None or event.type == type]


def peer(node: ShardNode) -> str:
    return f"{node.peer_host}:{node.port}"


def kill(node: ShardNode) -> None:
    node.signal(signal.SIGKILL)
    assert node.process is not None
    node.process.wait(timeout=5)


@pytest.fixture
async def make_sensor(
    request: pytest.FixtureRequest, map_on_suite_control: MapOnSuiteControl
) -> AsyncIterator[MakeSensor]:
    """`make_sensor(cluster, replica, **settings)`: a sensor beside `replica`, its events on the
    control Redis's stream, reading and watching the map where the suite's control store keeps
    it (`map_on_suite_control`: on etcd, moved into the module's etcd cluster)."""
    made: list[tuple[Sensor, RedisEventStream]] = []
    if suite_control() == "etcd":
        # Started here, on the main thread, so its members die with pytest (PDEATHSIG is set
        # only from the main thread); the move below runs in a worker thread.
        request.getfixturevalue("etcd")

    async def make(cluster: LocalCluster, replica: ShardNode, **settings: object) -> Sensor:
        options: dict[str, object] = {"interval": 0.05, "heartbeat_every": 60.0,
                                      "topology_refresh": 0.0, "control_timeout": 0.5}  # fmt: skip
        # In a thread: the move runs a loop of its own.
        endpoints = await asyncio.to_thread(map_on_suite_control, cluster)
        if endpoints is not None:
            options["etcd_endpoints"] = endpoints
        options.update(settings)
        connection = aioredis.Redis.from_url(cluster.control.url, socket_timeout=0.5,
                                             socket_connect_timeout=0.5,
                                             retry=Retry(NoBackoff(), 0))  # fmt: skip
        stream = RedisEventStream(connection)
        config = SensorConfig(control_url=cluster.control.url, replica=peer(replica), **options)  # type: ignore[arg-type]
        sensor = Sensor(config, stream)
        made.append((sensor, stream))
        return sensor

    yield make
    for sensor, stream in made:
        await sensor.aclose()
        await stream.close()


async def test_a_healthy_primary_produces_only_heartbeats(
    cluster: LocalCluster, make_sensor: MakeSensor
) -> None:
    replica = cluster.shard("s0").replicas[0]
    sensor = await make_sensor(cluster, replica, heartbeat_every=0.2)
    stop = asyncio.Event()
    running = asyncio.create_task(sensor.run(stop))
    await asyncio.sleep(0.7)
    stop.set()
    await asyncio.wait_for(running, 2)

    events = published(cluster)
    assert {event.type for event in events} == {"SensorHeartbeat"}
    assert 2 <= len(events) <= 5
    heartbeat = events[-1]
    assert (heartbeat.host, heartbeat.shard, heartbeat.source) == (
        replica.ref().address, "s0", f"sensor@{peer(replica)}")  # fmt: skip
    assert heartbeat.data["primary"] == "s0-primary" and heartbeat.data["ok"] is True


async def test_each_ping_of_the_primary_is_timed_in_the_sensors_metrics(
    cluster: LocalCluster, make_sensor: MakeSensor
) -> None:
    sensor = await make_sensor(cluster, cluster.shard("s0").replicas[0])
    for _ in range(3):
        assert (await sensor.check_once()).state == "ok"
    seen = metric_samples(generate_latest(sensor.metrics.registry).decode())
    assert seen[("sensor_probe_seconds_count", (("result", "ok"),))] == 3
    assert 0 < seen[("sensor_probe_seconds_sum", (("result", "ok"),))] < 3


async def test_a_refused_ping_and_its_confirming_ping_are_both_timed(
    cluster: LocalCluster, make_sensor: MakeSensor
) -> None:
    shard = cluster.shard("s0")
    sensor = await make_sensor(cluster, shard.replicas[0])
    kill(shard.primary)
    assert (await sensor.check_once()).state == "down"
    seen = metric_samples(generate_latest(sensor.metrics.registry).decode())
    assert seen[("sensor_probe_seconds_count", (("result", "failed"),))] == 2


async def test_a_killed_primary_is_reported_down_once_at_its_hosts_first_refusal(
    cluster: LocalCluster, make_sensor: MakeSensor
) -> None:
    shard = cluster.shard("s0")
    replica = shard.replicas[0]
    sensor = await make_sensor(cluster, replica, name="sensor-a", threshold=3)
    assert (await sensor.check_once()).state == "ok"
    kill(shard.primary)

    # Refused by a live host (confirmed by a second probe): no threshold to wait for.
    assert (await sensor.check_once()).state == "down"
    for _ in range(20):
        assert (await sensor.check_once()).state == "down"

    [down] = published(cluster, "RedisMasterDown")
    assert (down.shard, down.host, down.source) == ("s0", shard.primary.ref().address, "sensor-a")
    assert down.incident_key == "ratequeue/s0/RedisMasterDown/s0-primary@1"
    assert (down.environment, down.region, down.service) == ("dev", "local", "ratequeue")
    data = down.data
    assert data["master_link_status"] == "down"
    assert data["replica_link_status"] in ("up", "down")  # the replica's own, raw view
    assert isinstance(data["master_last_io_seconds_ago"], int)
    assert data["slave_repl_offset"] > 0
    assert data["consecutive_failures"] == 1 and data["evidence"] == "refused"
    assert (data["primary"], data["primary_address"], data["shard_epoch"]) == (
        "s0-primary", shard.primary.ref().address, 1)  # fmt: skip
    assert data["replica"] == replica.ref().address
    assert "111" in data["last_error"] or "refused" in data["last_error"].lower()
    assert published(cluster, "RedisMasterRecovered") == []


async def sensor_of_a_killed_primary(
    cluster: LocalCluster, make_sensor: MakeSensor
) -> tuple[Sensor, NodeRef]:
    """A sensor of shard s0 that saw its primary answer once; then the primary is killed (its
    address is free for a test's own server)."""
    shard = cluster.shard("s0")
    sensor = await make_sensor(cluster, shard.replicas[0], threshold=3)
    assert (await sensor.check_once()).state == "ok"
    kill(shard.primary)
    return sensor, shard.primary.ref()


def close_with_a_reset(writer: asyncio.StreamWriter) -> None:
    writer.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )
    writer.close()


async def test_a_primary_dying_during_the_probe_is_reported_in_the_same_cycle(
    cluster: LocalCluster, make_sensor: MakeSensor
) -> None:
    """The process is going: the probe's connection is reset (its port is still open), and
    its port is closed a moment later. The cycle looks again instead of waiting an interval,
    and reports on the two refusals that follow, still counting one failure."""
    sensor, primary = await sensor_of_a_killed_primary(cluster, make_sensor)
    resets = 0

    async def dying(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal resets
        if not await reader.read(100):  # the sensor's idle link asks nothing: let it be
            return
        resets += 1
        close_with_a_reset(writer)
        server.close()  # and the port is gone

    server = await asyncio.start_server(dying, primary.peer_host or primary.host, primary.port)
    try:
        result = await sensor.check_once()
    finally:
        server.close()
    assert resets >= 1  # the probe met the dying process (a connection already queued may too)
    assert result.state == "down"
    [down] = published(cluster, "RedisMasterDown")
    assert down.data["evidence"] == "refused" and down.data["consecutive_failures"] == 1


async def test_a_primary_that_resets_the_probe_and_then_answers_is_not_reported(
    cluster: LocalCluster, make_sensor: MakeSensor
) -> None:
    """A restart: the probe's connection is reset, and the look again finds the process
    answering. Nothing is reported."""
    sensor, primary = await sensor_of_a_killed_primary(cluster, make_sensor)
    resets = 0

    async def restarting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal resets
        while request := await reader.read(100):  # the sensor's idle link asks nothing
            if resets == 0:
                resets += 1
                close_with_a_reset(writer)  # the first probe meets the old process going
                return
            writer.write(b"+PONG\r\n" * request.count(b"PING"))  # the new process answers
            await writer.drain()

    server = await asyncio.start_server(restarting, primary.peer_host or primary.host, primary.port)
    try:
        result = await sensor.check_once()
    finally:
        server.close()
    assert resets == 1
    assert result.state == "ok"
    assert published(cluster, "RedisMasterDown") == []


async def test_a_primary_that_stays_down_is_reported_again_after_the_reemit_interval(
    cluster: LocalCluster, make_sensor: MakeSensor
) -> None:
    shard = cluster.shard("s0")
    sensor = await make_sensor(cluster, shard.replicas[0], name="sensor-a", threshold=1,
                               reemit_every=0.3)  # fmt: skip
    kill(shard.primary)
    await sensor.check_once()
    await sensor.check_once()  # still down, too soon to report again
    assert len(published(cluster, "RedisMasterDown")) == 1
    await asyncio.sleep(0.35)
    await sensor.check_once()
    first, second = published(cluster, "RedisMasterDown")
    assert first.incident_key == second.incident_key and first.id != second.id


async def test_a_primary_killed_between_cycles_is_reported_without_waiting_for_the_interval(
    cluster: LocalCluster, make_sensor: MakeSensor
) -> None:
    shard = cluster.shard("s0")
    sensor = await make_sensor(cluster, shard.replicas[0], interval=30.0)
    stop = asyncio.Event()
    running = asyncio.create_task(sensor.run(stop))
    try:
        await asyncio.sleep(0.5)  # the first cycle ran; the next is 30 s away
        killed_at = time.monotonic()
        kill(shard.primary)
        while not published(cluster, "RedisMasterDown"):
            assert time.monotonic() - killed_at < 5, "the sensor waited for its interval"
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await running


async def test_two_sensors_of_one_shard_report_the_same_incident(
    start_cluster: Callable[..., LocalCluster], make_sensor: MakeSensor
) -> None:
    cluster = start_cluster(shards=1, replicas=2)
    shard = cluster.shard("s0")
    sensors = [await make_sensor(cluster, replica) for replica in shard.replicas]
    kill(shard.primary)
    for _ in range(3):
        for sensor in sensors:
            await sensor.check_once()

    downs = published(cluster, "RedisMasterDown")
    assert sorted(event.source for event in downs) == sorted(s.name for s in sensors)
    assert {event.incident_key for event in downs} == {"ratequeue/s0/RedisMasterDown/s0-primary@1"}


async def test_a_paused_primary_is_reported_down_and_then_recovered(
    cluster: LocalCluster, make_sensor: MakeSensor
) -> None:
    primary = cluster.shard("s1").primary
    sensor = await make_sensor(cluster, cluster.shard("s1").replicas[0], ping_timeout=0.2)
    primary.signal(signal.SIGSTOP)
    states = []
    try:
        for _ in range(3):
            started = time.monotonic()
            result = await sensor.check_once()
            assert time.monotonic() - started < 1.0  # the PING timed out, it did not hang
            assert result.probe is not None and result.probe.error == "timed out"
            states.append(result.state)
        assert states == ["failing", "failing", "down"]  # silence: the threshold, not at once
    finally:
        primary.signal(signal.SIGCONT)
    assert (await sensor.check_once()).state == "ok"
    await sensor.check_once()

    [down] = published(cluster, "RedisMasterDown")
    [recovered] = published(cluster, "RedisMasterRecovered")
    assert (
        recovered.incident_key == down.incident_key == "ratequeue/s1/RedisMasterDown/s1-primary@1"
    )
    assert recovered.data["master_link_status"] == "up"


async def test_a_sensor_whose_replica_is_not_listed_publishes_nothing(
    cluster: LocalCluster, make_sensor: MakeSensor
) -> None:
    shard = cluster.shard("s0")
    control = aioredis.Redis.from_url(cluster.control.url)
    try:  # the replica is held for forensics: no longer a replica of any shard
        store = TopologyStore(control)
        current = await store.load()
        assert current is not None
        moved = [s.model_copy(update={"replicas": [], "forensics": s.replicas})
                 if s.id == "s0" else s for s in current.shards]  # fmt: skip
        await store.compare_and_set(current.epoch, current.model_copy(
            update={"epoch": current.epoch + 1, "shards": moved}))  # fmt: skip
    finally:
        await control.aclose()
    sensor = await make_sensor(cluster, shard.replicas[0], heartbeat_every=0.01)
    kill(shard.primary)
    for _ in range(5):
        result = await sensor.check_once()
        assert result.state == "idle" and "not a replica" in (result.reason or "")
    assert published(cluster) == []


async def test_the_sensor_survives_an_unreachable_control_store(
    cluster: LocalCluster, make_sensor: MakeSensor
) -> None:
    shard = cluster.shard("s0")
    sensor = await make_sensor(cluster, shard.replicas[0])
    assert (await sensor.check_once()).state == "ok"
    cluster.control.stop()
    kill(shard.primary)
    # The publish fails (and, on the Redis store, the topology read); the sensor goes on.
    for _ in range(5):
        result = await sensor.check_once()
        assert result.state == "failing" and result.consecutive_failures >= 1
    cluster.control.restart()

    assert (await sensor.check_once()).state == "down"  # published on the first cycle back
    for _ in range(3):
        await sensor.check_once()
    [down] = published(cluster, "RedisMasterDown")
    assert down.data["consecutive_failures"] == 6


# -- the command line --------------------------------------------------------------------------


def failover(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "detection", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)  # fmt: skip


def test_failover_check_is_ok_for_a_healthy_pair(cluster: LocalCluster) -> None:
    shard = cluster.shard("s0")
    done = failover("check", "--replica", peer(shard.replicas[0]))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"REDIS-PRIMARY OK - primary {peer(shard.primary)} answers in ")
    assert " | latency=" in done.stdout and done.stdout.count("\n") == 1


def test_failover_check_is_critical_when_the_primary_is_killed(cluster: LocalCluster) -> None:
    shard = cluster.shard("s0")
    kill(shard.primary)
    done = failover("check", "--replica", peer(shard.replicas[0]), "--primary", peer(shard.primary))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.startswith(f"REDIS-PRIMARY CRITICAL - primary {peer(shard.primary)} ")


def test_failover_check_is_unknown_when_the_replica_cannot_be_reached() -> None:
    done = failover("check", "--replica", f"127.0.0.2:{free_port()}", "--probe-timeout", "0.5")
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout.startswith("REDIS-PRIMARY UNKNOWN - replica 127.0.0.2:")


def test_failover_check_json_is_one_document_with_the_verdict(cluster: LocalCluster) -> None:
    shard = cluster.shard("s0")
    done = failover("check", "--replica", peer(shard.replicas[0]), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(done.stdout)
    assert (document["status"], document["exit_code"]) == ("OK", 0)
    assert document["line"].startswith("REDIS-PRIMARY OK - ")
    assert [p["label"] for p in document["perfdata"]] == ["latency", "last_io", "offset"]


@pytest.mark.parametrize("option", ["-h", "--help"])
def test_failover_check_help_prints_usage_and_exits_unknown(option: str) -> None:
    done = failover("check", option, "--replica", "not-an-address")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "--probe-timeout" in done.stdout and "-t" in done.stdout


@pytest.mark.parametrize("option", ["-V", "--version"])
def test_failover_check_version_prints_the_version_and_exits_unknown(option: str) -> None:
    done = failover("check", option)
    assert (done.returncode, done.stdout) == (
        3,
        f"detection check {version('ratequeue-testbed')}\n",
    )


def test_failover_check_of_a_silent_primary_is_critical_within_its_timeout(
    cluster: LocalCluster,
) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        primary = f"127.0.0.1:{silent.getsockname()[1]}"
        replica = peer(cluster.shard("s0").replicas[0])
        done = failover("check", "--replica", replica, "--primary", primary,
                        "--probe-timeout", "500ms", "-t", "5")  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.startswith(f"REDIS-PRIMARY CRITICAL - primary {primary} ")


@pytest.mark.parametrize("option", ["-t", "--probe-timeout", "--replica"])
def test_failover_check_option_without_its_value_is_unknown_with_a_status_line(
    option: str,
) -> None:
    done = failover("check", "--replica", "127.0.0.1:9", option)
    assert (done.returncode, done.stderr) == (3, ""), done.stdout + done.stderr
    assert done.stdout == f"REDIS-PRIMARY UNKNOWN - Option '{option}' requires an argument.\n"


def nagios_plugin(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed `check_ratequeue_primary` script (the check without the `detection`
    group), as Nagios would."""
    script = Path(sys.executable).parent / "check_ratequeue_primary"
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=20,
                          cwd=REPO)  # fmt: skip


def test_the_nagios_plugin_script_is_ok_for_a_healthy_pair(cluster: LocalCluster) -> None:
    done = nagios_plugin("--replica", peer(cluster.shard("s0").replicas[0]))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("REDIS-PRIMARY OK - "), done.stdout


@pytest.mark.parametrize(
    "args",
    [["--bogus", "--replica", "127.0.0.1:9"], ["check", "--replica", "127.0.0.1:9"], []],
    ids=["unknown option", "a stray word", "nothing"],
)
def test_the_nagios_plugin_script_answers_every_usage_error_unknown_never_critical(
    args: list[str],
) -> None:
    # Under `detection`, `detection --bogus check` or `detection chek` is the group's usage
    # error: exit 2, which Nagios shows as CRITICAL.
    done = nagios_plugin(*args)
    assert (done.returncode, done.stderr) == (3, ""), done.stdout + done.stderr
    assert done.stdout.startswith("REDIS-PRIMARY UNKNOWN - ") and done.stdout.count("\n") == 1


def test_the_nagios_plugin_script_names_itself_in_its_version() -> None:
    done = nagios_plugin("-V")
    assert (done.returncode, done.stdout) == (
        3,
        f"check_ratequeue_primary {version('ratequeue-testbed')}\n",
    )


def test_failover_check_refuses_probes_that_cannot_finish_within_its_timeout() -> None:
    # `--timeout 0.5` once meant 0.5 s per probe; now it is the whole check's limit, and the
    # 1 s probes would always end UNKNOWN.
    done = failover("check", "--replica", "127.0.0.1:9", "--timeout", "0.5")
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout.startswith("REDIS-PRIMARY UNKNOWN - invalid value for --probe-timeout: ")
    assert "-t/--timeout 0.5 s" in done.stdout


def test_failover_sensor_serves_events_published_on_its_metrics_port(
    cluster: LocalCluster,
) -> None:
    replica = cluster.shard("s1").replicas[0]
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "detection", "sensor", "--control", cluster.control.url,
         "--replica", peer(replica), "--heartbeat-every", "0.2", "--metrics-port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    heartbeats = ("sensor_events_published_total", (("type", "SensorHeartbeat"),))
    try:
        deadline = time.monotonic() + 20
        seen: dict = {}
        while seen.get(heartbeats, 0) < 2:
            assert process.poll() is None and time.monotonic() < deadline, seen
            with contextlib.suppress(httpx.HTTPError):
                seen = metric_samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text)
            time.sleep(0.1)
        assert seen[("sensor_events_published_total", (("type", "RedisMasterDown"),))] == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()


def test_failover_sensor_publishes_heartbeats_and_stops_on_sigterm(cluster: LocalCluster) -> None:
    replica = cluster.shard("s1").replicas[0]
    process = subprocess.Popen(
        [sys.executable, "-m", "detection", "sensor", "--control", cluster.control.url,
         "--replica", peer(replica), "--name", "cli-sensor", "--heartbeat-every", "0.2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not published(cluster, "SensorHeartbeat"):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        assert process.stderr is not None
        process.stderr.close()
    assert published(cluster)[0].source == "cli-sensor"


def test_bad_sensor_options_are_named_and_exit_2() -> None:
    runner = CliRunner()
    for option, value in (("--threshold", "0"), ("--interval", "-1"), ("--replica", "nope"),
                          ("--environment", "Prod"), ("--stream", "kafka"),
                          ("--etcd-endpoints", "127.0.0.1:2379")):  # fmt: skip
        args = {"--control": "redis://127.0.0.1:1/0", "--replica": "127.0.0.2:1", option: value}
        result = runner.invoke(app, ["sensor", *[x for pair in args.items() for x in pair]])
        assert result.exit_code == 2, (option, result.output)
        setting = "control_url" if option == "--control" else option[2:].replace("-", "_")
        assert f"refusing to start: setting '{setting}' ({option}" in result.output
