"""A method's steps as an experiment file gives them: the cpu step's own params (`cores`, and
the duration it needs), every step's time and length, an approval's gate, and the waits
(`watch_seconds`, a probe's `timeout`) are checked up front, with the field and the reason.

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
        (
            "{action: cpu, target: {role: primary}}",
            "field 'method.0.duration': a cpu fault needs how long the cores stay busy",
        ),
        (
            "{action: cpu, target: {role: primary}, duration: 0.5s}",
            "field 'method.0.duration': a cpu fault lasts 1 s to",
        ),
        ("{action: cpu, target: {role: primary}, duration: 25h}", "at most 1 day, not 25 h"),
        ("{action: pause, target: {role: primary}, cores: 2}", "cores is for a cpu fault"),
    ],
)
def test_a_cpu_param_out_of_place_is_refused_naming_it(step: str, problem: str) -> None:
    with pytest.raises(ExperimentError) as refused:
        parse_experiment(experiment(step), "bad.yaml")
    message = str(refused.value)
    assert "bad.yaml" in message and problem in message, message


@pytest.mark.parametrize(
    ("step", "field", "bounds"),
    [
        ("{action: kill, target: {role: primary}, at: -5}", "method.0.at",
         "must be at least 0 s and at most 1 day, not -5 s"),
        ("{action: kill, target: {role: primary}, at: 25h}", "method.0.at",
         "must be at least 0 s and at most 1 day, not 25 h"),
        ("{action: pause, target: {role: primary}, duration: -3}", "method.0.duration",
         "must be more than 0 s and at most 1 day, not -3 s"),
        ("{action: pause, target: {role: primary}, duration: 0}", "method.0.duration",
         "must be more than 0 s and at most 1 day, not 0 s"),
        ("{action: pause, target: {role: primary}, duration: 99999999h}", "method.0.duration",
         "must be more than 0 s and at most 1 day, not 99999999 h"),
        ("{approve: failover, at: -1}", "method.0.at",
         "must be at least 0 s and at most 1 day, not -1 s"),
    ],
)  # fmt: skip
def test_a_step_time_or_length_out_of_range_is_refused_naming_the_field_and_the_range(
    step: str, field: str, bounds: str
) -> None:
    with pytest.raises(ExperimentError) as refused:
        parse_experiment(experiment(step), "bad.yaml")
    assert f"field '{field}': {bounds}" in str(refused.value), str(refused.value)


@pytest.mark.parametrize("name", ['""', "'  '"])
def test_an_approve_step_naming_no_gate_is_refused(name: str) -> None:
    with pytest.raises(ExperimentError) as refused:
        parse_experiment(experiment(f"{{approve: {name}}}"), "bad.yaml")
    message = str(refused.value)
    assert "field 'method.0.approve': must name the gate's step" in message, message


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ("watch_seconds: 99999999h\n", "watch_seconds"),
        ("steady_state:\n  - {probe: api_healthy, timeout: 99999999h}\n", "steady_state.0.timeout"),
    ],
)
def test_a_wait_longer_than_a_day_is_refused_naming_the_field_and_the_range(
    fields: str, field: str
) -> None:
    text = experiment("{action: kill, target: {role: primary}}") + fields
    with pytest.raises(ExperimentError) as refused:
        parse_experiment(text, "bad.yaml")
    message = str(refused.value)
    assert f"field '{field}': must be more than 0 s and at most 1 day" in message, message
