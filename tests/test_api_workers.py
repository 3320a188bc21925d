"""`ratequeue serve --workers N` as real processes over real HTTP: requests served by different
workers are counted together in one scrape of /metrics, every worker serves with its own
connections, and the workers go down with the process that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from chaos.testbed import running_testbed
from common.http_processes import wait_until_healthy
from common.nodes import CLIENT_HOST
from common.redis_processes import die_with_parent, free_port
from ratequeue.local_cluster import LocalCluster
from tests.test_http_api import ON_S0, ON_S1, messages_url, metric_samples

WORKERS = 2


class ServeProcess:
    """`ratequeue serve` started as its own process on a free port."""

    def __init__(self, cluster: LocalCluster, *options: str) -> None:
        self.port = free_port((CLIENT_HOST,))
        self.url = f"http://{CLIENT_HOST}:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RATEQUEUE_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ratequeue", "serve", "--control", cluster.control.url,
             "--host", CLIENT_HOST, "--port", str(self.port), "--wait-timeout-ms", "1000",
             *options],
            env=env, preexec_fn=die_with_parent,
        )  # fmt: skip
        if wait_until_healthy(self.process, f"{self.url}/healthz", timeout=60) != "healthy":
            self.stop()
            raise AssertionError("ratequeue serve did not become healthy")

    def workers(self, count: int, timeout: float = 60.0) -> list[int]:
        """The pids of the worker processes, once `count` of them run."""
        deadline = time.monotonic() + timeout
        while True:
            found = [pid for pid in children(self.process.pid) if is_worker(pid)]
            if len(found) == count or time.monotonic() > deadline:
                assert len(found) == count, found
                return found
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The parent pid is the second field after the parenthesised command name.
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def serve(cluster: LocalCluster) -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def start(*options: str) -> ServeProcess:
        started.append(ServeProcess(cluster, *options))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def enqueue_on_new_connection(url: str, number: str, message_id: str) -> None:
    # A new connection each time, so whichever worker runs accepts it.
    response = httpx.post(f"{url}{messages_url(number)}", json={"id": message_id, "body": "hi"},
                          timeout=30)  # fmt: skip
    assert response.status_code == 201, response.text


# The tests pause a worker (SIGSTOP) to route requests to the other: long enough on a busy
# machine that uvicorn's default 5 s health check would kill and replace the paused one.
PAUSABLE = ("--workers", str(WORKERS), "--worker-healthcheck-seconds", "300")


def test_requests_served_by_different_workers_add_up_in_one_scrape(
    serve: Callable[..., ServeProcess],
) -> None:
    api = serve(*PAUSABLE)
    first, second = api.workers(WORKERS)
    served_by = {first: 3, second: 2}
    for worker, count in served_by.items():
        # Only this worker runs: the other, paused, cannot accept a connection.
        paused = second if worker == first else first
        os.kill(paused, signal.SIGSTOP)
        try:
            for index in range(count):
                enqueue_on_new_connection(api.url, ON_S0, f"{worker}-{index}")
        finally:
            os.kill(paused, signal.SIGCONT)
    assert sorted(api.workers(WORKERS)) == sorted(served_by)  # neither was replaced meanwhile
    samples = metric_samples(httpx.get(f"{api.url}/metrics", timeout=30).text)
    assert samples[("ratequeue_enqueue_total", (("outcome", "acknowledged"),))] == 5
    assert samples[("ratequeue_request_seconds_count", (("operation", "enqueue"),))] == 5
    assert samples[("ratequeue_shard_messages", (("shard", "s0"),))] == 5


def test_each_worker_serves_the_whole_api_on_its_own_connections(
    serve: Callable[..., ServeProcess],
) -> None:
    api = serve(*PAUSABLE)
    workers = api.workers(WORKERS)
    for worker in workers:
        others = [w for w in workers if w != worker]
        for other in others:
            os.kill(other, signal.SIGSTOP)
        try:
            enqueue_on_new_connection(api.url, ON_S1, f"by-{worker}")
            health = httpx.get(f"{api.url}/healthz", timeout=30)
            assert health.status_code == 200, health.text
            assert all(check["ok"] for check in health.json()["checks"])
        finally:
            for other in others:
                os.kill(other, signal.SIGCONT)
    info = httpx.get(f"{api.url}/v1/numbers/{ON_S1}", timeout=30).json()
    assert info["depth"] == WORKERS


def test_killing_the_serving_process_takes_every_worker_down(
    serve: Callable[..., ServeProcess],
) -> None:
    api = serve("--workers", str(WORKERS))
    workers = api.workers(WORKERS)
    api.process.send_signal(signal.SIGKILL)
    api.process.wait(timeout=10)
    deadline = time.monotonic() + 20
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(w) for w in workers)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{api.url}/healthz", timeout=5)


def test_a_worker_count_out_of_range_stops_serve_with_exit_2_naming_workers() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATEQUEUE_")}
    for source in ("cli", "environment"):
        argv = [sys.executable, "-m", "ratequeue", "serve", "--control", "redis://127.0.0.1:1/0",
                "--port", "1"]  # fmt: skip
        run_env = dict(env)
        if source == "cli":
            argv += ["--workers", "0"]
        else:
            run_env["RATEQUEUE_WORKERS"] = "65"
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=run_env)
        assert result.returncode == 2, result.stderr
        assert "'workers'" in result.stderr and "Traceback" not in result.stderr


def test_the_testbed_serves_its_api_with_the_workers_asked_and_down_stops_them(
    tmp_path: Path,
) -> None:
    options = {"shards": 1, "replicas": 1, "controllers": 0, "sensors": False}
    with running_testbed(tmp_path / "bed", **options, api_workers=WORKERS) as state:
        api = state.node("api")
        workers = [pid for pid in children(api.pid) if is_worker(pid)]
        assert len(workers) == WORKERS
        assert httpx.get(f"{state.api}/healthz", timeout=30).status_code == 200
    assert not any(alive(w) for w in workers)
