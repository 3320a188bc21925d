"""What the etcd backend of the coordination store promises beyond the shared contract
(`test_coordination_contract.py`), on a real three-member cluster: a lock and the topology's
watch outlive the leader's death, and a write whose answer was lost is resolved by reading,
never applied twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis

from common.errors import EtcdOutcomeUnknown, EtcdUnreachable
from common.etcd_client import (
    Compare,
    EtcdClient,
    EtcdClientSettings,
    Get,
    KeyValue,
    Lease,
    Operation,
    TxnResult,
)
from common.etcd_processes import EtcdCluster, EtcdMember
from common.redis_processes import RedisProcess
from lazarus_lite.coordination import etcd_keys
from lazarus_lite.coordination.etcd_backend import EtcdCoordinationStore
from lazarus_lite.errors import LockBusy, LockLost
from ratequeue.errors import EpochConflict
from ratequeue.local_cluster import start_node
from tests.test_coordination_contract import a_topology, a_workflow

T = TypeVar("T")


@pytest.fixture(scope="module")
def records_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    node = start_node("records", "records", None, tmp_path_factory.mktemp("records"))
    yield node
    node.stop()


class AnswerLostClient(EtcdClient):
    """A real client whose next `lose` transactions reach etcd and are applied, and whose
    answers are then lost (what a leader dying after the commit looks like to the caller);
    whose next `delay` transactions lose their answer and commit only after the read that
    follows (a proposal still in flight when the caller reads to learn its fate); and whose
    next `expire` leases are gone by the time they are used (a slow write of a short lease)."""

    lose = 0
    expire = 0
    delay = 0
    granted: list[int]
    _delayed: tuple[Sequence[Compare], Sequence[Operation], Sequence[Operation]] | None = None

    def __init__(self, settings: EtcdClientSettings) -> None:
        super().__init__(settings)
        self.granted = []

    async def grant_lease(self, ttl: int) -> Lease:
        lease = await super().grant_lease(ttl)
        self.granted.append(lease.id)
        if self.expire > 0:
            self.expire -= 1
            await self.revoke_lease(lease.id)
        return lease

    async def get(self, key: str) -> KeyValue | None:
        """The key now; then a transaction left in flight is applied (the read was served
        before its commit)."""
        found = await super().get(key)
        if self._delayed is not None:
            compare, success, failure = self._delayed
            self._delayed = None
            await super().txn(compare, success, failure, check=False)
        return found

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Operation] = (),
        failure: Sequence[Operation] = (),
        *,
        check: bool = True,
    ) -> TxnResult:
        if all(isinstance(op, Get) for op in (*success, *failure)):
            # A read-only transaction is a read: its answer is never "lost" to the caller.
            return await super().txn(compare, success, failure, check=check)
        if self.delay > 0:
            self.delay -= 1
            self._delayed = (compare, success, failure)
            raise EtcdOutcomeUnknown("txn sent, still in flight (test)")
        result = await super().txn(compare, success, failure, check=check)
        if self.lose > 0:
            self.lose -= 1
            raise EtcdOutcomeUnknown("txn sent, the answer was lost (test)")
        return result


def store_on(
    cluster: EtcdCluster, records: RedisProcess, first: EtcdMember | None = None
) -> EtcdCoordinationStore:
    """A store whose calls go to `first` until it fails them."""
    members = sorted(cluster.members, key=lambda m: m is not first)
    settings = EtcdClientSettings(endpoints=[m.client_url for m in members], call_timeout=3)
    client = AnswerLostClient(settings)
    connection = aioredis.Redis(host=records.host, port=records.port)
    return EtcdCoordinationStore(client, connection, owns_connections=True)


@pytest.fixture
async def store(
    etcd: EtcdCluster, records_redis: RedisProcess
) -> AsyncIterator[EtcdCoordinationStore]:
    opened = store_on(etcd, records_redis)
    await opened.client.delete("/", prefix=True)
    yield opened
    await opened.aclose()


async def while_electing(call: Callable[[], Awaitable[T]], within: float = 15) -> T:
    """`call`, again while no leader is there to answer it."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await call()
        except EtcdUnreachable:
            if time.monotonic() > deadline:
                raise


async def test_a_lock_keeps_its_token_and_exclusivity_through_the_leaders_death(
    etcd: EtcdCluster, records_redis: RedisProcess
) -> None:
    leader = etcd.wait_for_leader()
    store = store_on(etcd, records_redis, first=leader)
    try:
        held = await store.locks.acquire("shard", "rq/s0", "wf-a")
        leader.kill()
        assert await while_electing(lambda: store.locks.renew(held))
        assert await store.locks.holder("shard", "rq/s0") == held.value
        with pytest.raises(LockBusy):
            await store.locks.acquire("shard", "rq/s0", "wf-b")
        again = await store.locks.acquire("shard", "rq/s0", "wf-a")
    finally:
        await store.aclose()
    assert again.token == held.token


async def test_a_lock_whose_answer_was_lost_is_taken_once(store: EtcdCoordinationStore) -> None:
    store.client.lose = 1  # type: ignore[attr-defined]
    held = await store.locks.acquire("shard", "rq/s0", "wf-a")
    found = await store.client.get(etcd_keys.lock("shard", "rq/s0"))
    assert found is not None
    assert (found.version, found.create_revision) == (1, held.token)
    with pytest.raises(LockBusy):
        await store.locks.acquire("shard", "rq/s0", "wf-b")


async def test_a_lock_whose_lease_expired_before_its_write_is_taken_under_a_fresh_one(
    store: EtcdCoordinationStore,
) -> None:
    store.client.expire = 1  # type: ignore[attr-defined]
    held = await store.locks.acquire("shard", "rq/s0", "wf-a")
    found = await store.client.get(held.key)
    assert found is not None and await store.client.lease_ttl(found.lease) > 0


async def test_a_workflow_save_whose_answer_was_lost_is_saved_once(
    store: EtcdCoordinationStore,
) -> None:
    assert await store.workflows.claim("wf-1", "n1")
    store.client.lose = 1  # type: ignore[attr-defined]
    await store.workflows.save(a_workflow("wf-1"), {"kind": "started"}, owner="n1")
    assert [e["kind"] for e in await store.workflows.history("wf-1")] == ["started"]


async def test_a_topology_change_whose_answer_was_lost_is_stored_once(
    store: EtcdCoordinationStore,
) -> None:
    await store.topology.compare_and_set(0, a_topology(1))
    store.client.lose = 1  # type: ignore[attr-defined]
    await store.topology.compare_and_set(1, a_topology(2, primary="q"))
    found = await store.client.get("/ratequeue/topology")
    assert found is not None and found.version == 2


async def test_a_claim_whose_write_committed_after_its_read_back_is_reported_as_ours(
    store: EtcdCoordinationStore,
) -> None:
    store.client.delay = 1  # type: ignore[attr-defined]
    claimed = await store.incidents.claim("PrimaryDown", "rq/s0", "ev-1", ttl=30)
    assert claimed and await store.incidents.holder("PrimaryDown", "rq/s0") == "ev-1"


async def test_a_claim_that_lost_to_another_leaves_no_lease_behind(
    store: EtcdCoordinationStore,
) -> None:
    assert await store.incidents.claim("PrimaryDown", "rq/s0", "ev-1", ttl=30)
    assert not await store.incidents.claim("PrimaryDown", "rq/s0", "ev-2", ttl=30)
    unused = store.client.granted[-1]  # type: ignore[attr-defined]
    assert await store.client.lease_ttl(unused) == -1


async def test_renewing_a_lock_restarts_its_own_lease_and_grants_none(
    store: EtcdCoordinationStore,
) -> None:
    held = await store.locks.acquire("shard", "rq/s0", "wf-a")
    before = await store.client.get(held.key)
    assert before is not None
    full = await store.client.lease_ttl(before.lease)
    deadline = time.monotonic() + 10
    while await store.client.lease_ttl(before.lease) >= full:  # a second of it gone
        assert time.monotonic() < deadline, "the lock's lease did not count down"
        await asyncio.sleep(0.1)
    granted = list(store.client.granted)  # type: ignore[attr-defined]
    assert await store.locks.renew(held)
    after = await store.client.get(held.key)
    assert after is not None
    assert (after.lease, after.mod_revision) == (before.lease, before.mod_revision)
    assert await store.client.lease_ttl(before.lease) >= full - 1
    assert store.client.granted == granted  # type: ignore[attr-defined]


async def test_a_lock_deleted_while_its_lease_lives_is_not_renewed(
    store: EtcdCoordinationStore,
) -> None:
    held = await store.locks.acquire("shard", "rq/s0", "wf-a")
    await store.client.delete(held.key)  # the lease is still alive, without the key
    assert not await store.locks.renew(held)
    with pytest.raises(LockLost):
        await store.locks.assert_held(held)


async def test_a_lock_is_renewed_by_a_store_that_did_not_take_it(
    store: EtcdCoordinationStore, etcd: EtcdCluster, records_redis: RedisProcess
) -> None:
    """A workflow resumed on another node asserts the lock its record names."""
    held = await store.locks.acquire("shard", "rq/s0", "wf-a")
    other = store_on(etcd, records_redis)
    try:
        assert await other.locks.renew(held)
        await store.client.delete(held.key)
        assert not await other.locks.renew(held)
    finally:
        await other.aclose()


@pytest.mark.parametrize("taken_by", ["wf-b", "wf-a"], ids=["another", "the-same-holder"])
async def test_a_lock_taken_again_after_its_deletion_renews_only_by_the_new_token(
    store: EtcdCoordinationStore, taken_by: str
) -> None:
    """The same holder taking it again gets a new token (create_revision): the old one, kept
    by a workflow that lost the lock meanwhile, no longer renews it."""
    held = await store.locks.acquire("shard", "rq/s0", "wf-a")
    await store.client.delete(held.key)
    taken = await store.locks.acquire("shard", "rq/s0", taken_by)
    assert not await store.locks.renew(held)
    assert await store.locks.renew(taken)
    assert await store.locks.holder("shard", "rq/s0") == taken.value


async def test_an_owner_lease_whose_key_was_deleted_is_not_renewed(
    store: EtcdCoordinationStore,
) -> None:
    assert await store.workflows.claim("wf-1", "n1")
    assert await store.workflows.renew("wf-1", "n1")
    await store.client.delete(etcd_keys.workflow_owner("wf-1"))
    assert not await store.workflows.renew("wf-1", "n1")


async def test_a_lock_that_expired_and_was_taken_again_is_not_renewed_by_the_old_token(
    store: EtcdCoordinationStore,
) -> None:
    store.locks.ttl_ms = 1000  # etcd's shortest lease: whole seconds
    old = await store.locks.acquire("shard", "rq/s0", "wf-a")
    deadline = time.monotonic() + 15
    while await store.client.get(old.key) is not None:
        assert time.monotonic() < deadline, "the lock's lease did not expire"
        await asyncio.sleep(0.1)
    new = await store.locks.acquire("shard", "rq/s0", "wf-a")
    assert not await store.locks.renew(old)
    assert await store.locks.renew(new)


async def test_an_owner_lease_whose_lease_was_revoked_is_not_renewed_once_another_claims(
    store: EtcdCoordinationStore,
) -> None:
    assert await store.workflows.claim("wf-1", "n1")
    owned = await store.client.get(etcd_keys.workflow_owner("wf-1"))
    assert owned is not None and owned.lease
    await store.client.revoke_lease(owned.lease)
    assert await store.workflows.claim("wf-1", "n2")
    assert not await store.workflows.renew("wf-1", "n1")
    assert await store.workflows.owner("wf-1") == "n2"


async def test_event_bindings_share_one_lease_that_outlives_their_30_days(
    store: EtcdCoordinationStore,
) -> None:
    for index in range(5):
        assert await store.workflows.bind_event(f"ev-{index}", f"wf-{index}") is None
    assert await store.workflows.rebind_event("ev-0", "wf-new", replacing="wf-0")
    assert len(store.client.granted) == 1  # type: ignore[attr-defined]
    bound = [await store.client.get(etcd_keys.workflow_of_event(f"ev-{i}")) for i in range(5)]
    assert {kv.lease for kv in bound if kv is not None} == {store.client.granted[0]}  # type: ignore[attr-defined]
    assert await store.client.lease_ttl(store.client.granted[0]) >= 30 * 24 * 3600  # type: ignore[attr-defined]


async def test_window_notes_of_one_length_share_one_lease_that_outlives_the_window(
    store: EtcdCoordinationStore,
) -> None:
    await store.windows.record("failing_services", "eu", "ratequeue", window=60)
    await store.windows.record("service_incidents", "ratequeue", "s0", window=60)
    assert await store.windows.record("failing_services", "eu", "api", window=60) == 2
    granted = store.client.granted  # type: ignore[attr-defined]
    assert len(granted) == 1
    noted = await store.client.get_prefix(etcd_keys.windows("failing_services"))
    assert {kv.lease for kv in noted.kvs} == {granted[0]}
    assert await store.client.lease_ttl(granted[0]) >= 60


async def test_a_window_note_whose_shared_lease_is_gone_is_made_under_a_new_one(
    store: EtcdCoordinationStore,
) -> None:
    await store.windows.record("failing_services", "eu", "ratequeue", window=60)
    await store.client.revoke_lease(store.client.granted[0])  # type: ignore[attr-defined]
    assert await store.windows.record("failing_services", "eu", "api", window=60) == 1
    assert len(store.client.granted) == 2  # type: ignore[attr-defined]


async def test_an_event_binding_whose_answer_was_lost_is_ours_by_its_workflow_id(
    store: EtcdCoordinationStore,
) -> None:
    store.client.lose = 1  # type: ignore[attr-defined]
    assert await store.workflows.bind_event("ev-1", "wf-1") is None
    assert await store.workflows.bind_event("ev-1", "wf-2") == "wf-1"


@pytest.mark.parametrize("lost", ["lose", "delay"])  # applied, or applied after its read back
async def test_an_event_rebinding_whose_answer_was_lost_is_ours_by_its_workflow_id(
    store: EtcdCoordinationStore, lost: str
) -> None:
    assert await store.workflows.bind_event("ev-1", "wf-1") is None
    setattr(store.client, lost, 1)
    assert await store.workflows.rebind_event("ev-1", "wf-2", replacing="wf-1")
    assert await store.workflows.bind_event("ev-1", "wf-probe") == "wf-2"


async def test_an_event_binding_whose_shared_lease_is_gone_is_made_under_a_new_one(
    store: EtcdCoordinationStore,
) -> None:
    assert await store.workflows.bind_event("ev-1", "wf-1") is None
    await store.client.revoke_lease(store.client.granted[0])  # type: ignore[attr-defined]
    assert await store.workflows.bind_event("ev-2", "wf-2") is None
    found = await store.client.get(etcd_keys.workflow_of_event("ev-2"))
    assert found is not None and found.lease == store.client.granted[-1]  # type: ignore[attr-defined]


async def test_a_workflow_save_that_committed_after_its_read_back_is_saved_once(
    store: EtcdCoordinationStore,
) -> None:
    assert await store.workflows.claim("wf-1", "n1")
    store.client.delay = 1  # type: ignore[attr-defined]
    await store.workflows.save(a_workflow("wf-1"), {"kind": "started"}, owner="n1")
    assert [e["kind"] for e in await store.workflows.history("wf-1")] == ["started"]


async def test_a_topology_change_that_committed_after_its_read_back_is_a_success(
    store: EtcdCoordinationStore,
) -> None:
    await store.topology.compare_and_set(0, a_topology(1))
    store.client.delay = 1  # type: ignore[attr-defined]
    await store.topology.compare_and_set(1, a_topology(2, primary="q"))
    found = await store.topology.load()
    assert found is not None and found.epoch == 2


def count_calls(store: EtcdCoordinationStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The path and kind of every call `store`'s client makes from now on."""
    paths: list[str] = []
    call = store.client._call

    async def counted(path: str, body: dict, *, write: bool) -> dict:
        paths.append(f"{path} write={write}")
        return await call(path, body, write=write)

    monkeypatch.setattr(store.client, "_call", counted)
    return paths


async def test_a_new_records_first_save_is_one_transaction_without_a_read(
    store: EtcdCoordinationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await store.workflows.claim("wf-new", "n1")
    paths = count_calls(store, monkeypatch)
    await store.workflows.save(a_workflow("wf-new"), {"kind": "started"}, owner="n1", new=True)

    assert paths == ["/v3/kv/txn write=True"]
    assert [e["kind"] for e in await store.workflows.history("wf-new")] == ["started"]


async def test_a_save_wrongly_told_its_record_is_new_reads_it_and_saves_once(
    etcd: EtcdCluster, records_redis: RedisProcess, store: EtcdCoordinationStore
) -> None:
    assert await store.workflows.claim("wf-1", "n1")
    await store.workflows.save(a_workflow("wf-1"), {"kind": "started"}, owner="n1")
    other = store_on(etcd, records_redis)  # knows no version it saved
    try:
        await other.workflows.save(a_workflow("wf-1"), {"kind": "again"}, owner="n1", new=True)
    finally:
        await other.aclose()
    assert [e["kind"] for e in await store.workflows.history("wf-1")] == ["started", "again"]


async def test_a_steps_kill_switches_and_topology_are_one_call_to_etcd(
    store: EtcdCoordinationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.flags.engage_kill_switch("failover", {"by": "ops"})
    paths = count_calls(store, monkeypatch)
    reads = await store.step_reads()

    assert reads.kill_switches == {"failover": {"by": "ops"}}
    assert paths == ["/v3/kv/txn write=False"]  # a read: sent again elsewhere if unanswered


async def test_a_topology_change_after_the_steps_reads_is_one_transaction(
    store: EtcdCoordinationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.topology.compare_and_set(0, a_topology(1))
    await store.step_reads()
    paths = count_calls(store, monkeypatch)
    await store.topology.compare_and_set(1, a_topology(2, primary="q"))
    assert paths == ["/v3/kv/txn write=True"]
    found = await store.topology.load()
    assert found is not None and found.epoch == 2


async def test_a_topology_change_on_a_stale_read_is_refused_with_the_epoch_stored(
    etcd: EtcdCluster, records_redis: RedisProcess, store: EtcdCoordinationStore
) -> None:
    await store.topology.compare_and_set(0, a_topology(1))
    await store.topology.load()
    other = store_on(etcd, records_redis)
    try:
        await other.topology.compare_and_set(1, a_topology(2, primary="q"))
    finally:
        await other.aclose()
    with pytest.raises(EpochConflict) as refused:
        await store.topology.compare_and_set(1, a_topology(2, primary="r"))
    assert (refused.value.expected, refused.value.found) == (1, 2)
    found = await store.topology.load()
    assert found is not None and found.shard("s0").primary.name == "q"


@pytest.fixture
async def stopped_first(
    etcd: EtcdCluster, records_redis: RedisProcess
) -> AsyncIterator[tuple[EtcdCoordinationStore, EtcdMember]]:
    """A store whose calls go first to a follower (the quorum stays whole when it stops) and
    that follower, still running; the `etcd` fixture resumes it after the test."""
    leader = etcd.wait_for_leader()
    follower = next(m for m in etcd.members if m is not leader)
    opened = store_on(etcd, records_redis, first=follower)
    await opened.client.delete("/", prefix=True)
    yield opened, follower
    await opened.aclose()


async def test_a_steps_reads_answer_while_the_first_member_is_stopped(
    stopped_first: tuple[EtcdCoordinationStore, EtcdMember],
) -> None:
    store, first = stopped_first
    await store.topology.compare_and_set(0, a_topology(1))
    await store.flags.engage_kill_switch("failover", {"by": "ops"})
    first.pause()  # SIGSTOP: the connection stays open, no answer comes
    reads = await store.step_reads()
    assert reads.kill_switches == {"failover": {"by": "ops"}}
    assert reads.topology is not None and reads.topology.epoch == 1
    assert store.client._preferred != 0  # sent to the stopped member first, then on


async def test_a_known_locks_renewal_sends_its_keep_alive_and_guarded_read_side_by_side(
    store: EtcdCoordinationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = await store.locks.acquire("shard", "rq/s0", "wf-a")
    read_sent = asyncio.Event()
    txn, keep_alive = store.client.txn, store.client.keep_alive_once

    async def noted_txn(*args: Any, **kwargs: Any) -> TxnResult:
        read_sent.set()
        return await txn(*args, **kwargs)

    async def keep_alive_once_the_read_is_sent(lease_id: int) -> int:
        await asyncio.wait_for(read_sent.wait(), 2)  # one after the other, this times out
        return await keep_alive(lease_id)

    monkeypatch.setattr(store.client, "txn", noted_txn)
    monkeypatch.setattr(store.client, "keep_alive_once", keep_alive_once_the_read_is_sent)
    assert await store.locks.renew(held)


async def test_a_lock_renews_when_its_member_stops_as_the_renewal_starts(
    stopped_first: tuple[EtcdCoordinationStore, EtcdMember], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, first = stopped_first
    held = await store.locks.acquire("shard", "rq/s0", "wf-a")
    assert await store.locks.renew(held)  # its lease known: the next renewal keeps it alive
    keep_alive = store.client.keep_alive_once
    kept_alive: list[int] = []

    async def stop_then_keep_alive(lease_id: int) -> int:
        first.pause()  # the keep-alive and the guarded read beside it go to a stopped member
        ttl = await keep_alive(lease_id)
        kept_alive.append(lease_id)
        return ttl

    monkeypatch.setattr(store.client, "keep_alive_once", stop_then_keep_alive)
    assert await store.locks.renew(held)
    assert kept_alive
    assert store.client._preferred != 0  # both were sent to the stopped member, then on


async def test_the_topology_watch_delivers_after_the_member_streaming_it_dies(
    etcd: EtcdCluster, records_redis: RedisProcess
) -> None:
    # A follower streams (its death leaves the quorum whole, so the write below is certain).
    leader = etcd.wait_for_leader()
    streaming = next(m for m in etcd.members if m is not leader)
    watcher = store_on(etcd, records_redis, first=streaming)
    writer = store_on(etcd, records_redis)
    try:
        await writer.client.delete("/", prefix=True)
        await writer.topology.compare_and_set(0, a_topology(1))
        watch = watcher.topology.watch(after_epoch=1, refresh_every=60)
        delivered = asyncio.ensure_future(anext(watch))
        await asyncio.sleep(0.3)  # the watch streams from `streaming`
        streaming.kill()
        await writer.topology.compare_and_set(1, a_topology(2, "q"))
        topology = await asyncio.wait_for(delivered, timeout=20)
        await watch.aclose()  # type: ignore[attr-defined]
    finally:
        await watcher.aclose()
        await writer.aclose()
    assert topology.epoch == 2 and topology.shards[0].primary.name == "q"


def test_lock_keys_of_resources_with_slashes_stay_apart() -> None:
    assert etcd_keys.lock("shard", "rq/s0") != etcd_keys.lock("shard/rq", "s0")


def test_a_chaos_schedule_key_is_its_name_percent_encoded() -> None:
    # As README says: a comma, which a schedule of several experiments has, as %2C.
    name = "kill,replica_kill-0123456789ab"
    assert etcd_keys.chaos_schedule(name) == (
        "/lazarus/chaos/schedules/kill%2Creplica_kill-0123456789ab"
    )
