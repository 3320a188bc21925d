"""The async etcd client (`common.etcd_client`) against a real three-member cluster: keys,
transactions, leases and watches, and what it does when members die, pause or lose quorum
(another member answers; with no quorum, a bounded EtcdUnreachable, never a hang)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator

import pydantic
import pytest

from common.errors import (
    EtcdBadRequest,
    EtcdCompareFailed,
    EtcdLeaseNotFound,
    EtcdUnreachable,
)
from common.etcd_client import (
    Compare,
    Delete,
    EtcdClient,
    EtcdClientSettings,
    Get,
    Put,
    WatchEvent,
)
from common.etcd_processes import EtcdCluster, EtcdMember

CALL_TIMEOUT = 3.0


def client_for(cluster: EtcdCluster, first: EtcdMember | None = None) -> EtcdClient:
    """A client whose calls go to `first` until it fails them."""
    members = sorted(cluster.members, key=lambda m: m is not first)
    settings = EtcdClientSettings(
        endpoints=[m.client_url for m in members], call_timeout=CALL_TIMEOUT
    )
    return EtcdClient(settings)


@pytest.fixture
async def client(etcd: EtcdCluster) -> AsyncIterator[EtcdClient]:
    async with client_for(etcd) as opened:
        yield opened


async def eventually_put(client: EtcdClient, key: str, value: bytes, within: float) -> None:
    """Put, again while the store is electing (a write may fail once while it does)."""
    deadline = time.monotonic() + within
    while True:
        try:
            await client.put(key, value)
            return
        except EtcdUnreachable:
            if time.monotonic() > deadline:
                raise


async def next_event(events: AsyncIterator[WatchEvent], within: float = 10.0) -> WatchEvent:
    return await asyncio.wait_for(anext(events), timeout=within)


# --- keys ---------------------------------------------------------------------------------------


async def test_a_put_key_reads_back_with_its_revisions(client: EtcdClient) -> None:
    written = await client.put("kv/one", b"1")
    found = await client.get("kv/one")
    assert found is not None
    assert (found.value, found.mod_revision) == (b"1", written.revision)
    assert found.create_revision <= found.mod_revision and found.version >= 1


async def test_a_missing_key_reads_as_none(client: EtcdClient) -> None:
    assert await client.get("kv/never-written") is None


async def test_get_prefix_returns_only_keys_under_it_sorted(client: EtcdClient) -> None:
    for key in ("pre/b", "pre/a", "prefix-not/x", "pre/c"):
        await client.put(key, key.encode())
    found = await client.get_prefix("pre/")
    assert [kv.key for kv in found.kvs] == ["pre/a", "pre/b", "pre/c"]
    assert found.revision >= max(kv.mod_revision for kv in found.kvs)


async def test_delete_removes_the_key(client: EtcdClient) -> None:
    await client.put("kv/gone", b"x")
    assert (await client.delete("kv/gone")).deleted == 1
    assert await client.get("kv/gone") is None


async def test_an_empty_key_is_a_bad_request(client: EtcdClient) -> None:
    with pytest.raises(EtcdBadRequest, match="key"):
        await client.put("", b"x")


def test_settings_refuse_an_endpoint_that_is_not_a_url() -> None:
    with pytest.raises(pydantic.ValidationError, match="endpoint"):
        EtcdClientSettings(endpoints=["127.0.0.1:2379"])


def test_settings_refuse_an_https_endpoint_by_name() -> None:
    with pytest.raises(pydantic.ValidationError, match="https is not supported"):
        EtcdClientSettings(endpoints=["https://127.0.0.1:2379"])


# --- transactions -------------------------------------------------------------------------------


async def test_compare_and_set_wins_once_among_concurrent_writers(client: EtcdClient) -> None:
    async def claim(writer: int) -> int | None:
        try:
            await client.txn(
                [Compare(key="txn/owner", target="version", op="==", operand=0)],
                [Put(key="txn/owner", value=str(writer).encode())],
            )
        except EtcdCompareFailed:
            return None
        return writer

    outcomes = await asyncio.gather(*(claim(writer) for writer in range(10)))
    winners = [w for w in outcomes if w is not None]
    assert len(winners) == 1
    owner = await client.get("txn/owner")
    assert owner is not None and owner.value == str(winners[0]).encode()


async def test_a_compare_on_a_stale_mod_revision_fails_and_runs_the_failure_branch(
    client: EtcdClient,
) -> None:
    first = await client.put("txn/doc", b"v1")
    await client.put("txn/doc", b"v2")
    result = await client.txn(
        [Compare(key="txn/doc", target="mod_revision", op="==", operand=first.revision)],
        [Delete(key="txn/doc")],
        [Get(key="txn/doc")],
        check=False,
    )
    assert not result.succeeded
    assert result.responses[0].kvs[0].value == b"v2"  # type: ignore[union-attr]


def test_a_value_compare_refuses_an_integer_operand() -> None:
    with pytest.raises(pydantic.ValidationError, match="operand"):
        Compare(key="k", target="value", op="==", operand=3)


# --- leases -------------------------------------------------------------------------------------


async def test_a_lease_that_expires_deletes_its_keys(client: EtcdClient) -> None:
    lease = await client.grant_lease(1)
    await client.put("lease/expiring", b"x", lease=lease.id)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and await client.get("lease/expiring") is not None:
        await asyncio.sleep(0.1)
    assert await client.get("lease/expiring") is None


async def test_a_kept_alive_lease_keeps_its_keys_past_its_ttl(client: EtcdClient) -> None:
    lease = await client.grant_lease(1)
    await client.put("lease/kept", b"x", lease=lease.id)
    async with client.kept_alive(lease) as lost:
        await asyncio.sleep(lease.ttl * 3)
        assert await client.get("lease/kept") is not None
        assert not lost.is_set()
    await client.revoke_lease(lease.id)


async def test_revoking_a_lease_deletes_its_keys_and_ends_it(client: EtcdClient) -> None:
    lease = await client.grant_lease(30)
    await client.put("lease/revoked", b"x", lease=lease.id)
    await client.revoke_lease(lease.id)
    assert await client.get("lease/revoked") is None
    with pytest.raises(EtcdLeaseNotFound):
        await client.keep_alive_once(lease.id)


async def test_a_put_on_an_unknown_lease_is_refused_as_lease_not_found(
    client: EtcdClient,
) -> None:
    with pytest.raises(EtcdLeaseNotFound):
        await client.put("lease/none", b"x", lease=123456789)


# --- watches ------------------------------------------------------------------------------------


async def test_a_watch_sees_a_put_and_a_delete(client: EtcdClient) -> None:
    events = client.watch("watch/", prefix=True)
    waiting = asyncio.ensure_future(next_event(events))
    await asyncio.sleep(0.3)  # the stream is open before the write
    await client.put("watch/a", b"1")
    put_event = await waiting
    await client.delete("watch/a")
    delete_event = await next_event(events)
    await events.aclose()  # type: ignore[attr-defined]
    assert (put_event.type, put_event.kv.key, put_event.kv.value) == ("put", "watch/a", b"1")
    assert (delete_event.type, delete_event.kv.key) == ("delete", "watch/a")


async def test_a_watch_from_a_revision_replays_what_changed_since(client: EtcdClient) -> None:
    first = await client.put("replay/k", b"1")
    await client.put("replay/k", b"2")
    events = client.watch("replay/k", start_revision=first.revision)
    seen = [await next_event(events), await next_event(events)]
    await events.aclose()  # type: ignore[attr-defined]
    assert [e.kv.value for e in seen] == [b"1", b"2"]


async def test_a_prefix_watch_yields_every_key_changed_in_one_revision(
    client: EtcdClient,
) -> None:
    both = [Put(key="batch/a", value=b"1"), Put(key="batch/b", value=b"2")]
    written = await client.txn([], both)
    events = client.watch("batch/", prefix=True, start_revision=written.revision)
    seen = [await next_event(events), await next_event(events, within=3)]
    await events.aclose()  # type: ignore[attr-defined]
    assert [(e.kv.key, e.revision) for e in seen] == [
        ("batch/a", written.revision),
        ("batch/b", written.revision),
    ]


# --- members dying ------------------------------------------------------------------------------


async def test_after_the_leader_is_killed_calls_succeed_through_the_others(
    etcd: EtcdCluster,
) -> None:
    leader = etcd.wait_for_leader()
    async with client_for(etcd, first=leader) as client:
        await client.put("failover/k", b"before")
        leader.kill()
        await eventually_put(client, "failover/k", b"after", within=15)
        found = await client.get("failover/k")
    assert found is not None and found.value == b"after"
    assert etcd.wait_for_leader() is not leader


async def test_a_paused_member_does_not_hang_reads_the_others_answer(etcd: EtcdCluster) -> None:
    paused = etcd.members[0]
    async with client_for(etcd, first=paused) as client:
        await client.put("paused/k", b"v")
        paused.pause()
        found = await asyncio.wait_for(client.get("paused/k"), timeout=CALL_TIMEOUT + 1)
    assert found is not None and found.value == b"v"


async def test_a_watch_survives_the_death_of_the_member_streaming_it(etcd: EtcdCluster) -> None:
    leader = etcd.wait_for_leader()
    async with client_for(etcd, first=leader) as watcher, client_for(etcd) as writer:
        events = watcher.watch("survive/", prefix=True)
        waiting = asyncio.ensure_future(next_event(events, within=20))
        await asyncio.sleep(0.3)
        await writer.put("survive/before", b"1")
        assert (await asyncio.wait_for(asyncio.shield(waiting), 10)).kv.key == "survive/before"
        leader.kill()
        await eventually_put(writer, "survive/after", b"2", within=15)
        event = await next_event(events, within=20)
        await events.aclose()  # type: ignore[attr-defined]
    assert (event.kv.key, event.kv.value) == ("survive/after", b"2")


async def test_a_watch_moves_off_a_paused_member(etcd: EtcdCluster) -> None:
    paused = etcd.members[1]
    async with client_for(etcd, first=paused) as watcher, client_for(etcd) as writer:
        events = watcher.watch("paused-watch/k")
        waiting = asyncio.ensure_future(next_event(events, within=20))
        await asyncio.sleep(0.3)
        paused.pause()
        await eventually_put(writer, "paused-watch/k", b"seen", within=15)
        event = await waiting
        await events.aclose()  # type: ignore[attr-defined]
    assert event.kv.value == b"seen"


async def test_with_two_of_three_members_down_calls_fail_unreachable_within_the_timeout(
    etcd: EtcdCluster,
) -> None:
    async with client_for(etcd) as client:
        await client.put("quorum/k", b"v")
        for member in etcd.members[:2]:
            member.kill()
        for call in (client.get("quorum/k"), client.put("quorum/k", b"w")):
            with pytest.raises(EtcdUnreachable):
                await asyncio.wait_for(call, timeout=CALL_TIMEOUT + 2)


async def test_a_watch_without_quorum_raises_unreachable_instead_of_waiting_forever(
    etcd: EtcdCluster,
) -> None:
    async with client_for(etcd) as client:
        events = client.watch("noquorum/k")
        for member in etcd.members[:2]:
            member.kill()
        with pytest.raises(EtcdUnreachable):  # a hang fails as TimeoutError
            await asyncio.wait_for(anext(events), timeout=30)
        await events.aclose()  # type: ignore[attr-defined]


async def test_a_refusal_answered_in_chunks_with_trailers_leaves_the_connection_in_use(
    etcd: EtcdCluster,
) -> None:
    """The gateway sends its errors chunked, with gRPC trailers; the next call on the same
    connection reads its own answer, not the rest of the refusal."""
    async with client_for(etcd) as client:
        with pytest.raises(EtcdLeaseNotFound):
            await client.keep_alive_once(7_777_777)
        with pytest.raises(EtcdLeaseNotFound):
            await client.put("chunked/k", b"v", lease=7_777_777)
        await client.put("chunked/k", b"v")
        found = await client.get("chunked/k")
    assert found is not None and found.value == b"v"


async def test_a_write_after_its_member_restarted_goes_through_on_a_new_connection(
    etcd: EtcdCluster,
) -> None:
    """A kept-alive connection the member closed when it died is not used for the next call
    (which would lose its answer and leave a write's outcome unknown)."""
    first = etcd.members[0]
    async with client_for(etcd, first=first) as client:
        await client.put("restart/k", b"before")
        await asyncio.to_thread(first.kill)
        await asyncio.to_thread(first.restart)
        etcd.wait_for_leader()
        await client.put("restart/k", b"after")
        found = await client.get("restart/k")
    assert found is not None and found.value == b"after"


def range_answer(key: str, value: bytes) -> bytes:
    """What the gateway answers a range read that found `key`."""
    kv = {
        "key": base64.b64encode(key.encode()).decode(),
        "value": base64.b64encode(value).decode(),
        "mod_revision": "2",
    }
    return json.dumps({"header": {"revision": "2"}, "kvs": [kv], "count": "1"}).encode()


async def test_a_call_cancelled_mid_answer_leaves_no_broken_connection_for_the_next() -> None:
    """A gateway that stalls halfway through its first answer, then sends the rest: the call
    is cancelled mid-answer, and the next call reads its own answer on a fresh connection,
    not the rest of the cancelled one's."""
    first_answer_started, call_cancelled = asyncio.Event(), asyncio.Event()
    rest_sent = asyncio.Event()
    connections = 0

    async def gateway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                body = range_answer("k", b"fresh" if connections > 1 else b"stale")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                writer.write(b"Content-Length: %d\r\n\r\n" % len(body))
                if connections == 1:
                    writer.write(body[:10])
                    await writer.drain()
                    first_answer_started.set()
                    await call_cancelled.wait()
                    writer.write(body[10:])
                    await writer.drain()
                    rest_sent.set()
                else:
                    writer.write(body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(gateway, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with EtcdClient(EtcdClientSettings(endpoints=[url])) as client:
            cancelled = asyncio.create_task(client.get("k"))
            await asyncio.wait_for(first_answer_started.wait(), timeout=5)
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            call_cancelled.set()
            await asyncio.wait_for(rest_sent.wait(), timeout=5)
            found = await client.get("k")
    finally:
        server.close()
        await server.wait_closed()
    assert found is not None and found.value == b"fresh"
    assert connections == 2
