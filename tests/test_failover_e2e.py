"""End-to-end failover on the local testbed: real redis-server processes, heartbeat sensors,
three controller nodes, and producers and consumers through the HTTP API keeping a ledger of
acknowledged and delivered ids. Every acknowledged message must be delivered."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from chaos.load import BackgroundLoad, LoadProfile
from chaos.testbed import TestbedState, running_testbed
from ratequeue.errors import RetryableError
from ratequeue.rates import Rate
from ratequeue.shard import OutgoingMessage, ShardQueue
from tests.e2e.support import (
    LOAD,
    control_topology,
    failed_over,
    lazarus_events,
    primaries_answering,
    resume,
    send,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def testbed(tmp_path: Path) -> Iterator[TestbedState]:
    with running_testbed(tmp_path / "tb", shards=2, replicas=2) as state:
        yield state


def test_a_killed_primary_is_replaced_and_no_acknowledged_message_is_lost(
    testbed: TestbedState,
) -> None:
    load = BackgroundLoad(testbed.api, LoadProfile(**LOAD)).start()
    time.sleep(2)
    killed_at = time.time()
    send(testbed, "s0-primary", signal.SIGKILL)
    after = wait_for("s0 to fail over", lambda: failed_over(testbed, "s0", "s0-primary"))
    wait_for("an acknowledged write on s0 after the kill",
             lambda: load.ledger.first_ack_after(killed_at + 0.5, "s0"), timeout=20)  # fmt: skip
    time.sleep(2)
    ledger = load.join()

    assert ledger.lost() == set()
    assert len(ledger.acknowledged) > 100
    assert ledger.availability("s1", since=killed_at) == 1.0
    assert after.shard("s0").forensics[0].name == "s0-primary"
    assert primaries_answering(testbed, "s0") == [after.shard("s0").primary.name]
    assert len(primaries_answering(testbed, "s1")) == 1
    wait_for("every node the quorum did not wait for to be heard late",
             lambda: late_verdicts_complete(testbed), timeout=20)  # fmt: skip


def late_verdicts_complete(testbed: TestbedState) -> bool:
    """The decided failovers' records: each node not waited for has its verdict in a note
    (a verdict names its node by id, `not_awaited` by the URL it was asked at: count them)."""
    decided = [e for e in lazarus_events(testbed, limit=1000)
               if e.get("workflow_id") and e.get("quorum")]  # fmt: skip
    return bool(decided) and all(
        len(e["quorum"]["not_awaited"]) == len(late_verdicts(e)) for e in decided
    )


def late_verdicts(record: dict) -> list[dict]:
    notes = [n for n in record["notes"] if n["kind"] == "late_verdicts"]
    return [verdict for note in notes for verdict in note["data"]["verdicts"]]


def test_a_paused_primary_does_not_acknowledge_a_write_after_its_shard_failed_over(
    testbed: TestbedState,
) -> None:
    load = BackgroundLoad(testbed.api, LoadProfile(**LOAD)).start()
    time.sleep(2)
    old = control_topology(testbed).shard("s0").primary
    send(testbed, "s0-primary", signal.SIGSTOP)
    try:
        after = wait_for("s0 to fail over", lambda: failed_over(testbed, "s0", "s0-primary"))
    finally:
        resume(testbed, "s0-primary")
    new_epoch = after.shard("s0").epoch
    # The zombie answers again; held for forensics, it refuses to acknowledge in either epoch.
    wait_for("the old primary to answer again", lambda: _answers(old.host, old.port))
    for epoch in (new_epoch, 1):
        with pytest.raises(RetryableError):  # refused or not confirmed: never acknowledged
            _enqueue_directly(old.host, old.port, epoch)
    time.sleep(2)
    ledger = load.join()

    assert ledger.lost() == set()
    assert primaries_answering(testbed, "s0") == [after.shard("s0").primary.name]


def _answers(host: str, port: int) -> bool:
    try:
        with redis.Redis(host=host, port=port, socket_timeout=0.5) as conn:
            return bool(conn.ping())
    except (redis.RedisError, OSError):
        return False


def _enqueue_directly(host: str, port: int, epoch: int) -> None:
    import asyncio

    import redis.asyncio as aioredis

    async def attempt() -> None:
        connection = aioredis.Redis(host=host, port=port, socket_timeout=3)
        try:
            queue = ShardQueue("s0", connection)
            message = OutgoingMessage(
                "zombie-1", "+14155550100", 1, Rate(per_second=1, burst=1), '"x"'
            )
            await queue.enqueue_batch(epoch, [message], min_replicas=1, wait_timeout_ms=300)
        finally:
            await connection.aclose()

    asyncio.run(attempt())


def test_a_controller_that_dies_mid_failover_is_replaced_by_another_that_finishes_it(
    tmp_path: Path,
) -> None:
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    gated = Path(__file__).parents[1] / "lazarus_lite/definitions/workflows/ratequeue_failover.yaml"
    # An approval gate after the promotion holds the workflow until the coordinator is dead.
    repoint = "    run: ratequeue.repoint_replicas\n    needs: ["
    text = gated.read_text().replace(f"{repoint}promote_candidate]", f"{repoint}hold_for_test]")
    text += (
        "  - name: hold_for_test\n    run: approval.wait\n    needs: [promote_candidate]\n"
        "    timeout: 60s\n"
    )
    (workflows / "ratequeue_failover.yaml").write_text(text)
    with running_testbed(tmp_path / "tb", shards=2, replicas=2,
                         controller_args=["--workflows", str(workflows)]) as testbed:  # fmt: skip
        send(testbed, "s0-primary", signal.SIGKILL)
        scheduled = wait_for("a scheduled failover", lambda: [
            e for e in lazarus_events(testbed) if e["workflow_id"]])[0]  # fmt: skip
        workflow_id, coordinator = scheduled["workflow_id"], scheduled["coordinator"]
        workflow_url = f"{testbed.lazarus[0]}/v1/workflows/{workflow_id}"
        wait_for("the workflow to reach the gate", lambda: httpx.get(workflow_url).json()[
            "steps"]["hold_for_test"]["status"] == "running")  # fmt: skip
        send(testbed, coordinator, signal.SIGKILL)
        survivor = next(u for u, n in zip(testbed.lazarus, ["lazarus1", "lazarus2", "lazarus3"],
                                          strict=True) if n != coordinator)  # fmt: skip
        httpx.post(
            f"{survivor}/v1/workflows/{workflow_id}/approve",
            json={"step": "hold_for_test"},
            headers={"Authorization": f"Bearer {testbed.lazarus_token}"},
        )
        done = wait_for("another node to finish the workflow", lambda: (
            w := httpx.get(f"{survivor}/v1/workflows/{workflow_id}").json()
        )["status"] != "running" and w, timeout=40)  # fmt: skip

        assert done["status"] == "succeeded"
        assert done["nodes"][0] == coordinator and done["nodes"][-1] != coordinator
        assert done["steps"]["fence_old_primary"]["node"] == coordinator
        assert done["steps"]["publish_topology"]["node"] != coordinator
        assert len(primaries_answering(testbed, "s0")) == 1
