"""The cpu fault's params as every backend checks them (`chaos.faults.base`), the Gremlin command
and the Docker launcher built from them (read, not run: no Docker engine or Gremlin API here).

Not for: loading cores (tests/chaos/test_cpu_burst.py), experiment files
(tests/unit/test_fault_steps.py).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from chaos.errors import FaultError
from chaos.faults.base import CPU_MAX_CORES, NodeTarget, check_cores, check_length
from chaos.faults.docker import DockerFaultBackend, FaultCall, cpu_launcher
from chaos.faults.docker_leftovers import FaultIntent
from chaos.faults.gremlin import GremlinFaultBackend

PRIMARY = NodeTarget(name="s0-primary", role="primary", port=7000)


@pytest.mark.parametrize("cores", [0, CPU_MAX_CORES + 1, True, "2", 1.5])
def test_cores_out_of_bounds_or_not_an_int_is_refused_naming_the_field(cores: object) -> None:
    with pytest.raises(FaultError, match="cores"):
        check_cores(cores)


@pytest.mark.parametrize("length", [0, -1, 24 * 3600 + 1, True, "5"])
def test_a_length_out_of_bounds_is_refused_naming_the_field(length: object) -> None:
    with pytest.raises(FaultError, match="length"):
        check_length(length)


def test_gremlin_rounds_a_cpu_length_up_and_checks_cores_like_the_others() -> None:
    gremlin = GremlinFaultBackend(client=object())  # type: ignore[arg-type]
    assert gremlin.command_for("cpu", PRIMARY, length=0.4, cores=2) == {
        "type": "cpu",
        "commandType": "CPU",
        "args": ["-l", "1", "-c", "2"],
    }
    assert gremlin.command_for("cpu", PRIMARY, length=59.2)["args"][:2] == ["-l", "60"]
    for cores in (CPU_MAX_CORES + 1, True):
        with pytest.raises(FaultError, match="cores"):
            gremlin.command_for("cpu", PRIMARY, length=5, cores=cores)


class ExecOnly:
    """A container whose exec answers as told, and that records what it was asked to run."""

    id = "c0ffee"
    name = "redis-0"
    status = "running"

    def __init__(self, exit_code: int, output: bytes) -> None:
        self.result = SimpleNamespace(exit_code=exit_code, output=output)
        self.ran: list[list[str]] = []

    def exec_run(self, cmd: list[str], **options: Any) -> SimpleNamespace:
        assert not options.get("detach"), "a detached exec reports no exit code"
        self.ran.append(cmd)
        return self.result


def docker_cpu(container: ExecOnly, **params: Any) -> Any:
    backend = DockerFaultBackend(client=object())  # type: ignore[arg-type]
    what = "docker cpu on s0-primary"
    unrecorded = FaultIntent(None, "cpu", PRIMARY, container, what, None)  # type: ignore[arg-type]
    return backend._cpu(FaultCall(container, PRIMARY, what, params, unrecorded))  # type: ignore[arg-type]


def test_docker_cpu_waits_for_its_launcher_and_rounds_the_length_up() -> None:
    container = ExecOnly(0, b"2 busy loop(s) running\n")
    fault = docker_cpu(container, cores=2, length=0.5)
    assert fault.details["length"] == 1 and "exec" not in fault.details
    assert fault.details["launcher"] == "2 busy loop(s) running"
    script = container.ran[0][2]
    assert "timeout 1 sh -c" in script and "kill -0" in script and "[ $i -lt 2 ]" in script


def test_docker_cpu_without_a_shell_says_so() -> None:
    missing = b'OCI runtime exec failed: exec: "sh": executable file not found in $PATH'
    with pytest.raises(FaultError, match=r"no shell.*redis-image\.sh"):
        docker_cpu(ExecOnly(127, missing), cores=1, length=5)


def test_docker_cpu_with_no_loop_running_is_refused() -> None:
    with pytest.raises(FaultError, match=r"no busy loop runs.*exited with 1"):
        docker_cpu(ExecOnly(1, b"0 busy loop(s) running"), cores=1, length=5)


def test_the_launcher_counts_every_core_the_container_sees_by_default() -> None:
    assert "nproc" in cpu_launcher(None, 5, "/tmp/x.pids")
