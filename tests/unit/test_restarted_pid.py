"""A node a fault boots again (a stop's restart, a start) runs as a new process: the deployment,
and a testbed's `testbed.json`, must carry its new pid, so `ratequeue-chaos testbed status`, `down`
and a later fault reach it. The backend here is a stand-in; tests/chaos/test_local_faults.py
restarts real processes.

Not for: how the local backend stops and starts a process (tests/chaos/test_local_faults.py).
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest

from chaos.errors import FaultError
from chaos.experiments import FaultStep, Selector
from chaos.fault_phase import FaultPhase
from chaos.faults.base import InjectedFault, NodeTarget
from chaos.targets import Deployment, from_testbed
from chaos.testbed import TestbedNode, TestbedState, load_state, state_path

OLD_PID, NEW_PID = 4100, 4242
COMMAND = ["redis-server", "--port", "7001"]


class Restarter:
    """A local backend stand-in: stop's undo "restarts" the node as NEW_PID (or fails after
    starting it, when told), start "starts" it as NEW_PID."""

    name = "local"

    def __init__(self, *, port_wait_fails: bool = False) -> None:
        self.port_wait_fails = port_wait_fails
        self.params: dict[str, Any] = {}

    def supports(self, action: str) -> bool:
        return action in {"stop", "start"}

    def inject(self, action: str, target: NodeTarget, **params: Any) -> InjectedFault:
        self.params = params
        if action == "start":
            return InjectedFault("start", target, self.name, details={"pid": NEW_PID})
        fault = InjectedFault("stop", target, self.name, details={"pid": target.pid})

        def undo() -> None:
            fault.details["restarted"] = {"via": "command", "pid": NEW_PID}
            if self.port_wait_fails:
                raise FaultError("started, but the port does not accept connections")

        fault.undo = undo
        return fault


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    state = TestbedState(
        api="http://127.0.0.1:8000",
        control="redis://127.0.0.1:7000",
        nodes=[
            TestbedNode(
                name="s0-replica1",
                role="replica",
                shard="s0",
                host="127.0.0.1",
                port=7001,
                pid=OLD_PID,
                command=COMMAND,
            )
        ],
    )
    state_path(tmp_path).write_text(state.model_dump_json())
    return from_testbed(state, tmp_path)


def phase(deployment: Deployment, backend: Restarter) -> FaultPhase:
    return FaultPhase(deployment, None, rng=random.Random(0), stop=threading.Event(),  # type: ignore[arg-type]
                      say=lambda _: None, backends={"local": backend})  # fmt: skip


@pytest.mark.parametrize("action", ["stop", "start"])
def test_the_new_pid_is_in_the_deployment_and_in_testbed_json(
    deployment: Deployment, action: str
) -> None:
    backend = Restarter()
    node = deployment.node("s0-replica1")
    step = FaultStep(action=action, target=Selector(role="replica"))
    fault = phase(deployment, backend).inject(step, node)
    assert backend.params["command"] == COMMAND
    fault.rollback()
    assert deployment.node("s0-replica1").pid == NEW_PID
    assert deployment.as_target(deployment.node("s0-replica1")).pid == NEW_PID
    assert load_state(deployment.testbed_dir).node("s0-replica1").pid == NEW_PID  # type: ignore[arg-type]


def test_a_restart_that_fails_its_port_wait_still_records_the_pid(deployment: Deployment) -> None:
    step = FaultStep(action="stop", target=Selector(role="replica"))
    fault = phase(deployment, Restarter(port_wait_fails=True)).inject(
        step, deployment.node("s0-replica1")
    )
    with pytest.raises(FaultError, match="port"):
        fault.rollback()
    assert load_state(deployment.testbed_dir).node("s0-replica1").pid == NEW_PID  # type: ignore[arg-type]


def test_restarts_recorded_at_once_from_many_threads_all_land(tmp_path: Path) -> None:
    """Timed rollbacks run on their own threads: every pid they record must survive."""
    from chaos.testbed import record_pid

    names = [f"s{i}-replica1" for i in range(8)]
    state = TestbedState(
        api="http://127.0.0.1:8000",
        control="redis://127.0.0.1:7000",
        nodes=[
            TestbedNode(
                name=name,
                role="replica",
                shard=name[:2],
                host="127.0.0.1",
                port=7001 + i,
                pid=OLD_PID,
            )
            for i, name in enumerate(names)
        ],
    )
    state_path(tmp_path).write_text(state.model_dump_json())
    go = threading.Barrier(len(names))
    errors: list[BaseException] = []

    def record(index: int) -> None:
        go.wait()
        try:
            assert record_pid(tmp_path, names[index], NEW_PID + index)
        except BaseException as error:  # collected: the assertion below names it
            errors.append(error)

    threads = [threading.Thread(target=record, args=(i,)) for i in range(len(names))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    after = load_state(tmp_path)
    assert [after.node(name).pid for name in names] == [NEW_PID + i for i in range(len(names))]  # type: ignore[union-attr]
    assert not list(tmp_path.glob(".testbed.json.*"))  # no temporary file left behind


def test_a_testbed_taken_down_meanwhile_is_not_brought_back(tmp_path: Path) -> None:
    from chaos.testbed import record_pid

    assert record_pid(tmp_path, "s0-replica1", NEW_PID) is False
    assert not state_path(tmp_path).exists()
