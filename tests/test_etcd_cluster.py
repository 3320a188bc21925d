"""A three-member etcd cluster on loopback (`common.etcd_processes`): it starts with a leader,
elects another when the leader is killed, and a member killed and restarted on its data
directory rejoins and catches up. Members never outlive the process that started them."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from common.errors import EtcdStartError
from common.etcd_processes import EtcdCluster, EtcdMember, EtcdTimings

WORKTREE = Path(__file__).resolve().parent.parent


def put(url: str, key: str, value: str) -> None:
    body = {"key": base64.b64encode(key.encode()).decode(),
            "value": base64.b64encode(value.encode()).decode()}  # fmt: skip
    httpx.post(f"{url}/v3/kv/put", json=body, timeout=5).raise_for_status()


def local_value(member: EtcdMember, key: str) -> str | None:
    """What the member itself holds (a serializable read: no round to the leader)."""
    body = {"key": base64.b64encode(key.encode()).decode(), "serializable": True}
    answer = httpx.post(f"{member.client_url}/v3/kv/range", json=body, timeout=1).json()
    kvs = answer.get("kvs", [])
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def test_a_started_cluster_has_a_leader_that_a_majority_follows(etcd: EtcdCluster) -> None:
    leader = etcd.wait_for_leader()
    assert leader in etcd.members
    leader_ids = {str(m.status()["leader"]) for m in etcd.members}  # type: ignore[index]
    assert leader_ids == {str(leader.status()["header"]["member_id"])}  # type: ignore[index]


def test_killing_the_leader_elects_another_member(etcd: EtcdCluster) -> None:
    old = etcd.wait_for_leader()
    old.kill()
    new = etcd.wait_for_leader(other_than=old)
    assert new is not old and new.alive()


def test_a_paused_member_answers_nothing_until_resumed(etcd: EtcdCluster) -> None:
    member = etcd.members[0]
    member.pause()
    assert member.status(timeout=0.3) is None
    member.resume()
    assert member.status(timeout=2.0) is not None


def test_a_killed_member_restarted_on_its_data_dir_rejoins_and_catches_up(
    etcd: EtcdCluster,
) -> None:
    leader = etcd.wait_for_leader()
    follower = next(m for m in etcd.members if m is not leader)
    put(leader.client_url, "before-kill", "kept on disk")
    follower.kill()
    put(leader.client_url, "while-down", "sent after restart")
    follower.restart()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and local_value(follower, "while-down") is None:
        time.sleep(0.05)
    assert local_value(follower, "while-down") == "sent after restart"
    assert local_value(follower, "before-kill") == "kept on disk"
    assert etcd.wait_for_leader() in etcd.members


def test_an_election_timeout_under_five_heartbeats_is_refused() -> None:
    with pytest.raises(EtcdStartError, match="election_ms"):
        EtcdTimings(heartbeat_ms=100, election_ms=400)


def test_members_die_with_the_process_that_started_them(tmp_path: Path) -> None:
    script = (
        "import sys, time; from pathlib import Path\n"
        "from common.etcd_processes import start_etcd_cluster\n"
        "cluster = start_etcd_cluster(Path(sys.argv[1]), size=1)\n"
        "print(cluster.members[0].pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(WORKTREE)}
    starter = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                               stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        pid = int(starter.stdout.readline())  # type: ignore[union-attr]
        os.kill(starter.pid, signal.SIGKILL)
        starter.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _running(pid):
            time.sleep(0.05)
        assert not _running(pid)
    finally:
        starter.kill()
        starter.wait(timeout=10)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False
