"""The steady-state probes a run checks before the fault and after the recovery (the API is
healthy, every controller answers, every shard acknowledges a write, one primary per shard,
every listed replica follows its primary), and which nodes answer as primaries. Not for: the
fault or the hypotheses.
"""

from __future__ import annotations

import threading
import time

import httpx
import redis

from chaos.errors import TargetError
from chaos.experiments import Probe
from chaos.journal import ProbeOutcome, Say
from chaos.load import LoadProfile, number_pool
from chaos.targets import Deployment
from ratequeue.membership import points_at
from ratequeue.slots import slot_for
from ratequeue.topology import Topology

# Probes of the Lazarus controllers, which a Sentinel-managed deployment does not run.
LAZARUS_PROBES = frozenset({"controllers_healthy"})


class SteadyStateProbes:
    def __init__(
        self, deployment: Deployment, http: httpx.Client, stop: threading.Event, say: Say
    ) -> None:
        self.deployment = deployment
        self._http = http
        self.stop = stop
        self.say = say

    def check(self, probes: list[Probe]) -> list[ProbeOutcome]:
        """Each probe, retried until it holds or its timeout passes."""
        outcomes = []
        for probe in probes:
            if probe.probe in LAZARUS_PROBES and self.deployment.failover == "sentinel":
                reason = "no Lazarus controllers: failover is sentinel"
                outcomes.append(ProbeOutcome(probe=probe.probe, ok=False, detail="",
                                             skipped=reason))  # fmt: skip
                self.say(f"steady state: {probe.probe}: SKIPPED ({reason})")
                continue
            deadline = time.monotonic() + probe.timeout
            while True:
                ok, detail = self.probe(probe.probe)
                if ok or time.monotonic() > deadline or self.stop.is_set():
                    break
                time.sleep(0.2)
            outcomes.append(ProbeOutcome(probe=probe.probe, ok=ok, detail=detail))
            self.say(f"steady state: {probe.probe}: {'ok' if ok else 'FAILED'} ({detail})")
        return outcomes

    def probe(self, name: str) -> tuple[bool, str]:
        try:
            if name == "api_healthy":
                answer = self._http.get(f"{self.deployment.api}/healthz")
                failing = [c["name"] for c in answer.json().get("checks", []) if not c["ok"]]
                return answer.status_code == 200 and not failing, (
                    f"failing checks: {failing}" if failing else "all checks pass"
                )
            if name == "controllers_healthy":
                urls = self.deployment.controller_urls()
                healthy = [u for u in urls if self._http.get(f"{u}/healthz").status_code == 200]
                return len(healthy) == len(urls) and bool(urls), f"{len(healthy)}/{len(urls)}"
            if name == "every_shard_writable":
                return self.every_shard_writable()
            if name == "replicas_attached":
                detached = replicas_not_following(self.deployment.topology())
                return not detached, f"not following: {detached}" if detached else "all follow"
            if name == "one_primary_per_shard":
                counts = primaries_answering(self.deployment.topology())
                wrong = {s: n for s, n in counts.items() if len(n) != 1}
                return not wrong, f"unexpected: {wrong}" if wrong else "one each"
        except (httpx.HTTPError, redis.RedisError, ValueError, TargetError) as error:
            return False, str(error)
        return False, f"unknown probe {name}"

    def every_shard_writable(self) -> tuple[bool, str]:
        topology = self.deployment.topology()
        numbers = number_pool(LoadProfile(numbers=500))
        missing = []
        for shard in topology.shards:
            number = next(n for n in numbers if topology.shard_for_slot(slot_for(n)) == shard)
            answer = self._http.post(
                f"{self.deployment.api}/v1/numbers/{number}/messages",
                json={"id": f"probe-{time.time_ns()}", "body": {"text": "steady-state probe"}},
            )
            if answer.status_code != 201:
                missing.append(f"{shard.id}: {answer.status_code}")
        return not missing, f"refused: {missing}" if missing else "every shard acknowledged"


def primaries_answering(topology: Topology) -> dict[str, list[str]]:
    """Per shard, the nodes (primary, replicas, held former primaries) answering as masters."""
    answer = {}
    for shard in topology.shards:
        masters = []
        for node in [shard.primary, *shard.replicas, *shard.forensics]:
            try:
                with redis.Redis(
                    host=node.host, port=node.port, socket_timeout=1, socket_connect_timeout=1
                ) as conn:
                    if conn.info("replication")["role"] == "master":
                        masters.append(node.name)
            except (redis.RedisError, OSError):
                continue
        answer[shard.id] = masters
    return answer


def replicas_not_following(topology: Topology) -> list[str]:
    """The listed replicas that do not answer, or do not follow their shard's primary (at its
    peer address) over a link that is up: what the shard keeper puts right after a restart."""
    wrong = []
    for shard in topology.shards:
        primary = shard.primary
        for node in shard.replicas:
            try:
                with redis.Redis(
                    host=node.host, port=node.port, socket_timeout=1, socket_connect_timeout=1
                ) as conn:
                    info = conn.info("replication")
            except (redis.RedisError, OSError):
                wrong.append(f"{node.name}: no answer")
                continue
            primary_host = primary.peer_host or primary.host
            if not points_at(info, primary_host, primary.port):
                leader = f"{info.get('master_host')}:{info.get('master_port')}"
                wrong.append(f"{node.name}: follows {leader}")
            elif info.get("master_link_status") != "up":
                wrong.append(f"{node.name}: link {info.get('master_link_status')}")
    return wrong
