"""The load generator's account of its failed dequeues, against the real API and real
redis-server shards: a dequeue the API refuses is counted by its status and error code, one
without an answer by its transport error, each with the first and the last time it happened
(what tells a queue that refused its consumers from one they never reached).

Not for: what the load delivers (tests/test_soak_late_deliveries.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from chaos.ledger import Ledger
from chaos.load import LoadProfile, LoadRun
from ratequeue.local_cluster import LocalCluster
from tests.conftest import ServedApi
from tests.load_turns import run_with_a_turn

PROFILE = LoadProfile(numbers=4, toll_free_share=0, short_code_share=1, enqueue_per_second=20,
                      producers=1, consumers=1)  # fmt: skip


def test_a_dequeue_the_api_refuses_is_counted_by_its_status_and_error_code(
    cluster: LocalCluster, serve_api: Callable[..., ServedApi]
) -> None:
    api = serve_api(cluster, max_dequeue=10).url
    ledger = Ledger()
    asking_too_much = PROFILE.model_copy(update={"dequeue_batch": 11})
    asyncio.run(LoadRun(api, asking_too_much, ledger).run(duration=0.5, drain_timeout=0.5))

    refused = ledger.dequeue_failures["400 invalid_request"]
    assert refused.count == ledger.failed_dequeues > 1
    assert refused.first_at < refused.last_at


def test_a_dequeue_without_an_answer_is_counted_by_its_transport_error(
    cluster: LocalCluster, serve_api: Callable[..., ServedApi]
) -> None:
    served = serve_api(cluster)
    ledger = Ledger()
    load = LoadRun(served.url, PROFILE, ledger)

    # Once the load has read its topology and had an enqueue answered, the API stops: from then
    # on no enqueue or dequeue is answered.
    run_with_a_turn(load, after_acknowledged=1, drain=0.5, stop_after=1.5,
                    turn=lambda: setattr(served.server, "should_exit", True))  # fmt: skip
    assert ledger.dequeue_failures.get("ConnectError") is not None, ledger.dequeue_failures
