"""What the group-commit fault tests share: producers that retry each message with its id until
201 (the producer's side of the zero-loss contract), an acknowledged-message ledger checked
against what the shard holds once it settles, and the failover done by the real workflow steps
(`lazarus_lite.steps.ratequeue_promotion`, fence to publish) run in-process by the workflow
engine on the cluster's control store.

Not for: the schedules themselves (the test modules), or provisioning and forensics (the steps
after `publish_topology` need an actuator; no schedule here depends on them).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import redis
import redis.asyncio as aioredis
import yaml

import lazarus_lite.steps  # noqa: F401  (registers the failover steps)
from lazarus_lite.coordination.opening import opened_coordination_store
from lazarus_lite.workflow.context import StepEnvironment
from lazarus_lite.workflow.definition import WorkflowDefinition
from lazarus_lite.workflow.engine import WorkflowEngine
from lazarus_lite.workflow.loading import parse_workflow
from lazarus_lite.workflow.records import WorkflowRecord
from ratequeue import membership
from ratequeue.local_cluster import LocalCluster, ShardNode
from ratequeue.scripts import entry_id, queue_key, state_key
from ratequeue.topology import Shard, Topology
from tests.etcd_topology import store_address_of
from tests.prometheus_samples import metric_samples

T = TypeVar("T")

SHIPPED_FAILOVER = (
    Path(__file__).parents[2] / "lazarus_lite/definitions/workflows/ratequeue_failover.yaml"
)
# The shipped workflow up to the new topology: what decides which node holds what.
FAILOVER_STEPS = (
    "fence_old_primary",
    "choose_candidate",
    "promote_candidate",
    "repoint_replicas",
    "publish_topology",
)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 20,
             interval: float = 0.02) -> T:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# -- producers ----------------------------------------------------------------------------------


@dataclass
class Answer:
    id: str
    status: int | None  # None: no HTTP answer (transport error)
    at: float
    duplicate: bool = False
    code: str | None = None  # an error's code


@dataclass
class Producer:
    """Sends messages through one API instance, each on its own thread, retrying a 503 or a
    transport error with the same id until a 201 or `give_up_after` seconds: what a producer
    must do; `timeout` is how long one request may take. Every answer is kept."""

    api: str
    give_up_after: float = 30.0
    timeout: float = 30.0
    answers: list[Answer] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(64))
    _sent: list[Future[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # One client for all threads, made now: making one per request (an SSL context each)
        # on a loaded machine delays a wave by seconds, past the moments a schedule aims at.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=100)
        self._http = httpx.Client(base_url=self.api, timeout=self.timeout, limits=limits)
        # Every thread started now, for the same reason.
        for started in [self._pool.submit(time.sleep, 0.01) for _ in range(64)]:
            started.result()

    def send(self, messages: Iterable[tuple[str, str]], *, retry: bool = True) -> None:
        """(number, id) pairs, sent at once; each is retried in the background unless not
        `retry`."""
        for number, message_id in messages:
            self._sent.append(self._pool.submit(self._deliver, number, message_id, retry))

    def _deliver(self, number: str, message_id: str, retry: bool) -> None:
        deadline = time.monotonic() + self.give_up_after
        while True:
            try:
                body = {"id": message_id, "body": {"id": message_id}}
                response = self._http.post(f"/v1/numbers/{number}/messages", json=body)
                status: int | None = response.status_code
                answer = response.json()
                duplicate = status == 201 and answer["duplicate"]
                code = answer["error"]["code"] if status != 201 else None
            except httpx.HTTPError:
                status, duplicate, code = None, False, None
            with self._lock:
                self.answers.append(Answer(message_id, status, time.time(), duplicate, code))
            if status not in (503, None) or not retry or time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def acknowledge(self, messages: Iterable[tuple[str, str]], timeout: float = 20) -> None:
        """Send and wait for every answer: a wave before the faults (201 expected)."""
        self.send(messages)
        self.wait(timeout)

    def wait(self, timeout: float) -> None:
        """Return once every message got its last answer; fail if one is still unanswered."""
        deadline = time.monotonic() + timeout
        for sent in self._sent:
            sent.result(timeout=max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._http.close()

    def acknowledged(self) -> dict[str, float]:
        """id -> when its first 201 came."""
        with self._lock:
            first: dict[str, float] = {}
            for answer in self.answers:
                if answer.status == 201:
                    first.setdefault(answer.id, answer.at)
            return first

    def statuses(self, message_id: str) -> list[int | None]:
        with self._lock:
            return [a.status for a in self.answers if a.id == message_id]


def messages(prefix: str, count: int) -> list[tuple[str, str]]:
    """`count` (number, id) pairs over short codes: they drain at 100/s, so the ledger check
    does not wait on rate limits."""
    return [(f"2{index % 20:04d}", f"{prefix}-{index}") for index in range(count)]


# -- the ledger ---------------------------------------------------------------------------------


def current_topology(cluster: LocalCluster) -> Topology:
    """The map as the cluster's coordination store holds it (etcd, once moved there)."""

    async def load() -> Topology | None:
        async with opened_coordination_store(store_address_of(cluster)) as store:
            return await store.topology.load()

    topology = asyncio.run(load())
    assert topology is not None, "no topology in the cluster's store"
    return topology


def node_of(cluster: LocalCluster, name: str) -> ShardNode:
    return next(node for node in cluster.nodes() if node.name == name)  # type: ignore[misc]


def held_ids(primary: ShardNode) -> Counter[str]:
    """Every message the node holds, leased or waiting, counted by id: the copies a consumer
    would get. Read from the stored queues and leases (layout 2), so nothing needs to be due."""
    with primary.client() as conn:
        copies: Counter[str] = Counter()
        for queue in conn.scan_iter(queue_key("*")):
            copies.update(entry_id(entry) for entry in conn.lrange(queue, 0, -1))
        for state in conn.scan_iter(state_key("*")):
            leased = [v for f, v in conn.hgetall(state).items() if f.isdigit()]
            copies.update(entry_id(entry) for entry in leased)
        return copies


def assert_each_acknowledged_message_held_once(cluster: LocalCluster, acknowledged: Iterable[str],
                                               shard_id: str = "s0") -> Counter[str]:  # fmt: skip
    """The ledger check: the shard's current primary (its replicas in sync with it) holds every
    acknowledged id exactly once, and no id twice."""
    primary = node_of(cluster, current_topology(cluster).shard(shard_id).primary.name)
    held = held_ids(primary)
    lost = sorted(set(acknowledged) - set(held))
    copies = sorted(i for i, n in held.items() if n > 1)
    assert lost == [], f"acknowledged and not held by {primary.name}: {lost[:10]}"
    assert copies == [], f"held twice by {primary.name}: {copies[:10]}"
    return held


def drain(cluster: LocalCluster, shard_id: str = "s0", timeout: float = 20) -> Counter[str]:
    """Lease everything the shard holds from its current primary (long leases, never acked):
    each id as often as a consumer would get it."""
    primary = node_of(cluster, current_topology(cluster).shard(shard_id).primary.name)

    async def lease_all() -> Counter[str]:
        from ratequeue.shard import ShardQueue  # the queue's own dequeue, on one node

        async with aioredis.Redis(host=primary.host, port=primary.port) as conn:
            queue = ShardQueue(shard_id, conn)
            delivered: Counter[str] = Counter()
            deadline = time.monotonic() + timeout
            while True:
                delivered.update(m.id for m in await queue.dequeue(1000, 600_000))
                stats = await queue.stats()
                if stats.messages == stats.leased:
                    return delivered
                if time.monotonic() > deadline:
                    raise AssertionError(f"{stats.messages - stats.leased} messages never due")
                await asyncio.sleep(0.02)

    return asyncio.run(lease_all())


# -- failover by the real steps -----------------------------------------------------------------


def failover_definition() -> WorkflowDefinition:
    raw = yaml.safe_load(SHIPPED_FAILOVER.read_text())
    raw["steps"] = [s for s in raw["steps"] if s["name"] in FAILOVER_STEPS]
    for s in raw["steps"]:
        s["needs"] = [n for n in s.get("needs", []) if n in FAILOVER_STEPS]
    return parse_workflow(yaml.safe_dump(raw), "ratequeue_failover.yaml (up to publish)")


def fail_over(cluster: LocalCluster, shard_id: str = "s0", *, min_replicas: int = 1) -> Shard:
    """Fail the shard over from its listed primary by the workflow's own steps; returns the shard
    as published. Fails if the workflow escalates."""
    return fail_over_recorded(cluster, shard_id, min_replicas=min_replicas)[0]


def fail_over_recorded(
    cluster: LocalCluster, shard_id: str = "s0", *, min_replicas: int = 1
) -> tuple[Shard, WorkflowRecord]:
    """`fail_over`, also returning the workflow's record (when each step ran)."""
    definition = failover_definition()
    failed = current_topology(cluster).shard(shard_id)

    async def run() -> WorkflowRecord:
        async with opened_coordination_store(store_address_of(cluster)) as store:
            engine = WorkflowEngine(StepEnvironment(store=store, node_id="test"),
                                    {definition.name: definition})  # fmt: skip
            started = await engine.start(definition.name, {
                "shard": shard_id, "failed_primary": failed.primary.name,
                "failed_shard_epoch": failed.epoch, "min_replicas": min_replicas,
            })  # fmt: skip
            await asyncio.wait_for(engine.wait(started.id), timeout=60)
            record = await store.workflows.load(started.id)
            await engine.stop()
            assert record is not None
            return record

    record = asyncio.run(run())
    failures = {n: s.error for n, s in record.steps.items() if s.status != "succeeded"}
    assert record.status == "succeeded", f"the failover escalated: {failures}"
    return current_topology(cluster).shard(shard_id), record


def blocked_clients(node: ShardNode) -> int:
    """Clients blocked on the node (a `WAIT` waiting for replicas is one)."""
    with redis.Redis(host=node.host, port=node.port, socket_timeout=2) as conn:
        return int(conn.info("clients")["blocked_clients"])


def enqueues_answered(api: str) -> int:
    """How many enqueue requests the API instance has finished handling, by its own metrics
    (every outcome, a 201 or a refusal, is counted when the handler returns)."""
    text = httpx.get(f"{api}/metrics", timeout=10).text
    return int(sum(value for (name, _), value in metric_samples(text).items()
                   if name == "ratequeue_enqueue_total"))  # fmt: skip


class Flood:
    """Many enqueues at once, each sent once, from one event loop on a thread of its own (a
    thread per request cannot hold thousands open): to fill an API instance's backlog."""

    def __init__(self, api: str, wave: list[tuple[str, str]], timeout: float = 60) -> None:
        self.api = api
        self.wave = wave
        self.timeout = timeout
        self.answers: dict[str, Answer] = {}
        self._thread = threading.Thread(target=lambda: asyncio.run(self._send()), daemon=True)

    async def _send(self) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=self.api, timeout=self.timeout,
                                     limits=limits) as http:  # fmt: skip

            async def one(number: str, message_id: str) -> None:
                try:
                    body = {"id": message_id, "body": {"id": message_id}}
                    response = await http.post(f"/v1/numbers/{number}/messages", json=body)
                    answer = response.json()
                    code = answer["error"]["code"] if response.status_code != 201 else None
                    status: int | None = response.status_code
                except httpx.HTTPError:
                    status, code = None, None
                self.answers[message_id] = Answer(message_id, status, time.time(), code=code)

            await asyncio.gather(*(one(number, message_id) for number, message_id in self.wave))

    def start(self) -> Flood:
        self._thread.start()
        return self

    def wait(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), (
            f"{len(self.wave) - len(self.answers)} requests unanswered after {timeout:g} s"
        )

    def with_code(self, code: str) -> set[str]:
        return {i for i, answer in list(self.answers.items()) if answer.code == code}


def rejoin(cluster: LocalCluster, name: str, shard_id: str = "s0", min_replicas: int = 1) -> None:
    """List a node held for forensics (parked by a failover's fence) again as a replica of the
    shard's primary and attach it, as the shard keeper does for a node that came back: emptied
    first, listed, attached, in sync, and the primary's write quorum raised again."""
    node = node_of(cluster, name)

    async def run() -> None:
        async with (
            opened_coordination_store(store_address_of(cluster)) as coordination,
            aioredis.Redis(host=node.host, port=node.port) as conn,
        ):
            await membership.empty_parked(conn)
            store = coordination.topology
            current = await store.load()
            assert current is not None
            shard = current.shard(shard_id)
            held = next(n for n in shard.forensics if n.name == name)
            listed = shard.model_copy(update={
                "forensics": [n for n in shard.forensics if n.name != name],
                "replicas": [*shard.replicas, held.node()],
            })  # fmt: skip
            await store.compare_and_set(current.epoch, current.next_with(listed))
            async with aioredis.Redis(host=shard.primary.host, port=shard.primary.port) as primary:
                await membership.attach(conn, shard.primary)
                await membership.wait_in_sync(primary, conn, timeout=15)
                quorum = membership.required_replicas(min_replicas, len(listed.replicas))
                for setting, value in membership.write_quorum(quorum).items():
                    await primary.config_set(setting, value)

    asyncio.run(run())
