"""The soak's loop: a cycle that fails on the way (the Docker engine refusing for a moment) is a
failed cycle in the table, with its error, and the soak goes on to the next one; growth is
judged over the cycles that took a census; the settle reports the container count it judged.

Not for: a real soak (tests/test_staging_soak.py) or the growth judge's rules
(tests/unit/test_soak_growth.py).
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest

import chaos.soak as soak_module
from chaos.soak import CycleResult, Settled, StagingEndpoints, settle, soak
from chaos.soak_growth import Census


class QuietStaging:
    def __init__(self, *args: Any) -> None:
        self.engine = None

    def up(self) -> None: ...

    def down(self) -> None: ...


def _topology() -> SimpleNamespace:
    """What the loop reads of the topology: the shards' ids."""
    return SimpleNamespace(shards=[SimpleNamespace(id=f"s{i}") for i in range(3)])


def test_a_cycle_the_engine_fails_is_a_failed_cycle_and_the_soak_goes_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def run_cycle(cycle: int, *args: Any, **kwargs: Any) -> CycleResult:
        if cycle == 1:
            raise docker.errors.APIError("500 Server Error: engine busy")
        return CycleResult(cycle=cycle, fault="pause replica", shard="s1", verdict="passed",
                           acknowledged=10, lost=0, settled_seconds=1.0, shards="whole",
                           containers=12, container_bound=12, control_memory=1,
                           census=Census(used_memory=1, unbounded_bytes=100))  # fmt: skip

    monkeypatch.setattr(soak_module, "Staging", QuietStaging)
    monkeypatch.setattr(soak_module, "settle", lambda *a, **k: Settled(0.1, "whole"))
    monkeypatch.setattr(soak_module, "discover_nodes", lambda *a, **k: [])
    monkeypatch.setattr(StagingEndpoints, "target", lambda self: _Deployment())
    monkeypatch.setattr(soak_module, "run_cycle", run_cycle)
    said: list[str] = []
    results = soak(2, compose_files=[Path("docker-compose.yml")], scenarios=Path("scenarios"),
                   journal_dir=tmp_path, endpoints=StagingEndpoints(), bring_up=False,
                   take_down=False, gap_seconds=0, settle_seconds=1, growth_bytes_per_cycle=2048,
                   say=said.append, stop=threading.Event())  # fmt: skip
    assert [r.cycle for r in results] == [1, 2]
    assert not results[0].ok and results[0].verdict == "error"
    assert results[0].misses == ["the cycle failed: APIError: 500 Server Error: engine busy"]
    assert results[0].fault == "kill primary" and results[0].shard == "s0"
    assert results[1].ok and results[1].growth.startswith("not judged")


class _Deployment:
    etcd_endpoints = None  # a staging on Redis

    def topology(self) -> SimpleNamespace:
        return _topology()


def _soak_leaving(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, left: list[str], drained: list[str]
) -> list[CycleResult]:
    """Two passing cycles, the first leaving `left` undelivered; the final drain delivers
    `drained`."""

    def run_cycle(cycle: int, *args: Any, undelivered: Any, **kwargs: Any) -> CycleResult:
        if cycle == 1:
            undelivered.left_by(1, left)
        return CycleResult(cycle=cycle, fault="pause replica", shard="s1", verdict="passed",
                           acknowledged=10, lost=0, settled_seconds=1.0, shards="whole",
                           containers=12, container_bound=12, control_memory=1)  # fmt: skip

    def drain_leftovers(api: str, undelivered: Any, timeout: float) -> dict[int, int]:
        return undelivered.delivered(drained)

    monkeypatch.setattr(soak_module, "Staging", QuietStaging)
    monkeypatch.setattr(soak_module, "settle", lambda *a, **k: Settled(0.1, "whole"))
    monkeypatch.setattr(soak_module, "discover_nodes", lambda *a, **k: [])
    monkeypatch.setattr(StagingEndpoints, "target", lambda self: _FinalDrainDeployment())
    monkeypatch.setattr(soak_module, "run_cycle", run_cycle)
    monkeypatch.setattr(soak_module, "drain_leftovers", drain_leftovers)
    return soak(2, compose_files=[Path("docker-compose.yml")], scenarios=Path("scenarios"),
                journal_dir=tmp_path, endpoints=StagingEndpoints(), bring_up=False,
                take_down=False, gap_seconds=0, settle_seconds=1, growth_bytes_per_cycle=2048,
                say=lambda text: None, stop=threading.Event())  # fmt: skip


def test_what_the_final_drain_delivers_is_late_in_the_last_row_not_lost(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    results = _soak_leaving(monkeypatch, tmp_path, left=["a", "b"], drained=["a", "b"])
    assert results[-1].ok and results[-1].late == {1: 2}


def test_what_no_cycle_nor_the_final_drain_delivers_is_a_miss_naming_the_drain_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    results = _soak_leaving(monkeypatch, tmp_path, left=["a", "b"], drained=["a"])
    assert results[-1].late == {1: 1}
    assert results[-1].misses == [
        "not delivered within the final drain (1 s): 1 of cycle 1 (e.g. ['b'])"
    ]


class _FinalDrainDeployment(_Deployment):
    api = "http://127.0.0.1:9"


class _ShrinkingStaging:
    """A released replacement's container on its way out: listed once more, then gone."""

    def __init__(self, counts: list[int]) -> None:
        self.counts = counts

    def containers(self) -> list[object]:
        count = self.counts.pop(0) if len(self.counts) > 1 else self.counts[0]
        return [object()] * count


def test_the_settle_reports_the_container_count_it_judged_whole_not_a_later_listing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(soak_module, "shards_whole", lambda topology: [])
    monkeypatch.setattr(soak_module, "stray_primaries", lambda staging, topology: [])
    monkeypatch.setattr(soak_module, "container_bound", lambda staging, topology: 38)
    staging = _ShrinkingStaging([40, 38])
    settled = settle(_Deployment(), 5.0, threading.Event(), staging)  # type: ignore[arg-type]
    assert settled.seconds is not None and settled.state == "whole"
    assert (settled.containers, settled.container_bound) == (38, 38)
