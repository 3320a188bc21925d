"""The Chaos Toolkit extension's activities against real redis-server processes (a two-shard
cluster with its topology in a real control store, named by a target file in the experiment's
configuration): a pause through the local fault backend and its rollback, and the probes that
read the live shards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from chaos.ctk import actions, probes
from chaos.ctk.session import DEFAULT_JOURNAL_DIR, forget_sessions, session_for
from chaos.errors import ExperimentError, RunAborted, TargetError
from ratequeue.local_cluster import LocalCluster


@pytest.fixture
def configuration(cluster: LocalCluster, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The CTK configuration naming a target file for `cluster`; every fault the test injected
    is rolled back at teardown, also on failure."""
    nodes = [
        {"name": n.name, "role": n.role, "shard": n.shard, "host": n.host, "port": n.port,
         "peer_host": n.peer_host, "pid": n.pid}
        for n in cluster.nodes()
    ]  # fmt: skip
    target = tmp_path / "target.json"
    target.write_text(json.dumps({"name": "ctk-test", "api": "http://127.0.0.1:9",
                                  "control": cluster.control.url, "nodes": nodes}))  # fmt: skip
    configuration = {"ratequeue_deployment": str(target),
                     "ratequeue_journal_dir": str(tmp_path / "journals")}  # fmt: skip
    yield configuration
    try:
        actions.roll_back_all(configuration=configuration)
    finally:
        forget_sessions()


def answers(cluster: LocalCluster, shard: str) -> bool:
    primary = cluster.shard(shard).primary
    try:
        with redis.Redis(host=primary.host, port=primary.port, socket_timeout=0.5) as conn:
            return bool(conn.ping())
    except redis.RedisError:
        return False


def test_pause_freezes_the_shards_primary_and_resume_rolls_it_back(
    cluster: LocalCluster, configuration: dict[str, str]
) -> None:
    [fault] = actions.pause(role="primary", shard="s0", configuration=configuration)
    assert (fault["action"], fault["target"], fault["backend"]) == ("pause", "s0-primary", "local")
    assert not answers(cluster, "s0")
    assert answers(cluster, "s1")
    [undone] = actions.resume(configuration=configuration)
    assert undone["rolled_back_at"] is not None
    assert answers(cluster, "s0")


def test_one_primary_per_shard_and_promoted_shards_read_the_live_cluster(
    cluster: LocalCluster, configuration: dict[str, str]
) -> None:
    assert probes.one_primary_per_shard(timeout=5, configuration=configuration) is True
    assert probes.promoted_shards(configuration=configuration) == 0
    with cluster.shard("s1").replicas[0].client() as conn:
        conn.execute_command("REPLICAOF", "NO", "ONE")  # a second master on s1
    assert probes.one_primary_per_shard(timeout=0.5, configuration=configuration) is False


def test_recovery_seconds_without_a_running_load_fails_rather_than_return_a_value(
    configuration: dict[str, str],
) -> None:
    with pytest.raises(RunAborted, match="no load is running"):
        probes.recovery_seconds(timeout=1, configuration=configuration)


def test_the_session_writes_its_docker_faults_down_in_the_configured_journal_directory(
    configuration: dict[str, str], tmp_path: Path
) -> None:
    assert session_for(configuration).faults.journal_dir == tmp_path / "journals"


def test_without_a_journal_directory_the_session_uses_the_clis_default(
    configuration: dict[str, str],
) -> None:
    del configuration["ratequeue_journal_dir"]
    assert session_for(configuration).faults.journal_dir == DEFAULT_JOURNAL_DIR


def test_a_journal_directory_that_is_not_a_path_is_refused_naming_the_key(
    configuration: dict[str, str],
) -> None:
    refused = {**configuration, "ratequeue_journal_dir": 7}
    with pytest.raises(TargetError, match="ratequeue_journal_dir: expected the path"):
        session_for(refused)


def test_a_pause_of_a_negative_length_is_refused_naming_the_argument_and_nothing_is_paused(
    configuration: dict[str, str], cluster: LocalCluster
) -> None:
    with pytest.raises(ExperimentError, match="argument 'seconds': must be more than 0 s and at"):
        actions.pause(role="primary", shard="s0", seconds=-3, configuration=configuration)
    assert answers(cluster, "s0")


def test_a_cut_from_an_unknown_role_is_refused_naming_the_argument_and_nothing_is_cut(
    configuration: dict[str, str], cluster: LocalCluster
) -> None:
    with pytest.raises(ExperimentError, match="argument 'from_role': Input should be 'primary'"):
        actions.blackhole(shard="s0", from_role="router", configuration=configuration)
    assert answers(cluster, "s0")


def test_a_fault_on_a_shard_the_cluster_lacks_is_refused_naming_the_shards_there(
    configuration: dict[str, str], cluster: LocalCluster
) -> None:
    with pytest.raises(
        TargetError, match=r"no shard 's99' in this deployment \(its shards: s0, s1"
    ):
        actions.kill(role="primary", shard="s99", configuration=configuration)
    assert answers(cluster, "s0") and answers(cluster, "s1")
