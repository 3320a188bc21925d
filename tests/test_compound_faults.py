"""The compound fault schedules that once lost or stranded acknowledged messages
(`../shared/findings/compound-faults-2026-12.md`, issue "Zero loss has two holes"), on the
embedded testbed with an independent ledger through the HTTP API. Each runs once in CI (`make
test`). The races they provoke depend on timing, so before a change to failover or membership
run them repeatedly by hand:
`RATEQUEUE_COMPOUND_RUNS=5 .venv/bin/pytest tests/test_compound_faults.py`.

1. A lagging replica, then a second kill: R2's replication is cut while it stays reachable; P
   keeps acknowledging through R1; P is killed, R1 promoted; R1 is killed at the moment it is
   promoted, while its replacement is being provisioned, or right after the replacement is
   listed; R2's link heals. Either a replica that holds every acknowledged write is promoted, or
   the controllers refuse (nothing listed holds what R1 held) and R1, restarted, is appointed
   again. Nothing acknowledged is lost or left stranded.
2. A stale API, then the old pair restarts: a second API instance is cut off from the control
   store and keeps its cached topology; the shard fails over; the old primary and a replica
   restart with their boot arguments, in either order. They boot parked, so the stale API gets
   no acknowledgement from them, and every acknowledgement it did get is delivered.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from chaos.faults.base import NodeTarget
from chaos.faults.local.backend import LocalFaultBackend
from chaos.faults.local.iptables import iptables_unavailable_reason
from chaos.load import BackgroundLoad, LoadProfile
from chaos.testbed import TestbedNode, TestbedState, _terminate, running_testbed, start_api
from ratequeue import membership
from ratequeue.errors import NoSafeCandidate
from ratequeue.topology import NodeRef, Shard
from tests.e2e.support import (
    LOAD,
    control_topology,
    lazarus_events,
    restart_with_boot_arguments,
    role,
    send,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        iptables_unavailable_reason() is not None,
        reason=f"needs iptables: {iptables_unavailable_reason()}",
    ),
]


def compound_runs() -> range:
    """Once each in CI (its time budget); more by hand (the module docstring). A value that is
    not a whole number of at least 1 is refused by name: 0 would skip every schedule silently."""
    text = os.environ.get("RATEQUEUE_COMPOUND_RUNS", "1")
    if not text.strip().isdigit() or int(text) < 1:
        raise pytest.UsageError(f"RATEQUEUE_COMPOUND_RUNS={text!r}: expected a whole number >= 1")
    return range(int(text))


RUNS = compound_runs()


@pytest.fixture
def testbed(tmp_path: Path) -> Iterator[TestbedState]:
    with running_testbed(tmp_path / "tb", shards=1, replicas=2) as state:
        yield state


@pytest.fixture
def faults() -> Iterator[LocalFaultBackend]:
    backend = LocalFaultBackend()
    injected: list = []
    backend_inject = backend.inject

    def inject(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        fault = backend_inject(*args, **kwargs)  # type: ignore[arg-type]
        injected.append(fault)
        return fault

    backend.inject = inject  # type: ignore[method-assign]
    yield backend
    for fault in reversed(injected):
        with contextlib.suppress(Exception):
            fault.rollback()


def target(node: TestbedNode, peer_host: str | None = "127.0.0.2") -> NodeTarget:
    return NodeTarget(
        name=node.name,
        role=node.role,
        shard=node.shard,
        host=node.host,
        port=node.port,
        peer_host=peer_host,
        pid=node.pid,
    )


def ref(node: TestbedNode) -> NodeRef:
    return NodeRef(name=node.name, host=node.host, port=node.port, peer_host="127.0.0.2")


def replication(node: TestbedNode | NodeRef) -> dict:
    with redis.Redis(host=node.host, port=node.port, socket_timeout=1) as conn:
        return conn.info("replication")


def escalations_since(state: TestbedState, moment: float) -> list[str]:
    """The reasons of the events received since `moment` that the controllers escalated."""
    return [
        e["reason"]
        for e in lazarus_events(state, since=moment)
        if e["outcome"] == "escalated" and e["received_at"] >= moment
    ]


def shard_after(state: TestbedState, primary: str) -> Shard | None:
    """The shard once its primary is no longer `primary`."""
    shard = control_topology(state).shard("s0")
    return shard if shard.primary.name != primary else None


# The testbed's write quorum k (`running_testbed`'s default `ack="wait"`), which the controllers
# were given too.
MIN_REPLICAS = 1


def position(node: NodeRef) -> membership.ReplicaPosition:
    """A replica's position as the failover reads it: replication stream, offset, enqueues."""
    with redis.Redis(host=node.host, port=node.port, socket_timeout=1) as conn:
        enqueues = int(conn.get(membership.BARRIER_KEY) or 0)
        return membership.position_of(node.name, conn.info("replication"), enqueues=enqueues)


def appointment(state: TestbedState, old_primary: str, timeout: float) -> Shard | None:
    """The shard once the topology names a primary other than `old_primary`; None if not within
    `timeout`. The new primary's appointment is published even if it died after its promotion
    (`publish_topology` follows the write-quorum wait, bounded by `WRITABLE_WAIT_SECONDS` + 0.1 s,
    and `repoint_replicas`), but not if it died before its promotion was complete."""
    with contextlib.suppress(AssertionError):
        return wait_for(
            f"a primary other than {old_primary} published",
            lambda: shard_after(state, old_primary),
            timeout=timeout,
        )
    return None


def expected_after_second_death(
    state: TestbedState, primary: str, old_primary: str, *, appointment_required: bool
) -> tuple[str | None, str]:
    """What the controllers' own rule (`membership.most_complete_replica`) allows once `primary`,
    appointed after `old_primary`, died: "failed over" or "escalated", decided on the positions
    of the replicas listed with `primary`'s appointment, each read every 0.1 s for half a second
    (a replica may still be applying what `primary` sent; nothing moves them after that), the
    last read of each counting. None: either outcome is right (`primary` was killed before its
    appointment was published, which only `appointment_required` False allows, or a failover
    happened before the reads). Also what was read, for a failure message."""
    shard = appointment(state, old_primary, timeout=5)
    if shard is None:
        assert not appointment_required, f"{primary}'s appointment not published within 5 s"
        return None, f"{primary}'s appointment was not published"
    if shard.primary.name != primary:
        return None, f"failed over to {shard.primary.name} already"
    positions: dict[str, membership.ReplicaPosition] = {}
    errors: dict[str, str] = {}
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        # The listing as the failover will read it: a replacement may be listed meanwhile.
        shard = control_topology(state).shard("s0")
        if shard.primary.name != primary:
            # A failover during the reads repoints the replicas: what they read next is not
            # what R1 left, and the controllers' rule has already allowed it.
            return None, f"failed over to {shard.primary.name} while the replicas were read"
        for node in shard.replicas:
            try:
                positions[node.name] = position(node)
            except (redis.RedisError, OSError) as error:
                errors[node.name] = str(error)
        time.sleep(0.1)
    listed = {n.name for n in shard.replicas}
    unread = sorted(listed - positions.keys())
    assert not unread, f"listed replicas never read: {unread} ({errors})"
    counted = [p for p in positions.values() if p.name in listed]
    read = ", ".join(f"{p.name}: {p.replid[:8]}… at {p.offset}, {p.enqueues} enqueues"
                     for p in counted)  # fmt: skip
    seen = f"{primary} appointed at {shard.lineage}, {shard.appointed_enqueues} enqueues; {read}"
    try:
        membership.most_complete_replica(
            counted,
            shard.lineage,
            listed=len(shard.replicas),
            min_replicas=MIN_REPLICAS,
            appointed_enqueues=shard.appointed_enqueues,
        )
    except NoSafeCandidate as refusal:
        return "escalated", f"{seen}; the rule refuses: {refusal}"
    return "failed over", f"{seen}; the rule allows a failover"


def drain_everything(api: str, seconds: float = 20) -> set[str]:
    """Dequeue and ack whatever is left, until a few empty answers in a row."""
    delivered: set[str] = set()
    empty_in_a_row = 0
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=api, timeout=5) as http:
        while empty_in_a_row < 5 and time.monotonic() < deadline:
            answer = http.post("/v1/messages:dequeue", json={"max": 100, "lease_seconds": 30})
            messages = answer.json().get("messages", []) if answer.status_code == 200 else []
            if not messages:
                empty_in_a_row += 1
                time.sleep(0.5)
                continue
            empty_in_a_row = 0
            delivered |= {m["id"] for m in messages}
            http.post("/v1/messages:ack", json={"receipts": [m["receipt"] for m in messages]})
    return delivered


# -- 1. a replica that acknowledges before it is a member -------------------------------------


def _replacement_started(directory: Path) -> bool:
    """The actuator has started a replacement: the failover workflow is in its provisioning step
    (listing and attaching follow within milliseconds)."""
    provisioned = directory / "redis" / "provisioned.jsonl"
    return provisioned.exists() and '"replica"' in provisioned.read_text()


def _replacement_listed(state: TestbedState) -> bool:
    return any("-e" in r.name for r in control_topology(state).shard("s0").replicas)


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("second_kill", ["at_promotion", "during_provisioning", "after_listing"])
def test_a_lagging_replica_then_a_second_kill_loses_and_strands_nothing(
    testbed: TestbedState, faults: LocalFaultBackend, tmp_path: Path, second_kill: str, run: int
) -> None:
    directory = tmp_path / "tb"
    primary, r1, r2 = (testbed.node(n) for n in ("s0-primary", "s0-replica1", "s0-replica2"))
    load = BackgroundLoad(testbed.api, LoadProfile(**LOAD), drain_timeout=90).start()
    try:
        time.sleep(1.5)
        cut = faults.inject("blackhole", target(primary), from_target=target(r2))
        wait_for(
            "R2's link to P to drop",
            lambda: replication(r2)["master_link_status"] != "up",
            timeout=10,
        )
        time.sleep(2)  # P acknowledges through R1 alone; R2 falls behind
        killed_at = time.time()
        send(testbed, "s0-primary", signal.SIGKILL)
        if second_kill == "at_promotion":
            wait_for("R1 promoted", lambda: role(ref(r1)) == "master", timeout=20, interval=0.005)
        elif second_kill == "during_provisioning":
            wait_for(
                "a replacement started",
                lambda: _replacement_started(directory),
                timeout=20,
                interval=0.005,
            )
        else:
            wait_for(
                "a replacement listed",
                lambda: _replacement_listed(testbed),
                timeout=30,
                interval=0.005,
            )
        os.kill(r1.pid, signal.SIGKILL)
        second_at = time.time()
        expected, evidence = expected_after_second_death(
            testbed,
            "s0-replica1",
            "s0-primary",
            appointment_required=second_kill != "at_promotion",
        )
        time.sleep(1.5)
        cut.rollback()  # R2's replication comes back a few seconds later

        def settled() -> str | None:
            shard = control_topology(testbed).shard("s0")
            if shard.primary.name not in {"s0-primary", "s0-replica1"}:
                return "failed over" if role(shard.primary) == "master" else None
            return "escalated" if escalations_since(testbed, second_at) else None

        outcome = wait_for("a second failover or a refusal", settled, timeout=60, interval=0.2)
        if expected is not None:
            # The controllers' rule on what the listed replicas held when R1 died: a failover
            # when one of N - k + 1 comparable replicas holds every write R1 acknowledged (no
            # person needed), else a refusal (R2 still catching up from R1, whose promotion is
            # published after at most WRITABLE_WAIT_SECONDS whether or not R2 has synced; the
            # replacement not synced yet).
            assert outcome == expected, (
                f"{second_kill}: {outcome} where the rule says {expected} ({evidence}): "
                f"{escalations_since(testbed, second_at)}"
            )
        if outcome == "escalated":
            # Nothing listed holds what R1 held. R1 restarted (its data is on its disk) is
            # appointed again: by the shard keeper if its promotion was published, else by the
            # next failover decision, which compares it by the enqueues it applied (the sensors
            # report a primary that stays down every 30 s).
            restart_with_boot_arguments(directory, r1)
            wait_for(
                "R1 appointed again",
                lambda: (
                    control_topology(testbed).shard("s0").primary.name == "s0-replica1"
                    and role(ref(r1)) == "master"
                ),
                timeout=60,
            )
        wait_for(
            "an acknowledged write after the second kill",
            lambda: load.ledger.first_ack_after(second_at + 0.5, "s0"),
            timeout=60,
        )
    finally:
        ledger = load.join(timeout=150)
    assert len(ledger.acknowledged) > 50
    assert ledger.lost() == set(), f"{second_kill}: lost {sorted(ledger.lost())[:10]}"
    answering = [n.name for n in _shard_nodes(testbed) if role(n) == "master"]
    assert answering == [control_topology(testbed).shard("s0").primary.name]
    assert killed_at < second_at


def _shard_nodes(state: TestbedState) -> list[NodeRef]:
    shard = control_topology(state).shard("s0")
    return [shard.primary, *shard.replicas, *shard.forensics]


# -- 2. an old pair that restarts writable ------------------------------------------------------


class StaleProducer:
    """Enqueues through one API instance on numbers of its own, keeping the ids it got 201 for."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.acknowledged: dict[str, float] = {}
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        sequence = 0
        with httpx.Client(base_url=self.api, timeout=5) as http:
            while not self._stop.is_set():
                sequence += 1
                message_id = f"stale-{sequence}"
                number = f"2{sequence % 10:04d}"  # short codes: they drain at 100/s
                with contextlib.suppress(httpx.HTTPError):
                    answer = http.post(
                        f"/v1/numbers/{number}/messages",
                        json={"id": message_id, "body": {"n": sequence}},
                    )
                    if answer.status_code == 201:
                        self.acknowledged[message_id] = time.time()
                    else:
                        self.refused += 1
                time.sleep(0.02)

    def start(self) -> StaleProducer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("first_back", ["old_primary", "replica"])
def test_an_old_pair_restarted_with_its_boot_arguments_acknowledges_nothing(
    testbed: TestbedState,
    faults: LocalFaultBackend,
    tmp_path: Path,
    first_back: str,
    run: int,
) -> None:
    directory = tmp_path / "tb"
    primary = testbed.node("s0-primary")
    control = TestbedNode(
        name="control",
        role="control",
        host="127.0.0.1",
        port=int(testbed.control.rsplit(":", 1)[1].split("/")[0]),
        pid=0,
    )
    # The stale API reads the map where the testbed keeps it, and is cut off from there: the
    # control Redis, or every etcd member (the suite's switch, tests/suite_control.py).
    store_nodes = [control]
    store_args: list[str] = []
    if testbed.etcd_endpoints is not None:
        store_nodes = [node for node in testbed.nodes if node.role == "etcd"]
        store_args = ["--topology-backend", "etcd", "--etcd-endpoints", testbed.etcd_endpoints]
    stale_api = start_api(directory, testbed.control, ["--retry-deadline", "0.5", *store_args])
    load = BackgroundLoad(testbed.api, LoadProfile(**LOAD), drain_timeout=90).start()
    stale = StaleProducer(f"http://{stale_api.host}:{stale_api.port}").start()
    try:
        time.sleep(1.5)
        # One fault over every store port: a process is cut off by one fault from it at a time
        # (a second would move it out of the first's cgroup; the backend refuses that). One
        # fault has one peer host: the testbed's etcd members all listen on 127.0.0.1.
        assert {node.host for node in store_nodes} == {"127.0.0.1"}
        faults.inject(
            "blackhole",
            target(store_nodes[0], peer_host="127.0.0.1"),
            ports=[node.port for node in store_nodes],
            from_target=target(stale_api),
            from_expect="ratequeue",
        )
        time.sleep(2.5)  # the stale API keeps its cached topology
        send(testbed, "s0-primary", signal.SIGKILL)
        wait_for(
            "s0 to fail over",
            lambda: control_topology(testbed).shard("s0").primary.name != "s0-primary",
        )
        failed_over_at = time.time()
        # The old pair: the old primary and the replica that is still a replica now.
        follower = testbed.node(
            next(
                r.name
                for r in control_topology(testbed).shard("s0").replicas
                if r.name.startswith("s0-replica") and "-e" not in r.name
            )
        )
        order = ["s0-primary", follower.name]
        if first_back == "replica":
            order.reverse()
        for name in order:
            if name == follower.name:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(follower.pid, signal.SIGKILL)
                time.sleep(0.2)
            restart_with_boot_arguments(directory, testbed.node(name))
            time.sleep(0.5)
        time.sleep(4)  # the stale API keeps writing at its old epoch
        acknowledged_late = [i for i, at in stale.acknowledged.items() if at > failed_over_at + 1]
        wait_for(
            "the restarted replica to rejoin the new primary",
            lambda: (
                replication(follower).get("master_link_status") == "up"
                and replication(follower).get("master_port")
                == control_topology(testbed).shard("s0").primary.port
            ),
            timeout=20,
        )
    finally:
        stale.stop()
        ledger = load.join(timeout=150)
        _terminate(stale_api)
    delivered = ledger.delivered_ids | drain_everything(testbed.api)
    assert ledger.lost() == set()
    assert set(stale.acknowledged) - delivered == set()
    assert acknowledged_late == [], "a node that is not the current primary acknowledged"
    assert stale.refused > 0
    shard = control_topology(testbed).shard("s0")
    assert role(NodeRef(name="p", host=primary.host, port=primary.port)) == "slave"
    assert [n.name for n in _shard_nodes(testbed) if role(n) == "master"] == [shard.primary.name]
