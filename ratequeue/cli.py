"""`ratequeue` command line: run the HTTP service, look at the topology, write the first one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import typer
import uvicorn

from common.settings_options import with_settings
from common.version import add_version_option
from ratequeue.config import InitialTopologySettings, ServiceSettings

if TYPE_CHECKING:
    from ratequeue.topology import Topology, TopologySource

app = typer.Typer(help="Per-number rate-limited queues on sharded Redis.", no_args_is_help=True)
add_version_option(app, "ratequeue")

# Where the topology is, for every command that reads or writes it (the same settings and
# environment variables as `serve`).
TOPOLOGY_STORE = ("control_url", "topology_backend", "etcd_endpoints", "sentinels")


@contextlib.asynccontextmanager
async def _topology_source(settings: ServiceSettings) -> AsyncIterator[TopologySource]:
    """The source of the map `settings` names (the control store's Redis, etcd's members, or
    the control store's map with the primaries the sentinels name), closed on the way out."""
    import redis.asyncio as aioredis

    from common.etcd_client import EtcdClient
    from ratequeue.etcd_topology import EtcdTopologyStore
    from ratequeue.sentinel_topology import SentinelTopologySource
    from ratequeue.topology import TopologyStore

    if settings.topology_backend == "etcd":
        async with EtcdClient.from_setting(settings.etcd_endpoints) as client:
            yield EtcdTopologyStore(client)
        return
    if settings.topology_backend == "sentinel":
        source = SentinelTopologySource.over_control_store(
            settings.control_url, settings.sentinel_addresses()
        )
        try:
            yield source
        finally:
            await source.aclose()
        return
    control = aioredis.Redis.from_url(settings.control_url, socket_timeout=5,
                                      socket_connect_timeout=2)  # fmt: skip
    try:
        yield TopologyStore(control)
    finally:
        await control.aclose()


@app.command()
@with_settings(ServiceSettings, env_prefix="RATEQUEUE_", command_name="ratequeue serve")
def serve(settings: ServiceSettings) -> None:
    """Serve the ratequeue HTTP API."""
    logging.basicConfig(level=settings.log_level.upper())
    if settings.workers > 1:
        from ratequeue.workers import serve_with_workers

        serve_with_workers(settings, host=settings.host, port=settings.port,
                           log_level=settings.log_level)  # fmt: skip
        return
    from ratequeue.service import create_app

    # httptools and uvloop named, not left to "auto": without them uvicorn would fall back
    # silently to its pure-Python parser and asyncio's loop, which cost more CPU per request.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=settings.log_level, access_log=False, http="httptools",
                loop="uvloop")  # fmt: skip


@app.command()
@with_settings(ServiceSettings, env_prefix="RATEQUEUE_", command_name="ratequeue topology",
               only=TOPOLOGY_STORE)  # fmt: skip
def topology(settings: ServiceSettings) -> None:
    """Print the current topology as JSON."""
    from ratequeue.topology import topology_json

    async def load() -> dict | None:
        async with _topology_source(settings) as store:
            found = await store.load()
        return None if found is None else topology_json(found)

    from redis.exceptions import RedisError

    from common.errors import EtcdUnreachable

    try:
        found = asyncio.run(load())
    except (RedisError, OSError, EtcdUnreachable) as error:
        typer.echo(f"ratequeue topology: the topology store did not answer: {error}", err=True)
        raise typer.Exit(1) from None
    if found is None:
        typer.echo(f"no topology in the {settings.topology_backend} store", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(found, indent=2))


def parse_shard_spec(spec: str) -> tuple[str, list[tuple[str, int, str | None]]]:
    """`ID=HOST[/PEER_HOST]:PORT,...` → the shard id and its nodes (the primary first), each as
    (client host, port, its own peer host or None).

    Raises ValueError with a message naming the spec and what was expected."""
    shard_id, sep, nodes = spec.partition("=")
    shard_id = shard_id.strip()
    expected = "expected ID=PRIMARY_HOST[/PEER_HOST]:PORT[,REPLICA_HOST[/PEER_HOST]:PORT...]"
    if not sep or not shard_id or not nodes.strip():
        raise ValueError(f"--shard {spec!r}: {expected}")
    addresses: list[tuple[str, int, str | None]] = []
    for item in nodes.split(","):
        hosts, colon, port_text = item.strip().rpartition(":")
        host, slash, peer_host = hosts.partition("/")
        if not colon or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(
                f"--shard {spec!r}: {item.strip()!r} is not HOST[/PEER_HOST]:PORT (port 1-65535)"
            )
        if slash and not peer_host:
            raise ValueError(f"--shard {spec!r}: {item.strip()!r} has an empty PEER_HOST")
        addresses.append((host, int(port_text), peer_host or None))
    return shard_id, addresses


def initial_topology(
    shards: list[tuple[str, list[tuple[str, int, str | None]]]], peer_host: str | None
) -> Topology:
    """Epoch 1 of a deployment: per shard, the first node is the primary; nodes are named like
    the local testbed's (`s0-primary`, `s0-replica1`, ...), which target files refer to. A node
    without a peer host of its own gets `peer_host`."""
    from ratequeue.topology import NodeRef, Shard, Topology, even_slot_ranges

    ranges = even_slot_ranges(len(shards))
    entries = []
    for (shard_id, addresses), slots in zip(shards, ranges, strict=True):
        (primary_host, primary_port, primary_peer), *replicas = addresses
        entries.append(
            Shard(
                id=shard_id,
                slots=slots,
                epoch=1,
                primary=NodeRef(
                    name=f"{shard_id}-primary",
                    host=primary_host,
                    port=primary_port,
                    peer_host=primary_peer or peer_host,
                ),
                replicas=[
                    NodeRef(name=f"{shard_id}-replica{i}", host=h, port=p, peer_host=q or peer_host)
                    for i, (h, p, q) in enumerate(replicas, start=1)
                ],
                replica_target=len(replicas),
            )
        )
    return Topology(epoch=1, shards=entries)


async def _publish_initial_topology(
    settings: ServiceSettings,
    topology: Topology,
    wait: float,
    min_replicas: int,
    say: Callable[[str], None],
) -> tuple[bool, int]:
    """Only if the control store holds no topology: wait for every node, appoint each primary at
    epoch 1, store the topology (compare-and-set on epoch 0), then attach the replicas and wait
    for their links. Returns (published, stored epoch)."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    from common.errors import EtcdUnreachable
    from ratequeue import membership
    from ratequeue.errors import EpochConflict

    deadline = asyncio.get_running_loop().time() + wait

    async def answer(url: str, what: str, check: Callable[[dict], bool] | None = None) -> None:
        # Containers and processes come up in any order: retry until the deadline.
        last = "no answer"
        while True:
            connection = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
            try:
                await connection.ping()
                if check is None or check(await connection.info("replication")):
                    return
                last = "replication link not up yet"
            except (RedisError, OSError) as error:
                last = str(error)
            finally:
                await connection.aclose()
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{what} ({url}): {last} after {wait:g} s")
            await asyncio.sleep(0.5)

    @contextlib.asynccontextmanager
    async def connected(address: str) -> AsyncIterator[aioredis.Redis]:
        connection = aioredis.Redis.from_url(f"redis://{address}/0")
        try:
            yield connection
        finally:
            await connection.aclose()

    def link_up(info: dict) -> bool:
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    async def stored(store: TopologySource) -> Topology | None:
        last = "no answer"
        while True:
            try:
                return await store.load()
            except (RedisError, OSError, EtcdUnreachable) as error:
                last = str(error)
            if asyncio.get_running_loop().time() > deadline:
                where = settings.etcd_endpoints or settings.control_url
                raise TimeoutError(f"topology store ({where}): {last} after {wait:g} s")
            await asyncio.sleep(0.5)

    async with _topology_source(settings) as store:
        existing = await stored(store)
        if existing is not None:
            return False, existing.epoch  # restarted nodes are put back by the controllers
        for shard in topology.shards:
            for node in [shard.primary, *shard.replicas]:
                await answer(f"redis://{node.address}/0", node.name)
        # The order the membership argument needs (docs/membership.md): every node booted
        # parked; appoint each primary, store the map listing every replica, then attach them.
        for shard in topology.shards:
            needed = membership.required_replicas(min_replicas, len(shard.replicas))
            async with connected(shard.primary.address) as primary:
                await membership.appoint_primary(primary, shard.epoch, min_replicas=needed)
            say(f"appointed {shard.primary.name} ({shard.primary.address}) at epoch {shard.epoch}")
        try:
            await store.compare_and_set(0, topology)
        except EpochConflict as conflict:
            return False, conflict.found  # another init won the race; theirs stands
        for shard in topology.shards:
            for replica in shard.replicas:
                async with connected(replica.address) as node:
                    await membership.attach(node, shard.primary)
                await answer(f"redis://{replica.address}/0", replica.name, link_up)
        # A new primary's replication id is final once its first replica synced: record it.
        settled = {}
        for shard in topology.shards:
            async with connected(shard.primary.address) as primary:
                settled[shard.id] = (
                    membership.settled_lineage(await primary.info("replication")),
                    await membership.enqueues_applied(primary),
                )
        with contextlib.suppress(EpochConflict):  # a controller changed it first: theirs stands
            await store.compare_and_set(
                topology.epoch,
                topology.model_copy(
                    update={
                        "shards": [
                            s.model_copy(
                                update={
                                    "lineage": settled[s.id][0],
                                    "appointed_enqueues": settled[s.id][1],
                                }
                            )
                            for s in topology.shards
                        ]
                    }
                ),
            )
        return True, topology.epoch


@app.command("topology-init")
@with_settings(ServiceSettings, env_prefix="RATEQUEUE_", command_name="ratequeue topology-init",
               only=(*TOPOLOGY_STORE, "min_replicas"))  # fmt: skip
@with_settings(InitialTopologySettings, env_prefix="RATEQUEUE_",
               command_name="ratequeue topology-init", parameter="initial")  # fmt: skip
def topology_init(settings: ServiceSettings, initial: InitialTopologySettings) -> None:
    """Make the first primaries and write the initial topology (epoch 1), once: an existing
    topology is never overwritten (exit 0, nothing touched). Nodes boot parked; this appoints
    each shard's first node, lists the others, then attaches them and waits for their links."""
    if settings.topology_backend == "sentinel":
        # Sentinel changes primaries, never the map: the first one is written to the control
        # store, and the sentinels are told to monitor the primaries it appoints.
        typer.echo("ratequeue topology-init: setting 'topology_backend': sentinel is refused "
                   "(the first map goes to the control store: --topology-backend redis)",
                   err=True)  # fmt: skip
        raise typer.Exit(2)
    try:
        specs = [parse_shard_spec(spec) for spec in initial.shards]
        ids = [shard_id for shard_id, _ in specs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"--shard: shard ids repeat: {ids}")
        addresses = [(host, port) for _, nodes in specs for host, port, _ in nodes]
        if len(set(addresses)) != len(addresses):
            raise ValueError("--shard: a HOST:PORT appears twice")
        topology = initial_topology(specs, initial.peer_host)
    except ValueError as error:
        typer.echo(f"ratequeue topology-init: {error}", err=True)
        raise typer.Exit(2) from None
    try:
        publishing = _publish_initial_topology(
            settings, topology, initial.wait, settings.min_replicas, typer.echo
        )
        published, epoch = asyncio.run(publishing)
    except TimeoutError as error:
        typer.echo(f"ratequeue topology-init: not reachable: {error}", err=True)
        raise typer.Exit(1) from None
    if published:
        summary = ", ".join(f"{s.id}: {s.primary.name} + {len(s.replicas)} replicas"
                            for s in topology.shards)  # fmt: skip
        typer.echo(f"published topology epoch {epoch} ({summary})")
    else:
        typer.echo(f"a topology is already stored (epoch {epoch}); left as it is")
