"""`ratequeue-chaos soak --control`: which compose files staging is brought up with, which
target the cycles run against (the one deploy/staging-etcd-target.yaml describes, at the ports
the environment publishes), and a bad value refused naming the option."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from chaos.cli import app
from chaos.errors import ChaosError
from chaos.soak import ETCD_OVERRIDE, StagingEndpoints, staging_compose_files
from chaos.targets import load_deployment

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"


def test_on_redis_staging_is_the_compose_file_alone() -> None:
    assert staging_compose_files(COMPOSE_FILE, "redis") == [COMPOSE_FILE]


def test_on_etcd_the_etcd_override_beside_the_compose_file_comes_after_it() -> None:
    assert staging_compose_files(COMPOSE_FILE, "etcd") == [COMPOSE_FILE, ROOT / ETCD_OVERRIDE]


def test_etcd_without_its_override_is_refused_naming_the_option(tmp_path: Path) -> None:
    alone = tmp_path / "docker-compose.yml"
    alone.write_text(COMPOSE_FILE.read_text())
    with pytest.raises(ChaosError, match=f"--control etcd: no {ETCD_OVERRIDE} beside"):
        staging_compose_files(alone, "etcd")


@pytest.mark.parametrize(
    ("control", "target_file"),
    [("redis", "staging-target.yaml"), ("etcd", "staging-etcd-target.yaml")],
)
def test_the_soaks_target_is_the_one_the_target_file_describes(
    control: str, target_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("API", "LAZARUS1", "LAZARUS2", "LAZARUS3", "CONTROL", "ETCD1", "ETCD2", "ETCD3"):
        monkeypatch.delenv(f"RQ_{name}_PORT", raising=False)
    described = load_deployment(ROOT / "deploy" / target_file)
    built = StagingEndpoints.from_environment(control).target()  # type: ignore[arg-type]
    assert built.model_dump() == described.model_dump()


def test_on_etcd_the_members_are_reached_at_the_ports_the_environment_publishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for number, port in ((1, 41001), (2, 41002), (3, 41003)):
        monkeypatch.setenv(f"RQ_ETCD{number}_PORT", str(port))
    target = StagingEndpoints.from_environment("etcd").target()
    assert target.etcd_endpoints == (
        "http://127.0.0.1:41001,http://127.0.0.1:41002,http://127.0.0.1:41003"
    )


def test_on_redis_the_target_names_no_etcd_member(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RQ_ETCD1_PORT", "41001")
    assert StagingEndpoints.from_environment("redis").target().etcd_endpoints is None


def test_a_control_store_the_soak_does_not_know_is_refused_naming_the_option() -> None:
    result = CliRunner().invoke(
        app, ["soak", "--control", "zookeeper", "--no-up"], env={"COLUMNS": "300"}
    )
    assert result.exit_code == 2
    assert "--control" in result.output
    assert "'zookeeper' is not one of 'redis', 'etcd'" in result.output


@pytest.mark.parametrize(
    ("variable", "value"), [("RQ_API_PORT", "abc"), ("RQ_ETCD2_PORT", "99999")]
)
def test_a_port_variable_that_is_not_a_port_is_refused_naming_it_before_staging_starts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(
        app,
        ["soak", "--control", "etcd", "--no-up", "--no-down", "--journal-dir", str(tmp_path)],
        env={"COLUMNS": "300"},
    )
    assert result.exit_code != 0
    assert f"{variable}: expected a TCP port (1-65535), got {value!r}" in result.output
    assert not any(tmp_path.iterdir())  # refused before the soak wrote anything


def test_on_redis_the_etcd_port_variables_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RQ_ETCD1_PORT", "abc")
    assert StagingEndpoints.from_environment("redis").control == "redis"


def test_an_etcd_error_is_a_failed_cycle_not_the_end_of_the_soak() -> None:
    from chaos.soak import CYCLE_ERRORS
    from common.errors import EtcdUnreachable

    assert isinstance(EtcdUnreachable("no member answered"), CYCLE_ERRORS)
