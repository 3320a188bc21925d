"""A Docker engine that does not answer is named: the endpoint tried (DOCKER_HOST, else the
default socket) and that no engine runs or answers there, in one line (`chaos.docker_engine`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.nodes import CLIENT_HOST
from common.redis_processes import free_port

PROJECT = Path(__file__).parents[2]


def nothing_listening() -> str:
    return f"tcp://{CLIENT_HOST}:{free_port((CLIENT_HOST,))}"


@pytest.mark.parametrize(
    ("docker_host", "cause"),
    [(nothing_listening, "connection refused"),
     (lambda: "unix:///nonexistent/docker.sock", "no such socket")],
    ids=["a-free-loopback-port", "a-socket-that-does-not-exist"],
)  # fmt: skip
def test_soak_without_a_docker_engine_names_the_endpoint_it_tried_in_one_line(
    tmp_path: Path, docker_host: object, cause: str
) -> None:
    assert callable(docker_host)
    endpoint = docker_host()
    env = {**os.environ, "DOCKER_HOST": endpoint, "COLUMNS": "400"}
    done = subprocess.run(
        [sys.executable, "-m", "chaos", "soak", "--cycles", "1",
         "--compose-file", str(PROJECT / "docker-compose.yml"),
         "--journal-dir", str(tmp_path / "journals")],
        env=env, cwd=PROJECT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 1, output
    assert output.splitlines() == [
        f"soak: no Docker engine answers at {endpoint} (DOCKER_HOST): it is not running or not "
        f"reachable there ({cause})"
    ]


@pytest.mark.parametrize(
    ("flags", "refusal"),
    [(["--settle", "0"], "--settle: must be more than 0 s and at most 1 day, not 0 s"),
     (["--gap", "99999h"], "--gap: must be at least 0 s and at most 1 day, not 99999 h"),
     (["--service-back", "-1s"], "--service-back: ")],
)  # fmt: skip
def test_soak_refuses_a_wait_out_of_range_naming_the_option_before_touching_docker(
    tmp_path: Path, flags: list[str], refusal: str
) -> None:
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock", "COLUMNS": "400"}
    done = subprocess.run(
        [sys.executable, "-m", "chaos", "soak", "--cycles", "1", *flags,
         "--journal-dir", str(tmp_path / "journals")],
        env=env, cwd=PROJECT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, output
    assert refusal in output and "Docker engine" not in output
