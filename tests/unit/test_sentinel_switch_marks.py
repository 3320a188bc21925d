"""Where a run under Sentinel places the promotion and the API's switch on its timeline: when the
sentinels announced the promotion (`+promoted-slave`, `+switch-master`, in the shapes Sentinel's
documentation gives) and when the API says it took the map, not when the run's poll saw either;
when it polled, only without such news. Pure logic: announcements recorded by hand.

Not for: hearing real sentinels (tests/test_scenarios_on_both_managers.py runs a partition
under real ones and checks that its promotion was placed from their announcement).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from chaos.journal import Journal
from chaos.recovery_watch import mark_sentinel_switch
from chaos.sentinel_switch_marks import (
    PROMOTED,
    Announcement,
    SentinelAnnouncements,
    parse_announcement,
)
from ratequeue.sentinel_topology import SWITCH_MASTER
from ratequeue.topology import NodeRef, Shard, Topology

OLD = NodeRef(name="s0-primary", host="127.0.0.1", port=7000, peer_host="127.0.0.2")
NEW = NodeRef(name="s0-replica1", host="127.0.0.1", port=7001, peer_host="127.0.0.2")


def map_with(primary: NodeRef, other: NodeRef, epoch: int) -> Topology:
    shard = Shard(id="s0", slots=(0, 16383), epoch=1, primary=primary, replicas=[other])
    return Topology(epoch=epoch, shards=[shard])


BEFORE, AFTER = map_with(OLD, NEW, 1), map_with(NEW, OLD, 3)


def watching(fault_at: float) -> Journal:
    run = Journal(run_id="r", experiment="partition", deployment="d", environment="dev",
                  failover="sentinel", started_at=fault_at - 3)  # fmt: skip
    run.mark("fault_injected", fault_at, fault_at)
    return run


def heard(at: float, event: str = PROMOTED, node: NodeRef = NEW) -> SentinelAnnouncements:
    announcements = SentinelAnnouncements([])
    announcements.record(Announcement(at=at, sentinel="127.0.0.1:26379", event=event,
                                      master="s0", host=node.peer_host or node.host,
                                      port=node.port))  # fmt: skip
    return announcements


def entry(run: Journal, name: str) -> tuple[float, str]:
    found = next(e for e in run.timeline if e.name == name)
    return found.at, found.detail


def polled_later(detail: str) -> float:
    """How much later the run's poll saw the mark, as its detail records it."""
    found = re.search(r"; the run's poll saw it ([0-9.]+) s later\)$", detail)
    assert found is not None, detail
    return float(found.group(1))


def promotion_announced(fault_at: float, after_fault: float) -> tuple[float, str]:
    """The promotion mark of a run that heard it announced `after_fault` s after the fault."""
    run = watching(fault_at)
    mark_sentinel_switch(run, BEFORE, AFTER, {"s0"}, fault_at,
                         announcements=heard(fault_at + after_fault))  # fmt: skip
    return entry(run, "promotion")


def test_the_promotion_is_placed_when_the_sentinels_announced_it_not_when_the_run_saw_it() -> None:
    fault_at = time.time() - 5
    at, detail = promotion_announced(fault_at, 1.5)
    assert at == fault_at + 1.5
    assert detail.startswith("s0: s0-replica1 (+promoted-slave from sentinel 127.0.0.1:26379; ")


def test_the_promotions_detail_records_how_much_later_the_poll_saw_it() -> None:
    at, detail = promotion_announced(time.time() - 5, 1.5)
    assert 3.5 - 0.01 <= polled_later(detail) <= time.time() - at + 0.001


@pytest.mark.parametrize(
    "news",
    [
        pytest.param(lambda f: heard(f - 1), id="heard-before-the-fault"),
        pytest.param(lambda f: heard(f + 1, node=OLD), id="naming-another-node"),
        pytest.param(lambda f: SentinelAnnouncements([]), id="none-heard"),
    ],
)
def test_without_news_of_the_promoted_node_since_the_fault_it_is_placed_when_seen(
    news: Callable[[float], SentinelAnnouncements],
) -> None:
    fault_at = time.time() - 5
    run = watching(fault_at)
    before_seen = time.time()
    mark_sentinel_switch(run, BEFORE, AFTER, {"s0"}, fault_at,
                         announcements=news(fault_at))  # fmt: skip
    at, detail = entry(run, "promotion")
    assert before_seen <= at <= time.time()
    assert detail == "s0: s0-replica1 (the run's poll)"


def promoted_at(fault_at: float, after_fault: float) -> Journal:
    run = watching(fault_at)
    run.mark("promotion", fault_at + after_fault, fault_at, "s0: s0-replica1")
    return run


def test_the_api_switch_is_placed_when_the_api_took_the_map_it_answered_with() -> None:
    fault_at = time.time() - 5
    run = promoted_at(fault_at, 2.0)
    mark_sentinel_switch(run, BEFORE, AFTER, {"s0"}, fault_at, "topology_published",
                         taken_at=fault_at + 2.25)  # fmt: skip
    at, detail = entry(run, "topology_published")
    assert at == fault_at + 2.25
    assert detail.startswith("s0: s0-replica1 (the API took epoch 3; ")
    assert 2.75 - 0.01 <= polled_later(detail) <= time.time() - at + 0.001


@pytest.mark.parametrize(
    ("taken_after_fault", "why"),
    [
        pytest.param(-1.0, "1.000 s before the fault", id="before-the-fault"),
        pytest.param(1.5, "0.500 s before the promotion", id="before-the-promotion"),
        pytest.param(60.0, " s after the run saw it", id="after-the-run-saw-it"),
    ],
)
def test_an_api_clock_off_the_runners_places_the_api_switch_when_the_poll_saw_it(
    taken_after_fault: float, why: str
) -> None:
    # A clock behind would put the switch where the cut-off primary still acknowledged, and
    # first_write_after_switch would count those acknowledgements as recovery.
    fault_at = time.time() - 5
    run = promoted_at(fault_at, 2.0)
    before_seen = time.time()
    mark_sentinel_switch(run, BEFORE, AFTER, {"s0"}, fault_at, "topology_published",
                         taken_at=fault_at + taken_after_fault)  # fmt: skip
    at, detail = entry(run, "topology_published")
    assert before_seen <= at <= time.time()
    assert detail.startswith("s0: s0-replica1 (the run's poll: the API's Ratequeue-Epoch-Taken-At")
    assert detail.endswith(f"{why}, not used)")


def test_a_map_whose_watched_shard_has_not_switched_places_no_mark() -> None:
    fault_at = time.time() - 5
    run = watching(fault_at)
    mark_sentinel_switch(run, BEFORE, BEFORE, {"s0"}, fault_at, "topology_published",
                         taken_at=fault_at + 2.25)  # fmt: skip
    assert run.moment("topology_published") is None


def test_a_switch_master_message_in_the_documented_shape_names_the_new_primary() -> None:
    # "+switch-master <master name> <oldip> <oldport> <newip> <newport>" (Sentinel's docs)
    payload = "s0 127.0.0.2 7000 127.0.0.2 7001"
    found = parse_announcement(SWITCH_MASTER, payload, "127.0.0.1:1", 9.0)
    assert found == Announcement(at=9.0, sentinel="127.0.0.1:1", event=SWITCH_MASTER, master="s0",
                                 host="127.0.0.2", port=7001)  # fmt: skip
    assert found.names(NEW) and not found.names(OLD)


def test_a_promoted_slave_message_names_the_promoted_replica_and_its_master() -> None:
    # Instance details: "<instance-type> <name> <ip> <port> @ <master-name> <master-ip>
    # <master-port>" (Sentinel's docs; the master part for a non-master instance)
    payload = "slave 127.0.0.2:7001 127.0.0.2 7001 @ s0 127.0.0.2 7000"
    found = parse_announcement(PROMOTED, payload, "127.0.0.1:1", 9.0)
    assert found is not None and (found.master, found.host, found.port) == ("s0", "127.0.0.2", 7001)


@pytest.mark.parametrize(
    ("channel", "payload"),
    [
        (SWITCH_MASTER, "s0 127.0.0.2 7000"),
        (SWITCH_MASTER, "s0 127.0.0.2 7000 127.0.0.2 port"),
        (PROMOTED, "master s0 127.0.0.2 7000"),
        (PROMOTED, "slave 127.0.0.2:7001 127.0.0.2 x @ s0 127.0.0.2 7000"),
        ("+sdown", "master s0 127.0.0.2 7000"),
    ],
)
def test_a_message_of_another_shape_is_not_taken_for_a_promotion(
    channel: str, payload: str
) -> None:
    assert parse_announcement(channel, payload, "127.0.0.1:1", 9.0) is None
