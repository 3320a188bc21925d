"""A method's fault steps as an experiment file gives them: the cpu step's own params (`cores`,
and the duration it needs) are checked up front, with the field and the reason.

Not for: carrying the faults out (tests/chaos) or the other parts of an experiment file
(tests/test_bad_files.py).
"""

from __future__ import annotations

import pytest

from chaos.errors import ExperimentError
from chaos.experiments import parse_experiment


def experiment(step: str) -> str:
    return f"title: t\nmethod:\n  - {step}\nhypotheses:\n  - {{type: not_remediated}}\n"


def test_a_cpu_step_takes_cores_and_a_duration() -> None:
    step = parse_experiment(
        experiment("{action: cpu, target: {role: primary}, cores: 2, duration: 3s}"), "x.yaml"
    ).faults[0]
    assert (step.action, step.cores, step.duration) == ("cpu", 2, 3.0)
    every_core = parse_experiment(
        experiment("{action: cpu, target: {role: primary}, duration: 1s}"), "x.yaml"
    ).faults[0]
    assert every_core.cores is None  # every core of the host


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        ("{action: cpu, target: {role: primary}, cores: 0, duration: 1s}", "cores"),
        ("{action: cpu, target: {role: primary}, cores: 1.5, duration: 1s}", "cores"),
        ("{action: cpu, target: {role: primary}, cores: 999, duration: 1s}", "cores"),
        ("{action: cpu, target: {role: primary}, cores: true, duration: 1s}", "cores"),
        ("{action: cpu, target: {role: primary}, cores: '2', duration: 1s}", "cores"),
        ("{action: cpu, target: {role: primary}}", "needs a duration"),
        ("{action: cpu, target: {role: primary}, duration: 0.5s}", "duration must be 1 s"),
        ("{action: cpu, target: {role: primary}, duration: 25h}", "duration must be 1 s"),
        ("{action: pause, target: {role: primary}, cores: 2}", "cores is for a cpu fault"),
    ],
)
def test_a_cpu_param_out_of_place_is_refused_naming_it(step: str, problem: str) -> None:
    with pytest.raises(ExperimentError) as refused:
        parse_experiment(experiment(step), "bad.yaml")
    message = str(refused.value)
    assert "bad.yaml" in message and problem in message, message
