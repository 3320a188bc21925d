"""Where a run's undelivered acknowledged writes are (`chaos.undelivered_whereabouts`), read
from real redis-server nodes (one shard: a primary and its replica): held by the replica of a
shard whose primary died, gone when no node of the shard holds it, not known when a node that
might hold it cannot be read, also when that node is paused or gone, at once (no retries)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import pytest

from chaos.undelivered_whereabouts import Whereabouts, find_undelivered
from ratequeue.client import RatequeueClient
from ratequeue.local_cluster import LocalCluster

NUMBER = "+14155550100"
StartCluster = Callable[..., LocalCluster]
# How long a lookup with one unreadable node may take here: its 0.5 s timeout and a wide margin
# for a loaded machine (redis-py's default retries took 4.6 s on a dead port, 23.5 s on a paused
# node).
ANSWER_GUARD_SECONDS = 3.0


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


def answered_within(seconds: float, call: Callable[[], Whereabouts]) -> Whereabouts:
    """`call`'s answer, failing the test if none came within `seconds`."""
    answers: list[Whereabouts] = []
    thread = threading.Thread(target=lambda: answers.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert answers, f"no answer within {seconds} s"
    return answers[0]


@pytest.mark.parametrize("fault", ["paused", "dead"])
def test_a_write_found_nowhere_while_a_paused_or_dead_node_is_unread_is_not_known_at_once(
    start_cluster: StartCluster, fault: str
) -> None:
    cluster = start_cluster(shards=1, replicas=1)
    topology = cluster.initial_topology()
    primary = cluster.shards[0].primary
    if fault == "paused":
        primary.signal(signal.SIGSTOP)  # its socket accepts; no answer comes
    else:
        primary.stop()  # its port refuses
    try:
        found = answered_within(
            ANSWER_GUARD_SECONDS, lambda: find_undelivered({"m-1": (NUMBER, "s0")}, [topology])
        )
    finally:
        if fault == "paused":
            primary.signal(signal.SIGCONT)

    assert (found.held, found.gone, found.unknown) == (0, 0, 1)
    assert found.describe().startswith(f"0 held, 0 gone, 1 not known; unread: {primary.name} (")
