"""Whether the control store grows with the soak's cycles: a census of the store after each cycle,
and a judge that fits a slope over the cycles and fails a series that keeps rising.

What is counted is what nothing bounds: keys without an expiry, by family (`lz:wf:*`,
`lz:wf:*:history`, ...: a key's parts that hold a digit read as `*`), and the bytes those keys
take (`MEMORY USAGE`). A key with an expiry is bounded by its age (Redis removes it: a finished
workflow's record after `WORKFLOW_RETENTION_SECONDS`, an audit record after
`AUDIT_RETENTION_SECONDS`), and the keys in `CAPPED` are trimmed by their writers on every write;
both may grow during a soak and still be bounded, so they are left out of the slopes (their
bounds are the writers' contracts, tested with them). A series is judged over the censuses taken
after the first cycle (the first cycle creates what every later one reuses: counters, groups,
the first workflow), and only once there are `JUDGED_FROM_SAMPLES` of them (see there for why
six); with fewer, the judge says it did not.

A slope alone lets a slow leak through (one key a failover, a failover every other cycle, is a
slope of 0.5, and a family that empties and fills makes a short series' slope noisy), so each key
family must plateau: the highest count of the last third of the censuses no higher than the
highest of the first third, which a family that fills up early (a record per shard) meets and a
leak of any steady rate does not (what is capped by design is a single key, in `CAPPED`, or
expires: no family of keys without expiry grows to a cap); the bytes must rise
by at most their allowance a cycle and plateau too (the last third not wholly above the first
third by more than `BYTES_NOISE`: a re-encoded hash moves a little both ways, and the topology
steps up one allocator size class once; a leak keeps going up).

On etcd (`soak --control etcd`) the census takes both stores: the control Redis (the event
stream and the record log stay there) and etcd, where a key without a lease is what nothing
bounds (a lease is etcd's expiry: a finished workflow's record, a lock, a claim), counted by
family in the same way (`/lazarus/wf/*/record`), its bytes the key's and the value's length.
The sensor registry (`/lazarus/sensor/`, one key a sensor) is left out as its Redis hash is.

Not for: running the cycles (`chaos.soak`) or the shard checks.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis

from common.etcd_client import EtcdClient, EtcdClientSettings
from detection.streams import DEAD_LETTER_STREAM, EVENTS_STREAM
from lazarus_lite.coordination import etcd_keys, redis_keys

# Written with a cap on every write: the writer's contract bounds them, not the soak.
CAPPED: dict[str, str] = {
    EVENTS_STREAM: "XADD MAXLEN ~ 100000",
    DEAD_LETTER_STREAM: "XADD MAXLEN ~ 100000",
    "lz:escalations": "XADD MAXLEN ~ 10000",
    "lz:audit:index": "entries a retention older than the newest dropped on each save",
    # A field a replacement replica's sensor (a new name each failover): bounded by age, not by
    # the soak's cycles, as expiring keys are.
    redis_keys.SENSORS: "heartbeats older than SENSOR_HEARTBEAT_RETENTION removed on each read",
}
# The same on etcd, where the registry is a prefix of keys, one a sensor, not one hash.
CAPPED_ETCD_PREFIXES: dict[str, str] = {
    etcd_keys.SENSORS: "heartbeats older than SENSOR_HEARTBEAT_RETENTION removed on each read",
}
# Every key of the store on etcd: the coordination store's (`/lazarus/`) and the topology's
# (`/ratequeue/topology`).
ETCD_KEYSPACE = "/"
# Allowed byte growth a cycle (slope), beside the plateau.
BYTES_PER_CYCLE = 256.0
# How far the last third of the byte censuses may sit above the first third: re-encoding noise
# (64 B) and one allocator step of the topology's MEMORY USAGE (256 B at its ~1.6-1.9 KB), which
# the soaks' censuses show taken once, at a cycle that varies from soak to soak (1592 B for one
# to three cycles, then 1848 B for good, as its length crosses the 1,536 B size class): with 64
# alone a step that came after the first third failed a soak in which nothing grew. A steady
# leak still fails: it lifts the last third above the first by more than this within a few
# cycles (the tests: 50 B a cycle over 24 cycles), and its slope counts against BYTES_PER_CYCLE.
BYTES_NOISE = 64 + 256
# Censuses (after the first cycle) before the series is judged: six, so that each third holds
# two. What the soaks measured (runs 9 and 10 of 2026-12-03, and the censuses kept since): the
# only keys without expiry outside CAPPED are the topology (`rq:topology`, one key) and the lock
# token counter, and the topology's MEMORY USAGE steps by one allocator size class (256 B) early
# in a soak (see BYTES_NOISE). With thirds of one census that step failed cycles 4-6 of every
# soak (128, 77 and 51 B a cycle, "no plateau"), though nothing grew; a 30-cycle soak still
# judges 24 cycles.
JUDGED_FROM_SAMPLES = 6
_ID_PART = re.compile(r"\d")


def key_family(key: str, separator: str = ":") -> str:
    """`lz:wf:7f3a...:history` -> `lz:wf:*:history` (and, with separator `/`, etcd's
    `/lazarus/wf/7f3a.../record` -> `/lazarus/wf/*/record`): each part holding a digit is an id."""
    parts = key.split(separator)
    return separator.join("*" if _ID_PART.search(part) else part for part in parts)


@dataclass(frozen=True)
class Census:
    used_memory: int
    """INFO memory used_memory: shown, not judged (allocator and buffers move it)."""
    unbounded_bytes: int
    """MEMORY USAGE summed over the keys without an expiry that are not CAPPED."""
    families: dict[str, int] = field(default_factory=dict)
    """Key family -> keys without an expiry (CAPPED left out)."""
    family_bytes: dict[str, int] = field(default_factory=dict)
    """Key family -> the bytes of those keys (what `unbounded_bytes` is made of)."""


def take_census(control: redis.Redis) -> Census:
    keys = [k.decode() for k in control.scan_iter(count=1000)]
    pipe = control.pipeline(transaction=False)
    for key in keys:
        pipe.pttl(key)
        pipe.memory_usage(key)
    answers = pipe.execute()
    families: Counter[str] = Counter()
    family_bytes: Counter[str] = Counter()
    for index, key in enumerate(keys):
        ttl, size = answers[2 * index], answers[2 * index + 1]
        if ttl != -1 or key in CAPPED:  # expiring, capped, or gone since the scan (-2)
            continue
        families[key_family(key)] += 1
        family_bytes[key_family(key)] += int(size or 0)
    used = int(control.info("memory")["used_memory"])
    return Census(used_memory=used, unbounded_bytes=sum(family_bytes.values()),
                  families=dict(families), family_bytes=dict(family_bytes))  # fmt: skip


async def take_etcd_census(endpoints: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """The keys without a lease in etcd, by family, and their bytes (key and value): one range
    read of the whole keyspace at one revision."""
    families: Counter[str] = Counter()
    family_bytes: Counter[str] = Counter()
    async with EtcdClient(EtcdClientSettings(endpoints=endpoints, call_timeout=5.0)) as client:
        found = await client.get_prefix(ETCD_KEYSPACE)
    for kv in found.kvs:
        if kv.lease or kv.key.startswith(tuple(CAPPED_ETCD_PREFIXES)):
            continue
        family = key_family(kv.key, "/")
        families[family] += 1
        family_bytes[family] += len(kv.key.encode()) + len(kv.value)
    return dict(families), dict(family_bytes)


def with_etcd(census: Census, families: dict[str, int], family_bytes: dict[str, int]) -> Census:
    """The control Redis's census and etcd's together (their families never share a name: the
    Redis keys are `:`-separated, etcd's start with `/`); `used_memory` stays the Redis's."""
    return Census(
        used_memory=census.used_memory,
        unbounded_bytes=census.unbounded_bytes + sum(family_bytes.values()),
        families={**census.families, **families},
        family_bytes={**census.family_bytes, **family_bytes},
    )


def slope(values: Sequence[float]) -> float:
    """The least-squares slope of `values` over their index (growth a cycle)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    spread = sum((x - mean_x) ** 2 for x in range(n))
    return sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / spread


@dataclass(frozen=True)
class GrowthVerdict:
    judged: bool
    misses: list[str]
    unbounded_bytes_per_cycle: float

    def describe(self) -> str:
        if not self.judged:
            return f"not judged (needs {JUDGED_FROM_SAMPLES} cycles after the first)"
        return f"{self.unbounded_bytes_per_cycle:+.0f} B/cycle"


def judge_growth(
    after_each_cycle: Sequence[Census],
    *,
    bytes_per_cycle: float = BYTES_PER_CYCLE,
) -> GrowthVerdict:
    """Misses for the unbounded bytes (a slope above `bytes_per_cycle`, or no plateau) and for
    each key family without a plateau, over the censuses after the first cycle."""
    samples = list(after_each_cycle)[1:]
    if len(samples) < JUDGED_FROM_SAMPLES:
        return GrowthVerdict(judged=False, misses=[], unbounded_bytes_per_cycle=0.0)
    misses = []
    byte_series = [c.unbounded_bytes for c in samples]
    byte_slope = slope(byte_series)
    first, last = _thirds(byte_series)
    if byte_slope > bytes_per_cycle or min(last) > max(first) + BYTES_NOISE:
        misses.append(
            f"control store keys without expiry grow {byte_slope:.0f} B a cycle "
            f"(allowed {bytes_per_cycle:.0f}, and no plateau: the last third at least "
            f"{min(last)} B, the first at most {max(first)} B): {samples[0].unbounded_bytes} B -> "
            f"{samples[-1].unbounded_bytes} B over {len(samples)} cycles"
        )
    names = sorted({name for c in samples for name in c.families})
    for name in names:
        counts = [c.families.get(name, 0) for c in samples]
        first, last = _thirds(counts)
        if max(last) > max(first):
            misses.append(
                f"{name}: {slope(counts):.2f} keys without expiry more a cycle, no plateau "
                f"({counts[0]} -> {counts[-1]} over {len(samples)} cycles)"
            )
    return GrowthVerdict(judged=True, misses=misses, unbounded_bytes_per_cycle=byte_slope)


def _thirds(values: Sequence[int]) -> tuple[Sequence[int], Sequence[int]]:
    """The first and the last third of `values` (at least one value each)."""
    third = max(1, len(values) // 3)
    return values[:third], values[-third:]
