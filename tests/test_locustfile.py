"""The locustfile run by the real locust package (headless, a few seconds) against the HTTP API
over a real local cluster: its settings are locust options, the message tally is summed on the
master across workers, and a 503 is retried with the same id, so a write that was refused while
a replica was paused is counted once and the run does not end failed."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from common.redis_processes import free_port
from ratequeue.local_cluster import LocalCluster
from tests.conftest import ServedApi
from tests.prometheus_samples import metric_samples

# Not imported here: locust monkey-patches the standard library (gevent) on import.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None, reason="locust is not installed ('.[load]')"
)

PROJECT = Path(__file__).resolve().parents[1]
LOCUSTFILE = PROJECT / "loadtest" / "locustfile.py"
# --stop-timeout: at the end each user finishes its enqueue (and the retries of it), so every
# message the API stored was answered, and the tally can be compared with the store.
PRODUCERS_ONLY = ["--stop-timeout", "20", "--ratequeue-consumer-weight", "0",
                  "--ratequeue-numbers", "20", "--ratequeue-producer-wait", "0.02"]  # fmt: skip


def locust(*args: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--loglevel", "WARNING", *args]


def api_metric(api: ServedApi, name: str) -> float:
    samples = metric_samples(httpx.get(f"{api.url}/metrics", timeout=10).text)
    return sum(value for (sample, _), value in samples.items() if sample == name)


def refused_as_unavailable(api: ServedApi) -> float:
    samples = metric_samples(httpx.get(f"{api.url}/metrics", timeout=10).text)
    return samples.get(("ratequeue_enqueue_total", (("outcome", "unavailable"),)), 0)


def stored_messages(api: ServedApi) -> float:
    return api_metric(api, "ratequeue_shard_messages")


def wait_until(what: str, condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def finished(process: subprocess.Popen[str], timeout: float = 90) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, stderr


@pytest.mark.parametrize("batch", [0, 10], ids=["single", "batch of 10"])
def test_a_503_is_retried_with_the_same_id_so_the_run_passes_and_counts_each_message_once(
    cluster: LocalCluster, serve_api: Callable[..., ServedApi], tmp_path: Path, batch: int
) -> None:
    api = serve_api(cluster)
    summary = tmp_path / "summary.json"
    run = subprocess.Popen(
        locust("--headless", "-u", "2", "-r", "2", "-t", "8s", "--host", api.url,
               *PRODUCERS_ONLY, "--ratequeue-batch", str(batch),
               "--ratequeue-summary", str(summary)),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=PROJECT,
    )  # fmt: skip
    replica = cluster.shards[0].replicas[0]
    try:
        wait_until("the first enqueues", lambda: stored_messages(api) > 0)
        # Paused, the replica cannot confirm writes: the API answers 503 until it is back.
        replica.signal(signal.SIGSTOP)
        try:
            wait_until("a 503", lambda: refused_as_unavailable(api) > 0)
        finally:
            replica.signal(signal.SIGCONT)
    finally:
        code, stderr = finished(run)
    assert code == 0, stderr[-3000:]
    tally = json.loads(summary.read_text())
    assert tally["retried"] > 0
    assert tally["enqueued"] == stored_messages(api) > 0  # no message counted twice


class Lines:
    """A process's stderr read line by line in the background, so a test can wait for one."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert process.stderr is not None
        self.reader = threading.Thread(
            target=self.lines.extend, args=(process.stderr,), daemon=True
        )
        self.reader.start()

    def contains(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def text(self) -> str:
        self.reader.join(timeout=30)
        return "".join(self.lines)


def test_the_master_sums_the_tally_of_its_workers_including_retries_still_running_at_the_end(
    cluster: LocalCluster, serve_api: Callable[..., ServedApi], tmp_path: Path
) -> None:
    api = serve_api(cluster)
    summary = tmp_path / "summary.json"
    port = free_port()
    master = subprocess.Popen(
        [*locust("--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
                 "--headless", "--expect-workers", "2", "-u", "4", "-r", "4", "-t", "4s",
                 "--host", api.url, *PRODUCERS_ONLY, "--ratequeue-summary", str(summary)),
         "--loglevel", "INFO"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=PROJECT,
    )  # fmt: skip
    master_log = Lines(master)
    worker = locust("--worker", "--master-host", "127.0.0.1", "--master-port", str(port))
    workers = [
        subprocess.Popen(worker, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=PROJECT)
        for _ in range(2)
    ]
    replica = cluster.shards[0].replicas[0]
    try:
        wait_until("the first enqueues", lambda: stored_messages(api) > 0, timeout=60)
        # The run time ends while enqueues are refused: their retries land after the end.
        replica.signal(signal.SIGSTOP)
        try:
            wait_until("a 503", lambda: refused_as_unavailable(api) > 0)
            wait_until("the run time's end", lambda: master_log.contains("limit reached"), 60)
        finally:
            replica.signal(signal.SIGCONT)
        code = master.wait(timeout=120)
    finally:
        for process in (master, *workers):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert code == 0, master_log.text()[-3000:]
    tally = json.loads(summary.read_text())
    assert tally["retried"] > 0
    assert tally["enqueued"] == stored_messages(api) > 0


def test_a_bad_setting_is_refused_naming_the_option() -> None:
    done = subprocess.run(
        locust("--headless", "-t", "1s", "--host", "http://127.0.0.1:9",
               "--ratequeue-toll-free-share", "lots"),
        capture_output=True, text=True, timeout=60, cwd=PROJECT,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--ratequeue-toll-free-share: 'lots': expected a number" in done.stderr


def test_a_bad_setting_from_the_environment_is_refused_naming_the_variable() -> None:
    done = subprocess.run(
        locust("--headless", "-t", "1s", "--host", "http://127.0.0.1:9"),
        capture_output=True, text=True, timeout=60, cwd=PROJECT,
        env={**os.environ, "RATEQUEUE_NUMBERS": "many"},
    )  # fmt: skip
    assert done.returncode == 2
    expected = "'many': expected an integer (given as the option or as RATEQUEUE_NUMBERS)"
    assert expected in done.stderr
