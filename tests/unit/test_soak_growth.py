"""The soak's growth judge: a control store whose keys without expiry keep rising from cycle to
cycle fails it (by family, and in bytes), a flat one passes, and what expires or is capped by its
writer is left out of the census.

Not for: the soak's cycles (tests/test_staging_soak.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from chaos.soak_growth import Census, judge_growth, key_family, take_census
from ratequeue.local_cluster import start_node


def _series(workflows: list[int], unbounded: list[int]) -> list[Census]:
    return [
        Census(used_memory=1 << 20, unbounded_bytes=b, families={"lz:wf:*": w, "rq:topology": 1})
        for w, b in zip(workflows, unbounded, strict=True)
    ]


def test_workflow_records_that_pile_up_a_failover_at_a_time_fail_the_judge() -> None:
    verdict = judge_growth(_series([2, 4, 4, 6, 8, 8, 10], [9000] * 7))
    assert verdict.judged
    [miss] = verdict.misses
    assert miss.startswith("lz:wf:*: ") and "(4 -> 10 over 6 cycles)" in miss


def test_bytes_that_keep_rising_fail_the_judge() -> None:
    verdict = judge_growth(_series([2] * 7, [9000 + 3000 * c for c in range(7)]))
    [miss] = verdict.misses
    assert miss.startswith("control store keys without expiry grow 3000 B a cycle")


def test_a_flat_store_with_noise_and_a_first_cycle_that_sets_things_up_passes() -> None:
    # The first cycle makes the counters and the first records; later ones reuse them.
    flat_bytes = [4000, 9000, 9100, 8900, 9050, 9000, 9120]
    verdict = judge_growth(_series([0, 3, 3, 2, 3, 3, 3], flat_bytes))
    assert verdict.judged and verdict.misses == []
    assert abs(verdict.unbounded_bytes_per_cycle) < 100


def test_six_cycles_are_not_judged_and_say_so() -> None:
    verdict = judge_growth(_series([2, 4, 6, 8, 10, 12], [1, 2, 3, 4, 5, 6]))
    assert not verdict.judged and verdict.misses == []
    assert verdict.describe().startswith("not judged")


def test_a_key_family_reads_every_part_with_a_digit_as_an_id() -> None:
    assert key_family("lz:wf:0d9fa1e2:history") == "lz:wf:*:history"
    assert key_family("lz:lb:api") == "lz:lb:api"


@pytest.fixture
def control(tmp_path: Path) -> Iterator[redis.Redis]:
    node = start_node("control", "control", None, tmp_path)
    connection = redis.Redis(host=node.host, port=node.port)
    yield connection
    connection.close()
    node.stop()


def test_the_census_counts_only_keys_nothing_bounds(control: redis.Redis) -> None:
    control.set("lz:wf:wf-1", "x" * 100)
    control.set("lz:wf:wf-2", "x" * 100)
    control.set("lz:wf:wf-3", "x" * 100, ex=3600)  # a finished one: expires
    control.xadd("lz:escalations", {"event_id": "e1"}, maxlen=10000)  # capped by its writer
    census = take_census(control)
    assert census.families == {"lz:wf:*": 2}
    assert 200 < census.unbounded_bytes < 1000


def _keys(series: list[int]) -> list[Census]:
    return _series(series, [9000] * len(series))


def test_a_key_leaked_every_other_cycle_fails_the_judge() -> None:
    # One key a failover, a failover every other cycle: a slope of exactly 0.5.
    verdict = judge_growth(_keys([math.ceil(c / 2) for c in range(1, 8)]))
    assert verdict.judged and [m.split(":")[0:3] for m in verdict.misses] == [["lz", "wf", "*"]]


def test_a_key_leaked_every_third_cycle_fails_the_judge() -> None:
    verdict = judge_growth(_keys([c // 3 for c in range(1, 11)]))
    [miss] = verdict.misses
    assert miss.startswith("lz:wf:*: ") and "no plateau" in miss


def test_a_hundred_bytes_leaked_every_other_cycle_fail_the_judge() -> None:
    # Within a few cycles such a leak hides in one allocator step's allowance (BYTES_NOISE);
    # over a soak's length it cannot.
    leaking = [9000 + 100 * math.ceil(c / 2) for c in range(1, 26)]
    verdict = judge_growth(_series([3] * 25, leaking))
    [miss] = verdict.misses
    assert miss.startswith("control store keys without expiry grow")


def test_a_family_that_fills_up_early_and_stays_passes() -> None:
    # Created over the first cycles (a record per shard), then reused: a plateau.
    verdict = judge_growth(_series([0, 1, 2, 3, 3, 3, 2, 3, 3, 3], [9000] * 10))
    assert verdict.judged and verdict.misses == []


def test_a_topology_that_holds_and_releases_a_node_in_turn_passes() -> None:
    # rq:topology's MEMORY USAGE after each cycle of a staging soak: up while a deposed primary
    # is held for forensics, down once it is released; one step of the allocator, no growth.
    swinging = [1848, 1592, 1848, 1848, 1592, 1848, 1592, 1848, 1848, 1592, 1848, 1592]
    verdicts = [judge_growth(_series([1] * n, swinging[:n])) for n in range(7, len(swinging) + 1)]
    assert all(v.judged and v.misses == [] for v in verdicts)


def test_a_topology_that_swings_and_keeps_a_node_every_other_cycle_fails_the_judge() -> None:
    swinging = [1848, 1592, 1848, 1848, 1592, 1848, 1592, 1848, 1848, 1592, 1848, 1592]
    leaking = [size + 256 * (c // 2) for c, size in enumerate(swinging)]
    verdict = judge_growth(_series([1] * len(leaking), leaking))
    [miss] = verdict.misses
    assert miss.startswith("control store keys without expiry grow")


def test_a_topology_that_steps_up_one_size_class_after_the_first_third_passes() -> None:
    # rq:topology's MEMORY USAGE in a staging soak: low for a few cycles, then one allocator size
    # class higher for good (its length crosses a class boundary), at a cycle that varies.
    stepped = [1904] + [1648] * 3 + [1904] * 8
    verdicts = [judge_growth(_series([1] * n, stepped[:n])) for n in range(7, len(stepped) + 1)]
    assert all(v.judged and v.misses == [] for v in verdicts), [v.misses for v in verdicts]


def test_fifty_bytes_leaked_every_cycle_fail_the_judge_over_a_long_soak() -> None:
    leaking = [1848 + 50 * cycle for cycle in range(25)]
    verdict = judge_growth(_series([1] * len(leaking), leaking))
    [miss] = verdict.misses
    assert "no plateau" in miss
