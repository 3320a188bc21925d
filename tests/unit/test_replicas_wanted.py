"""How many replicas a failover's provision_replacement step brings a shard back to: the
shard's recorded target, not the count it happened to have when its old primary was fenced."""

from __future__ import annotations

from lazarus_lite.steps.ratequeue_promotion import replicas_wanted
from ratequeue.topology import NodeRef, Shard


def _shard(replica_target: int | None, replicas: int = 1) -> Shard:
    return Shard(
        id="s0",
        slots=(0, 16383),
        epoch=3,
        primary=NodeRef(name="s0-replica1", host="127.0.0.1", port=7001),
        replicas=[
            NodeRef(name=f"s0-r{i}", host="127.0.0.1", port=7100 + i) for i in range(replicas)
        ],
        replica_target=replica_target,
    )


def test_a_shard_already_a_replica_short_is_brought_back_to_its_target() -> None:
    # Fenced with one replica left (an earlier replacement never came): the target still says 2.
    assert replicas_wanted(None, _shard(replica_target=2), replicas_at_fence=1) == 2


def test_a_shard_with_no_recorded_target_keeps_the_count_it_had_at_the_fence() -> None:
    assert replicas_wanted(None, _shard(replica_target=None), replicas_at_fence=2) == 2


def test_the_workflows_own_target_wins_over_the_shards() -> None:
    assert replicas_wanted(3, _shard(replica_target=2), replicas_at_fence=2) == 3
