"""Faults on the coordination store itself as an experiment file gives them: the
`etcd_member` and `control_store` targets, the `member` field, and the testbed's `control`
backend (the file's, or `ratequeue-chaos run --control`'s), checked up front with the field and
reason.

Not for: carrying the faults out (tests/test_scenarios.py runs them on real testbeds).
"""

from __future__ import annotations

import pytest

from chaos.errors import ExperimentError
from chaos.experiments import TestbedOverrides, parse_experiment


def experiment(step: str, control: str | None = None) -> str:
    top = f"control: {control}\n" if control else ""
    return f"title: t\n{top}method:\n  - {step}\nhypotheses:\n  - {{type: not_remediated}}\n"


def test_an_experiment_runs_on_a_redis_control_store_unless_it_says_otherwise() -> None:
    parsed = parse_experiment(experiment("{action: kill, target: {role: control_store}}"), "x")
    assert parsed.control == "redis"


def test_an_etcd_member_target_names_the_part_the_member_plays() -> None:
    step = "{action: pause, target: {role: etcd_member, member: leader}}"
    parsed = parse_experiment(experiment(step, "etcd"), "x")
    assert (parsed.control, parsed.faults[0].target.member) == ("etcd", "leader")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (experiment("{action: kill, target: {role: etcd_member}}"), "needs control: etcd"),
        (experiment("{action: kill, target: {role: primary, member: leader}}"), "member is for"),
        (experiment("{action: kill, target: {role: etcd_member, member: boss}}", "etcd"), "member"),
        (experiment("{action: kill, target: {role: control_store}}", "zookeeper"), "control"),
    ],
)
def test_a_store_fault_that_cannot_be_run_is_refused_naming_the_field(
    text: str, problem: str
) -> None:
    with pytest.raises(ExperimentError, match=problem):
        parse_experiment(text, "x.yaml")


def test_the_run_s_control_option_overrides_the_file_s_and_is_checked_with_it() -> None:
    step = "{action: kill, target: {role: etcd_member}}"
    assert (
        parse_experiment(experiment(step), "x", TestbedOverrides(control="etcd")).control == "etcd"
    )
    with pytest.raises(ExperimentError, match="needs control: etcd"):
        parse_experiment(experiment(step, "etcd"), "x", TestbedOverrides(control="redis"))
