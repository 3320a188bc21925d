"""Which program a command line runs, read as CPython reads its own options: the program a
process check compares (never a word among the arguments, however a flag is spelled), and the
one map from a node's role to the names its program goes by."""

from __future__ import annotations

import pytest

from chaos.processes import may_hold_faults, program_names, runs_program
from common.nodes import PROGRAMS_OF_ROLE


@pytest.mark.parametrize(
    ("argv", "program"),
    [
        (["/usr/bin/redis-server", "*:7001"], "redis-server"),
        (["redis-server 127.0.0.1:7001"], "redis-server"),  # Redis' rewritten title
        (["python3", "-m", "ratequeue", "serve"], "ratequeue"),
        (["python3", "-mratequeue", "serve"], "ratequeue"),
        (["python3", "-um", "detection", "sensor"], "detection"),
        (["python3", "-m", "lazarus_lite.cli", "serve"], "lazarus_lite"),
        (["python3", "--check-hash-based-pycs", "always", "-m", "lazarus_lite"], "lazarus_lite"),
        (["python3", "-X", "dev", "-W", "error", "-m", "detection"], "detection"),
        (["python3", "-Xdev", "-Werror", "-OO", "-m", "detection"], "detection"),
        (["/venv/bin/python3.11", "-E", "/venv/bin/lazarus", "serve"], "lazarus"),
        (["python3.13t", "-m", "ratequeue"], "ratequeue"),
        (["python3-dbg", "-m", "ratequeue"], "ratequeue"),
        (["pypy3", "-m", "ratequeue"], "ratequeue"),
        (["python3", "--", "/opt/redis-server"], "redis-server"),  # `--` ends the options
    ],
)  # fmt: skip
def test_the_program_is_the_executable_or_the_script_or_module_python_runs(
    argv: list[str], program: str
) -> None:
    assert program in program_names(argv)


@pytest.mark.parametrize(
    ("argv", "decoy"),
    [
        (["sleep", "100", "redis-server"], "redis-server"),
        (["sh", "-c", "sleep 300", "redis-server", "127.0.0.1:7001"], "redis-server"),
        (["python3", "-c", "import time; time.sleep(600)", "redis-server"], "redis-server"),
        (["python3", "-cimport time; time.sleep(600)", "redis-server", "127.0.0.1:7001"],
         "redis-server"),
        (["python3", "-Ic", "import time; time.sleep(600)", "ratequeue"], "ratequeue"),
        (["python3", "-Ic", "ratequeue"], "ratequeue"),  # the code itself is no program
        (["python3", "-W", "ratequeue", "-c", "pass"], "ratequeue"),  # -W's value
        (["python3", "-Xratequeue", "-c", "pass"], "ratequeue"),
        (["python3", "--check-hash-based-pycs", "ratequeue", "-c", "pass"], "ratequeue"),
        (["python3", "-", "redis-server"], "redis-server"),  # a script read from stdin
        (["python3", "-m", "decoy", "-m", "ratequeue"], "ratequeue"),  # the module's argument
        (["python3", "-J", "ratequeue"], "ratequeue"),  # an option CPython refuses
        (["python3", "--unknown", "ratequeue"], "ratequeue"),
    ],
)  # fmt: skip
def test_a_program_named_only_among_the_arguments_is_not_the_program(
    argv: list[str], decoy: str
) -> None:
    assert decoy not in program_names(argv)


def test_a_python_command_names_its_top_level_package_not_the_submodule() -> None:
    assert "lazarus_lite.cli" not in program_names(["python3", "-m", "lazarus_lite.cli"])


def test_the_kernels_name_of_the_program_counts() -> None:
    assert "redis-server" in program_names(["/proc/self/exe", "*:7001"], comm="redis-server")


@pytest.mark.parametrize(
    "argv",
    [
        ["python3", "-m", "lazarus_lite", "serve"],  # the testbed's controllers
        ["/usr/local/bin/python3", "/usr/local/bin/lazarus", "serve"],  # staging's console script
    ],
)
def test_a_controller_runs_its_roles_program_as_a_module_or_as_the_console_script(
    argv: list[str],
) -> None:
    assert runs_program(argv, None, PROGRAMS_OF_ROLE["lazarus"])


def test_a_deployment_node_of_a_role_of_the_users_own_loads() -> None:
    """A target file may name roles the testbed does not start (a load balancer); a fault on
    such a node is told the program by `expect`."""
    from chaos.faults.base import NodeTarget

    node = NodeTarget.model_validate({"name": "lb", "role": "haproxy", "port": 8080})
    assert node.role == "haproxy"


@pytest.mark.parametrize("typo", ["Primary", "master", "controller", "REPLICA", "slave"])
def test_a_role_that_looks_like_a_built_in_one_is_refused_as_a_typo(typo: str) -> None:
    from pydantic import ValidationError

    from chaos.faults.base import NodeTarget

    with pytest.raises(ValidationError, match="did you mean"):
        NodeTarget.model_validate({"name": "n", "role": typo, "port": 6379})


def test_a_testbed_node_of_a_role_without_known_programs_must_name_its_program() -> None:
    from pydantic import ValidationError

    from chaos.testbed import TestbedNode

    fields = {"name": "web-1", "role": "instance", "host": "127.0.0.1", "port": 8080, "pid": 1}
    with pytest.raises(ValidationError, match="must name its program"):
        TestbedNode.model_validate(fields)
    assert TestbedNode.model_validate({**fields, "program": "http.server"}).program


@pytest.mark.parametrize(
    "argv",
    [
        ["/venv/bin/python3", "/venv/bin/ratequeue-chaos", "run", "scenarios/primary_kill.yaml"],
        ["python3", "-m", "chaos", "run", "--target", "t.yaml", "x.yaml"],
        ["python3", "-mchaos", "soak", "--cycles", "3"],
        ["/venv/bin/python3", "/venv/bin/ratequeue-chaos", "agent"],
        ["/venv/bin/python3", "/venv/bin/chaos", "run", "experiment.json"],  # Chaos Toolkit
        ["/venv/bin/python3", "/venv/bin/chaos", "--log-file", "ctk.log", "run", "e.json"],
        ["python3", "-m", "chaostoolkit", "run", "e.json"],
        ["/venv/bin/python3", "/venv/bin/chaos", "--settings", "s.yaml"],  # not understood
    ],
)
def test_a_chaos_command_that_may_hold_a_fault_is_one(argv: list[str]) -> None:
    assert may_hold_faults(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["/venv/bin/python3", "/venv/bin/ratequeue-chaos", "halt", "--journal-dir", "run"],
        ["/venv/bin/python3", "/venv/bin/ratequeue-chaos", "validate", "scenarios/a.yaml"],
        ["/venv/bin/python3", "/venv/bin/ratequeue-chaos", "testbed", "up"],
        ["/venv/bin/python3", "/venv/bin/ratequeue-chaos", "run", "--dry-run", "a.yaml"],
        ["/venv/bin/python3", "/venv/bin/chaos", "validate", "e.json"],
        ["/venv/bin/python3", "/venv/bin/chaos", "run", "--help"],
        ["python3", "-m", "ratequeue", "serve"],  # not a chaos program
        ["/usr/bin/sleep", "100", "chaos", "run"],  # a word among the arguments
    ],
)
def test_a_command_that_makes_no_fault_is_not_one(argv: list[str]) -> None:
    assert not may_hold_faults(argv)
