"""Precondition checks: guard conditions every controller node evaluates on its own, from its own
vantage point, before an action may be scheduled (DESIGN.md, "Lazarus rule").

A check is an async function of a `CheckContext` registered by name; it returns a `CheckResult`
and never raises (an error is a failed check, with the reason). Probes within one evaluation are
memoised, so several checks looking at the same replica cost one round trip.
Not for: counting votes (see `quorum`) or acting (see `workflow`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel

from common.cancellation import cancel_until_done
from detection.events import Event
from detection.probes import ProbeResult, ping, probe_connection
from lazarus_lite.coordination.interface import ServiceMembership
from lazarus_lite.rules import CheckSpec
from ratequeue import membership
from ratequeue.errors import NoSafeCandidate
from ratequeue.topology import NodeRef, Shard, Topology


class CheckResult(BaseModel):
    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = {}


# How long a check's first PING of a node may go unanswered before a second, independent one
# is sent alongside it (see `CheckContext._ping_twice`). The second attempt guards against a
# lost packet (a connection of its own), no longer against a hiccup: with `probe_timeout` 0.25 s
# the node is found down once it has been silent for about 0.3 s (this plus one timeout; it was
# two timeouts, 0.5 s). With the sensors' ~0.7 s of silence before they report, the shortest
# stall that can promote is about 1.0 s (it was about 1.2 s): still well beyond the 300 ms stall
# that must not (tests/lazarus/test_checks_on_real_nodes.py pins this window).
SECOND_ATTEMPT_AFTER = 0.05


@dataclass
class CheckContext:
    event: Event
    topology: Topology | None
    spec: CheckSpec
    min_replicas: int = 1
    probe_timeout: float = 0.25
    services: ServiceMembership | None = None
    observe_probe: Callable[[ProbeResult], None] | None = None  # each PING, as it ends
    # One probe of each node per evaluation, shared by the checks running together: they all
    # judge the same moment (a second look could see another offset, another answer).
    _pings: dict[str, asyncio.Task[ProbeResult]] = field(default_factory=dict)
    _infos: dict[str, asyncio.Task[tuple[dict | None, int | None]]] = field(default_factory=dict)

    @property
    def shard(self) -> Shard:
        if self.topology is None:
            raise LookupError("no topology in the control store")
        if not self.event.shard:
            raise LookupError("the event names no shard")
        return self.topology.shard(self.event.shard)

    async def ping(self, node: NodeRef) -> ProbeResult:
        if node.peer_address not in self._pings:
            self._pings[node.peer_address] = asyncio.ensure_future(self._ping_twice(node))
        return await self._pings[node.peer_address]

    async def _ping_twice(self, node: NodeRef) -> ProbeResult:
        """Two attempts, each on its own connection; failed only if both failed. A single lost
        packet is not a dead primary, and a connection whose packet was lost waits out its
        timeout: so the second attempt is not queued behind the first one's timeout, it starts
        `SECOND_ATTEMPT_AFTER` later (or at once when the first failed sooner, a refusal), and
        a silent node costs one timeout plus that, not two timeouts (a shorter window for
        silence: see `SECOND_ATTEMPT_AFTER`)."""
        host = node.peer_host or node.host
        first = asyncio.ensure_future(self._ping(host, node.port))
        second: asyncio.Future[ProbeResult] | None = None
        try:
            await asyncio.wait({first}, timeout=SECOND_ATTEMPT_AFTER)
            if first.done() and first.result().ok:
                return first.result()
            second = asyncio.ensure_future(self._ping(host, node.port))
            for answered in asyncio.as_completed({first, second}):
                result = await answered
                if result.ok:
                    return result
            return second.result()
        finally:  # the other attempt, once one answered: its connection closed, not leaked
            await cancel_until_done(a for a in (first, second) if a is not None)

    async def _ping(self, host: str, port: int) -> ProbeResult:
        result = await ping(host, port, self.probe_timeout)
        if self.observe_probe is not None:
            self.observe_probe(result)
        return result

    async def replication(self, node: NodeRef) -> dict | None:
        """The node's `INFO replication`, None if it could not be read."""
        info, _ = await self._replica_read(node)
        return info

    async def enqueues_applied(self, node: NodeRef) -> int | None:
        """The node's enqueue count (`ratequeue.membership.enqueues_applied`), None if unread;
        read with its `INFO replication`, so the count and the offset are of one moment."""
        _, enqueues = await self._replica_read(node)
        return enqueues

    async def _replica_read(self, node: NodeRef) -> tuple[dict | None, int | None]:
        if node.peer_address not in self._infos:
            self._infos[node.peer_address] = asyncio.ensure_future(
                replication_and_enqueues(node, self.probe_timeout * 2)
            )
        return await self._infos[node.peer_address]

    async def replica_states(self) -> list[tuple[NodeRef, dict | None]]:
        replicas = self.shard.replicas
        infos = await asyncio.gather(*(self.replication(r) for r in replicas))
        return list(zip(replicas, infos, strict=True))

    def replicas_needed(self) -> int:
        """Fresh offsets from N - k + 1 replicas include one holding every acknowledged write
        (each acknowledged write is on k of the N)."""
        return max(1, len(self.shard.replicas) - self.min_replicas + 1)


async def replication_and_enqueues(node: NodeRef, timeout: float) -> tuple[dict | None, int | None]:
    """A node's `INFO replication` and enqueue count in one round trip on one connection (the
    checks used to read the count after the INFO came back: a second connection and a second
    round trip in every decision). (None, None) if the node cannot be read within `timeout`."""
    connection = probe_connection(node.peer_host or node.host, node.port, timeout)
    try:
        # MULTI/EXEC: no write lands between the INFO and the GET, so the count and the
        # offsets are of one moment.
        async with asyncio.timeout(timeout), connection.pipeline(transaction=True) as pipe:
            pipe.info("replication")
            pipe.get(membership.BARRIER_KEY)
            info, count = await pipe.execute(raise_on_error=False)
    except Exception:
        return None, None
    finally:
        with contextlib.suppress(Exception):
            await connection.aclose()
    if isinstance(info, Exception):
        return None, None
    return dict(info), (None if isinstance(count, Exception) else int(count or 0))


CheckFunction = Callable[[CheckContext], Awaitable[CheckResult]]
CHECKS: dict[str, CheckFunction] = {}


def check(name: str) -> Callable[[CheckFunction], CheckFunction]:
    def register(function: CheckFunction) -> CheckFunction:
        CHECKS[name] = function
        return function

    return register


async def run_check(context: CheckContext) -> CheckResult:
    name = context.spec.check_name
    try:
        return await CHECKS[name](context)
    except Exception as error:  # a check that cannot decide has not passed
        return CheckResult(name=name, ok=False, detail=f"check could not run: {error}")


async def run_checks(
    event: Event,
    topology: Topology | None,
    specs: list[CheckSpec],
    *,
    min_replicas: int = 1,
    probe_timeout: float = 0.25,
    services: ServiceMembership | None = None,
    observe_probe: Callable[[ProbeResult], None] | None = None,
) -> list[CheckResult]:
    """Evaluate `specs` together, sharing probes; every check runs (the audit shows them all),
    and the results come in the specs' order. Concurrently: a decision waits for its slowest
    probe, not for the sum of them."""
    shared = CheckContext(
        event, topology, CheckSpec(checkName="-"), min_replicas, probe_timeout, services,
        observe_probe,
    )  # fmt: skip
    contexts = [
        CheckContext(
            event,
            topology,
            spec,
            min_replicas,
            probe_timeout,
            services,
            observe_probe,
            shared._pings,
            shared._infos,
        )
        for spec in specs
    ]
    return list(await asyncio.gather(*(run_check(context) for context in contexts)))


@check("MasterDown")
async def master_down(ctx: CheckContext) -> CheckResult:
    """The event's primary is still the shard's primary, and this node cannot reach it either."""
    shard = ctx.shard
    reported = ctx.event.data.get("primary")
    reported_epoch = ctx.event.data.get("shard_epoch")
    if reported is not None and reported != shard.primary.name:
        return CheckResult(
            name="MasterDown",
            ok=False,
            detail=f"stale: {reported} is no longer the primary of {shard.id} "
            f"(now {shard.primary.name}, epoch {shard.epoch})",
        )
    if reported_epoch is not None and int(reported_epoch) != shard.epoch:
        return CheckResult(
            name="MasterDown",
            ok=False,
            detail=f"stale: event for shard epoch {reported_epoch}, "
            f"shard is at epoch {shard.epoch}",
        )
    probe = await ctx.ping(shard.primary)
    if probe.ok:
        return CheckResult(
            name="MasterDown",
            ok=False,
            detail=f"primary {shard.primary.peer_address} answers "
            f"({probe.latency_s * 1000:.1f} ms) from this node",
        )
    return CheckResult(
        name="MasterDown",
        ok=True,
        detail=f"primary {shard.primary.peer_address} does not answer: {probe.error}",
    )


@check("ReplicasReachable")
async def replicas_reachable(ctx: CheckContext) -> CheckResult:
    states = await ctx.replica_states()
    reachable = [node.name for node, info in states if info is not None]
    needed = ctx.replicas_needed()
    ok = len(reachable) >= needed
    return CheckResult(
        name="ReplicasReachable",
        ok=ok,
        detail=f"{len(reachable)} of {len(states)} replicas answer; {needed} needed to know "
        f"which holds every write acknowledged at {ctx.min_replicas}",
        data={"reachable": reachable},
    )


@check("ReplicaCaughtUp")
async def replica_caught_up(ctx: CheckContext) -> CheckResult:
    """Some replica can be shown to hold every acknowledged write: the rule the failover applies
    (`ratequeue.membership.most_complete_replica`), on positions read from this node."""
    states = await ctx.replica_states()
    reachable = [(node, info) for node, info in states if info is not None]
    counts = await asyncio.gather(*(ctx.enqueues_applied(node) for node, _ in reachable))
    positions = [
        membership.position_of(node.name, info, enqueues=count)
        for (node, info), count in zip(reachable, counts, strict=True)
    ]
    try:
        best, ignored = membership.most_complete_replica(
            positions,
            ctx.shard.lineage,
            listed=len(states),
            min_replicas=ctx.min_replicas,
            appointed_enqueues=ctx.shard.appointed_enqueues,
        )
    except NoSafeCandidate as refusal:
        return CheckResult(
            name="ReplicaCaughtUp",
            ok=False,
            detail=str(refusal),
            data={"offsets": {p.name: [p.replid, p.offset] for p in positions}},
        )
    return CheckResult(
        name="ReplicaCaughtUp",
        ok=True,
        detail=f"candidate {best.name} at offset {best.offset} (highest of {len(positions)})",
        data={
            "candidate": best.name,
            "offsets": {p.name: p.offset for p in positions},
            "not_comparable": ignored,
        },
    )


@check("PeerCheck")
async def peer_check(ctx: CheckContext) -> CheckResult:
    """The other shards are healthy: several shards failing at once is an outage with a common
    cause, not a case for remediation."""
    if ctx.topology is None:
        raise LookupError("no topology")
    allowed = int(ctx.spec.params.get("max_failing_peers", ctx.spec.default or 0))
    others = [s for s in ctx.topology.shards if s.id != ctx.event.shard]
    probes = await asyncio.gather(*(ctx.ping(s.primary) for s in others))
    failing = [s.id for s, probe in zip(others, probes, strict=True) if not probe.ok]
    return CheckResult(
        name="PeerCheck",
        ok=len(failing) <= allowed,
        detail=(
            f"{len(others) - len(failing)} of {len(others)} other shards healthy"
            + (f"; failing: {', '.join(failing)}" if failing else "")
        ),
        data={"failing": failing},
    )


@check("MinActiveHosts")
async def min_active_hosts(ctx: CheckContext) -> CheckResult:
    """A shard: at least `default` replicas answer, so it keeps a primary after the promotion.
    A stateless service: at least `default` other hosts in its balancer answer their
    healthcheck, so taking this one out leaves enough."""
    minimum = int(ctx.spec.default if ctx.spec.default is not None else 1)
    if ctx.event.shard:
        states = await ctx.replica_states()
        active = sum(1 for _, info in states if info is not None)
        return CheckResult(
            name="MinActiveHosts",
            ok=active >= minimum,
            detail=f"{active} active replicas; minimum {minimum}",
        )
    healthy, _ = await _balancer_health(ctx)
    return CheckResult(
        name="MinActiveHosts",
        ok=len(healthy) >= minimum,
        detail=f"{len(healthy)} other healthy hosts; minimum {minimum}",
    )


def _healthcheck_url(host: str, ctx: CheckContext) -> str:
    path = str(ctx.spec.params.get("path", "/healthz"))
    base = host if host.startswith("http") else f"http://{host}"
    return f"{base.rstrip('/')}{path}"


async def _healthy(url: str, timeout: float) -> tuple[bool, str]:
    try:
        async with httpx.AsyncClient(timeout=timeout) as http:
            answer = await http.get(url)
        return answer.status_code == 200, f"HTTP {answer.status_code}"
    except httpx.HTTPError as error:
        return False, f"{type(error).__name__}: {error}"


async def _balancer_health(ctx: CheckContext) -> tuple[list[str], list[str]]:
    """(healthy, unhealthy) hosts of the event's service other than the event's host."""
    if ctx.services is None:
        raise LookupError("no coordination store to read the balancer from")
    members = await ctx.services.members(ctx.event.service)
    others = [url for url in members if url.rstrip("/") != ctx.event.host.rstrip("/")]
    answers = await asyncio.gather(
        *(_healthy(_healthcheck_url(u, ctx), ctx.probe_timeout * 4) for u in others)
    )
    healthy = [u for u, (ok, _) in zip(others, answers, strict=True) if ok]
    return healthy, [u for u in others if u not in healthy]


@check("HealthCheckDown")
async def healthcheck_down(ctx: CheckContext) -> CheckResult:
    """The host's healthcheck fails from this node too (not just from the sensor's side of a
    partition)."""
    url = _healthcheck_url(ctx.event.host, ctx)
    ok, detail = await _healthy(url, ctx.probe_timeout * 4)
    return CheckResult(
        name="HealthCheckDown", ok=not ok, detail=f"{url}: {'answers healthy' if ok else detail}"
    )


@check("HostPeersHealthy")
async def host_peers_healthy(ctx: CheckContext) -> CheckResult:
    """The service's other hosts are healthy: when they all fail together the cause is
    downstream, and replacing hosts would not help."""
    healthy, unhealthy = await _balancer_health(ctx)
    detail = f"{len(healthy)} other hosts healthy"
    if unhealthy:
        detail += f"; failing: {', '.join(unhealthy)}"
    return CheckResult(name="HostPeersHealthy", ok=not unhealthy, detail=detail)
