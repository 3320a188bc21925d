"""The load generator's consumers against the real API and real redis-server shards while the
API holds every enqueue (each waits its full `WAIT` for replicas that are stopped, as enqueues
wait while staging's API restarts or a shard is failed over): the producers' retrying messages
then fill every connection they may use, and the consumers must go on receiving what was
acknowledged before, through connections of their own (chaos.load, `LoadRun.run`).

Not for: the queue's own behaviour with its replicas away (tests/test_durability.py).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import pytest

from chaos.ledger import Ledger
from chaos.load import LoadProfile, LoadRun
from ratequeue.local_cluster import LocalCluster
from tests.conftest import ServedApi
from tests.load_turns import run_with_a_turn

# Long codes (1 message a second each): what is acknowledged before the hold is due over the
# seconds after it. 200 retrying messages for one producer: far more than its connections.
PROFILE = LoadProfile(numbers=20, toll_free_share=0, short_code_share=0, enqueue_per_second=200,
                      producers=1, consumers=1, in_flight=200, lease_seconds=5,
                      give_up_after=60)  # fmt: skip
# The hold starts once this many are acknowledged (5 a number: 5 s of deliveries), and lasts.
ACKNOWLEDGED_BEFORE_THE_HOLD = 100
HOLD_SECONDS = 6.0


@pytest.fixture
def stop_replicas(cluster: LocalCluster) -> Iterator[Callable[[], None]]:
    """Stops (SIGSTOP) every replica when called; continued at teardown, also on failure."""
    replicas = [replica for shard in cluster.shards for replica in shard.replicas]
    stopped: list[bool] = []

    def stop() -> None:
        for replica in replicas:
            replica.signal(signal.SIGSTOP)
        stopped.append(True)

    yield stop
    if stopped:
        for replica in replicas:
            replica.signal(signal.SIGCONT)


def test_consumers_receive_while_every_enqueue_is_held_by_the_api(
    cluster: LocalCluster,
    serve_api: Callable[..., ServedApi],
    stop_replicas: Callable[[], None],
) -> None:
    # Each enqueue then waits 20 s for its WAIT: longer than the load's 10 s request timeout.
    api = serve_api(cluster, wait_timeout_ms=20_000).url
    ledger = Ledger()
    load = LoadRun(api, PROFILE, ledger)
    held_at = run_with_a_turn(load, after_acknowledged=ACKNOWLEDGED_BEFORE_THE_HOLD,
                              turn=stop_replicas, stop_after=HOLD_SECONDS, drain=0)  # fmt: skip
    # From a second into the hold (a dequeue sent before it may still be answered). The stall
    # this guards against delivered none; a quiet machine delivered 26 in the window, a
    # CI run with both cores busy delivered 18, so the bar is "some", not a rate.
    received_while_held = [d for d in ledger.deliveries
                           if held_at + 1 < d.at < held_at + HOLD_SECONDS]  # fmt: skip
    assert len(received_while_held) >= 5, (
        f"{len(received_while_held)} received while the enqueues were held, of "
        f"{len(ledger.acknowledged)} acknowledged; dequeues failed: {ledger.dequeue_failures}"
    )
