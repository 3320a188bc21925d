"""The Redis backend of the coordination store where its own process matters: what the contract
tests (tests/test_coordination_contract.py) cannot show without stopping or racing the real
`redis-server` under it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from common.redis_processes import RedisProcess
from lazarus_lite.coordination import redis_keys
from lazarus_lite.coordination.redis_backend import RedisCoordinationStore
from ratequeue.local_cluster import start_node
from ratequeue.topology import NodeRef, Shard, Topology, even_slot_ranges

pytestmark = pytest.mark.redis_control_store(
    "the Redis backend's own process under the store (etcd's is tests/test_coordination_etcd.py)"
)


@pytest.fixture
def control(tmp_path: Path) -> Iterator[RedisProcess]:
    node = start_node("control", "control", None, tmp_path)
    try:
        yield node
    finally:
        node.stop()


def a_topology(epoch: int, primary: str = "p") -> Topology:
    (slots,) = even_slot_ranges(1)
    node = NodeRef(name=primary, host="127.0.0.1", port=7000)
    return Topology(epoch=epoch, shards=[Shard(id="s0", slots=slots, epoch=epoch, primary=node)])


async def test_a_watch_outlives_its_store_going_away_and_delivers_the_next_epoch(
    control: RedisProcess,
) -> None:
    store = RedisCoordinationStore.from_url(control.url, timeout=1)
    try:
        await store.topology.compare_and_set(0, a_topology(1))
        watch = store.topology.watch(after_epoch=1, refresh_every=0.2)
        delivered = asyncio.ensure_future(anext(watch))
        await asyncio.sleep(0.3)
        control.stop()
        await asyncio.sleep(1.0)  # several rereads fail meanwhile
        assert not delivered.done(), delivered
        control.restart()
        await store.topology.compare_and_set(1, a_topology(2, primary="q"))
        topology = await asyncio.wait_for(delivered, timeout=10)
        assert topology.epoch == 2 and topology.shards[0].primary.name == "q"
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await store.aclose()


async def test_an_event_binding_that_expires_between_its_two_commands_is_taken_anew(
    control: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisCoordinationStore.from_url(control.url)
    try:
        binding = redis_keys.workflow_of_event("ev-1")
        await store.control.set(binding, "wf-old")
        read = store.control.get

        async def expiring_first(key: str) -> bytes | None:
            await store.control.delete(binding)  # its TTL ran out right after the SET NX
            monkeypatch.setattr(store.control, "get", read)
            return await read(key)

        monkeypatch.setattr(store.control, "get", expiring_first)
        assert await store.workflows.bind_event("ev-1", "wf-new") is None
        assert await store.control.get(binding) == b"wf-new"
    finally:
        await store.aclose()


async def test_an_escalation_appended_again_after_a_lost_reply_is_in_the_stream_once(
    control: RedisProcess,
) -> None:
    store = RedisCoordinationStore.from_url(control.url)
    try:
        await store.records.append_escalation("ev-1", "store away", "n1")
        await store.records.append_escalation("ev-1", "store away", "n1")  # the retry
        await store.records.append_escalation("ev-2", "store away", "n1")
        entries = await store.control.xrange(redis_keys.ESCALATIONS_STREAM)
        assert [fields[b"event_id"] for _, fields in entries] == [b"ev-1", b"ev-2"]
    finally:
        await store.aclose()


@pytest.mark.parametrize("skew", [290.0, -700.0], ids=["ahead", "behind"])
async def test_a_node_whose_clock_is_off_neither_trims_the_others_window_entries_nor_undercounts(
    control: RedisProcess, skew: float
) -> None:
    # Ten incidents and three failing services noted 350 s ago by the server's clock (well
    # within the 600 s windows), then an 11th incident and a 4th service noted by a node whose
    # clock is `skew` seconds off: ahead, it used to trim the others' entries as older than its
    # window (counting 1, the breaker closed); behind, its own entry fell out of everyone
    # else's window at once.
    true_node = RedisCoordinationStore.from_url(control.url)
    skewed_node = RedisCoordinationStore.from_url(control.url)
    try:
        seconds, micros = await true_node.control.time()
        long_ago = seconds + micros / 1e6 - 350
        await true_node.control.zadd(
            redis_keys.rate_window("ratequeue"), {f"inc-{i}": long_ago for i in range(10)}
        )
        await true_node.control.zadd(
            redis_keys.breaker_window("r1"), {s: long_ago for s in ("svc-a", "svc-b", "svc-c")}
        )
        skewed_clock = time.time() + skew
        with mock.patch("time.time", lambda: skewed_clock):
            counted = await skewed_node.windows.record(
                "service_incidents", "ratequeue", "inc-10", window=600
            )
            await skewed_node.windows.record("failing_services", "r1", "svc-d", window=600)
            seen_by_skewed = await skewed_node.windows.members("failing_services", "r1", 600)
        assert counted == 11
        assert seen_by_skewed == ["svc-a", "svc-b", "svc-c", "svc-d"]
        incidents = await true_node.windows.members("service_incidents", "ratequeue", 600)
        assert incidents == sorted(f"inc-{i}" for i in range(11))
        failing = await true_node.windows.members("failing_services", "r1", 600)
        assert failing == ["svc-a", "svc-b", "svc-c", "svc-d"]
    finally:
        await true_node.aclose()
        await skewed_node.aclose()
