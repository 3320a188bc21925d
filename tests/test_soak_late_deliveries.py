"""Real redis-server shards behind the real API: a run whose drain ends before its messages are
due leaves acknowledged ids in the queues; the next run's consumers deliver them as foreign ids,
and the soak's carry counts them late, not lost (staging soak run B, cycle 6: 46 of 92 not
delivered within the drain, delivered by cycle 7)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from chaos.ledger import Ledger
from chaos.load import LoadProfile, LoadRun
from chaos.soak_deliveries import Undelivered, drain_leftovers
from ratequeue.local_cluster import LocalCluster
from tests.conftest import ServedApi

# Two long codes (1 message a second each), 10 messages a second: most are not due yet when a
# drain of 0 s ends.
PROFILE = LoadProfile(numbers=2, toll_free_share=0, short_code_share=0, enqueue_per_second=10,
                      producers=2, consumers=1, lease_seconds=1, give_up_after=5)  # fmt: skip


def load_run(api: str, *, duration: float, drain: float) -> Ledger:
    return asyncio.run(LoadRun(api, PROFILE, Ledger()).run(duration, drain_timeout=drain))


def test_ids_left_by_a_short_drain_are_delivered_by_the_next_run_as_late(
    cluster: LocalCluster, serve_api: Callable[..., ServedApi]
) -> None:
    api = serve_api(cluster).url
    first = load_run(api, duration=1.5, drain=0)
    assert first.lost(), "the first run's drain ended with everything delivered"
    undelivered = Undelivered()
    undelivered.left_by(1, first.lost())

    second = load_run(api, duration=0.5, drain=30)
    late = undelivered.delivered(second.foreign_ids())

    assert not second.lost()
    assert late == {1: len(first.lost())} and not undelivered.waiting


def test_the_final_drain_delivers_what_the_last_run_left(
    cluster: LocalCluster, serve_api: Callable[..., ServedApi]
) -> None:
    api = serve_api(cluster).url
    last = load_run(api, duration=1.5, drain=0)
    undelivered = Undelivered()
    undelivered.left_by(7, last.lost())

    assert drain_leftovers(api, undelivered, timeout=30) == {7: len(last.lost())}
    assert not undelivered.waiting
