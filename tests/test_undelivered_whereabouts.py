"""Where a run's undelivered acknowledged writes are (`chaos.undelivered_whereabouts`), read
from real redis-server nodes (one shard: a primary and its replica): held by the replica of a
shard whose primary died, gone when no node of the shard holds it, not known when a node that
might hold it cannot be read."""

from __future__ import annotations

from collections.abc import Callable

from chaos.undelivered_whereabouts import find_undelivered
from ratequeue.client import RatequeueClient
from ratequeue.local_cluster import LocalCluster

NUMBER = "+14155550100"
StartCluster = Callable[..., LocalCluster]


def test_a_write_the_replica_holds_after_its_primary_died_is_held_there(
    start_cluster: StartCluster, make_client: Callable[..., RatequeueClient]
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    make_client(cluster).enqueue(NUMBER, "hello", "m-1")  # acknowledged: the replica has it
    topology = cluster.initial_topology()
    shard = cluster.shards[0]
    shard.primary.stop()

    found = find_undelivered({"m-1": (NUMBER, "s0")}, [topology])

    assert (found.held, found.gone, found.unknown) == (1, 0, 0)
    assert found.held_on == {shard.replicas[0].name: 1}
    assert list(found.unread) == [shard.primary.name]


def test_a_write_no_node_of_its_shard_holds_is_gone(
    start_cluster: StartCluster, make_client: Callable[..., RatequeueClient]
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    make_client(cluster).enqueue(NUMBER, "hello", "m-1")

    found = find_undelivered({"m-2": (NUMBER, "s0")}, [cluster.initial_topology()])

    assert (found.held, found.gone, found.unknown, found.unread) == (0, 1, 0, {})


def test_a_write_found_nowhere_while_a_node_is_unread_is_not_known(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    topology = cluster.initial_topology()
    cluster.shards[0].primary.stop()

    found = find_undelivered({"m-1": (NUMBER, "s0")}, [topology])

    assert (found.held, found.gone, found.unknown) == (0, 0, 1)
    assert found.describe().startswith("0 held, 0 gone, 1 not known; unread: s0-primary (")
