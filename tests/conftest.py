"""Fixtures: real redis-server clusters on free loopback ports, a sync client, the HTTP API
served by uvicorn in a thread, scenario runs on embedded testbeds (each run once per session), and
a time limit for code that could loop forever. Everything started here is stopped at teardown,
also on failure."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

import httpx
import pytest
import uvicorn
from starlette.types import ASGIApp

from chaos import testbed
from chaos.experiments import TestbedOverrides, load_experiment
from chaos.journal import Journal
from chaos.scheduler import run_one
from common.etcd_processes import EtcdCluster, start_etcd_cluster
from common.nodes import CLIENT_HOST
from common.redis_processes import free_port
from ratequeue.client import ClientRetryPolicy, ClientSettings, RatequeueClient
from ratequeue.config import ServiceSettings
from ratequeue.local_cluster import LocalCluster
from ratequeue.service import create_app
from tests.etcd_topology import store_address_of, topology_moved_to_etcd
from tests.suite_control import REDIS_ONLY_MARKER, SUITE_CONTROL_ENV, suite_control

FAST_RETRY = ClientRetryPolicy(max_attempts=3, backoff=0.04, max_backoff=0.1, deadline=1.5)


def pytest_configure(config: pytest.Config) -> None:
    try:
        suite_control()
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    config.addinivalue_line(
        "markers",
        f"{REDIS_ONLY_MARKER}(reason): about the Redis control store alone (its keys, its "
        f"outage); skipped when {SUITE_CONTROL_ENV}=etcd",
    )


def pytest_report_header() -> str:
    return f"control store: {suite_control()} ({SUITE_CONTROL_ENV})"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if suite_control() == "redis":
        return
    for item in items:
        marker = item.get_closest_marker(REDIS_ONLY_MARKER)
        if marker is not None:
            why = marker.args[0] if marker.args else "about the Redis control store alone"
            item.add_marker(pytest.mark.skip(reason=f"{SUITE_CONTROL_ENV}=etcd: {why}"))


@pytest.fixture(autouse=True, scope="session")
def testbeds_on_suite_control() -> Iterator[None]:
    """On etcd, every testbed the suite starts in process gets `control="etcd"` unless its
    test names the store or Sentinel manages it (`tests/suite_control.py`)."""
    if suite_control() == "redis":
        yield
        return
    original = testbed.up

    def up_on_etcd(directory: Path, **options: object) -> testbed.TestbedState:
        if "control" not in options and options.get("failover", "lazarus") != "sentinel":
            options["control"] = "etcd"
        return original(directory, **options)  # type: ignore[arg-type]

    testbed.up = up_on_etcd  # type: ignore[assignment]
    try:
        yield
    finally:
        testbed.up = original


@pytest.fixture
def time_limit() -> Callable[[float], contextlib.AbstractContextManager[None]]:
    """`with time_limit(seconds):` fails the test when the block runs longer: a loop that never
    ends (in pure Python, in the main thread) fails instead of hanging the suite."""

    @contextlib.contextmanager
    def limit(seconds: float) -> Iterator[None]:
        def expired(signum: int, frame: object) -> None:
            pytest.fail(f"still running after {seconds} s")

        previous = signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    return limit


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    started: list[LocalCluster] = []

    def start(shards: int = 1, replicas: int = 1, min_replicas: int = 1) -> LocalCluster:
        cluster = LocalCluster.start(tmp_path / f"cluster{len(started)}", shards=shards,
                                     replicas=replicas, min_replicas=min_replicas)  # fmt: skip
        started.append(cluster)
        return cluster

    yield start
    for cluster in started:
        cluster.stop()


@pytest.fixture
def cluster(start_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    """Two shards, one replica each."""
    return start_cluster(shards=2, replicas=1)


MapOnSuiteControl = Callable[[LocalCluster], str | None]


@pytest.fixture
def map_on_suite_control(request: pytest.FixtureRequest) -> MapOnSuiteControl:
    """`map_on_suite_control(cluster)`: where the clients and APIs a test starts over `cluster`
    read its map. On Redis, None: in its control store. On etcd (`tests/suite_control.py`), the
    members' endpoints: the first call moves the map into the module's etcd cluster (emptied
    first), so only etcd has it; a test that changes the map then does so through the store
    `tests.etcd_topology.store_address_of(cluster)` names, which is etcd's from then on."""

    def endpoints(cluster: LocalCluster) -> str | None:
        if suite_control() == "redis":
            return None
        etcd: EtcdCluster = request.getfixturevalue("etcd")
        if store_address_of(cluster).coordination_backend != "etcd":
            topology_moved_to_etcd(cluster, etcd)
        return ",".join(etcd.endpoints)

    return endpoints


@pytest.fixture
def start_cluster_on_suite_control(
    start_cluster: Callable[..., LocalCluster], map_on_suite_control: MapOnSuiteControl
) -> Callable[..., LocalCluster]:
    """`start_cluster`, with the cluster's map where the suite's control store keeps it from
    the start (on etcd, moved there at once): for tests that change the map, or run steps and
    controllers over it, before (or without) any client, through `store_address_of(cluster)`."""

    def start(**options: int) -> LocalCluster:
        cluster = start_cluster(**options)
        map_on_suite_control(cluster)
        return cluster

    return start


@pytest.fixture
def make_client(
    map_on_suite_control: MapOnSuiteControl,
) -> Iterator[Callable[..., RatequeueClient]]:
    """`make_client(cluster, **settings)`: a client over `cluster` reading its map where the
    suite's control store keeps it (`map_on_suite_control`), closed at teardown."""
    clients: list[RatequeueClient] = []

    def make(cluster: LocalCluster, **settings: object) -> RatequeueClient:
        options = {"wait_timeout_ms": 300, "retry": FAST_RETRY, "refresh_interval": 0.5}
        options.update(settings)
        client = RatequeueClient(cluster.control.url, ClientSettings(**options),  # type: ignore[arg-type]
                                 etcd_endpoints=map_on_suite_control(cluster))  # fmt: skip
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(cluster: LocalCluster, make_client: Callable[..., RatequeueClient]) -> RatequeueClient:
    return make_client(cluster)


class ServedApp:
    """An ASGI app served by uvicorn (lifespan on) in a thread on a free loopback port."""

    def __init__(self, app: ASGIApp) -> None:
        self.port = free_port((CLIENT_HOST,))
        self.url = f"http://{CLIENT_HOST}:{self.port}"
        config = uvicorn.Config(app, host=CLIENT_HOST, port=self.port, log_level="error",
                                lifespan="on")  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.__exit__(None, None, None)
                raise RuntimeError("the app did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class ServedApi(ServedApp):
    """The ratequeue app served over real HTTP on a free loopback port."""

    def __init__(self, settings: ServiceSettings) -> None:
        super().__init__(create_app(settings))


@pytest.fixture
def serve_api(map_on_suite_control: MapOnSuiteControl) -> Iterator[Callable[..., ServedApi]]:
    """`serve_api(cluster, **settings)`: the API over `cluster`, stopped at teardown. Unless
    `settings` name a topology backend, it reads the map where the suite's control store keeps
    it (`map_on_suite_control`: on etcd, moved into the module's etcd cluster)."""
    served: list[ServedApi] = []

    def serve(cluster: LocalCluster, **settings: object) -> ServedApi:
        options: dict[str, object] = {"wait_timeout_ms": 300, "retry_deadline": 0.5,
                                      "refresh_interval": 0.5}  # fmt: skip
        if "topology_backend" not in settings:
            endpoints = map_on_suite_control(cluster)
            if endpoints is not None:
                options.update(topology_backend="etcd", etcd_endpoints=endpoints)
        options.update(settings)
        api = ServedApi(ServiceSettings(control_url=cluster.control.url, **options))  # type: ignore[arg-type]
        served.append(api.__enter__())
        return api

    yield serve
    for api in served:
        api.__exit__(None, None, None)


@pytest.fixture
def http(cluster: LocalCluster, serve_api: Callable[..., ServedApi]) -> Iterator[httpx.Client]:
    api = serve_api(cluster)
    with httpx.Client(base_url=api.url, timeout=10) as session:
        yield session


def shard_key_count(cluster: LocalCluster) -> int:
    """Keys on all shard primaries other than the fence (a 'nothing was written' probe)."""
    total = 0
    for shard in cluster.shards:
        with shard.primary.client() as conn:
            total += sum(1 for key in conn.scan_iter() if key not in (b"rq:fence", b"rq:barrier"))
    return total


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """Three etcd members on loopback, shared by one test module (starting one takes a
    second or two); use `etcd`, which heals it after each test."""
    cluster = start_etcd_cluster(tmp_path_factory.mktemp("etcd"))
    yield cluster
    cluster.stop()


@pytest.fixture
def etcd(etcd_cluster: EtcdCluster) -> Iterator[EtcdCluster]:
    """The module's etcd cluster, whole again after the test: every member paused is resumed,
    every member killed is restarted on its data directory, and a leader is elected."""
    yield etcd_cluster
    for member in etcd_cluster.members:
        member.resume()
        if not member.alive():
            member.restart()
    etcd_cluster.wait_for_leader()


ScenarioRun = Callable[..., tuple[Journal, Path]]


@pytest.fixture(scope="session")
def scenario_journal(tmp_path_factory: pytest.TempPathFactory) -> ScenarioRun:
    """`scenario_journal(path, overrides=None)`: the journal of the scenario file run on its own
    fresh embedded testbed (seed 11), and the directory it was written to. Each distinct
    experiment (the file as `overrides` leave it) runs once per session: tests that assert
    different things about the same run (the CI scenario suite, and the partition under the
    Lazarus controllers, the files' default manager) share it rather than start a second
    identical one."""
    runs: dict[tuple[Path, str], tuple[Journal, Path]] = {}

    def journal_of(path: Path, overrides: TestbedOverrides | None = None) -> tuple[Journal, Path]:
        experiment = load_experiment(path, overrides)
        # On etcd, a file that names no control store (nor Sentinel) runs there; one that
        # names its store (control_store_kill: the control Redis), or is given one, keeps it.
        if (
            suite_control() == "etcd"
            and experiment.failover != "sentinel"
            and "control" not in experiment.model_fields_set
        ):
            experiment = experiment.model_copy(update={"control": "etcd"})
        key = (path.resolve(), experiment.model_dump_json())
        if key not in runs:
            journal_dir = tmp_path_factory.mktemp(f"journal-{path.stem}")
            journal = run_one(
                path,
                experiment,
                target=None,
                journal_dir=journal_dir,
                dry_run=False,
                say=print,
                stop=threading.Event(),
                seed=11,
            )
            runs[key] = (journal, journal_dir)
        return runs[key]

    return journal_of
