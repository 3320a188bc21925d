"""The partition scenario (scenarios/primary_partition.yaml) under both failover managers, each
on its own embedded testbed: under Lazarus (acknowledged once a replica holds it) nothing
acknowledged is lost; under Redis Sentinel with asynchronous acknowledgement the cut-off primary
keeps acknowledging writes its replicas never get, Sentinel promotes a replica (placed on the
timeline when the sentinels announced it), the API follows it (placed when it took that map;
writes after the failover are the new primary's, and recovery is measured to the first of
them), and the ledger counts the acknowledged writes lost (the check is that the ledger sees
them, not that they are none) and the run looks for them on their shard's nodes at its end; the
journal records the timers the testbed's sentinels reported.

The Lazarus run is the files' default experiment, the very run tests/test_scenarios.py makes:
both assert on one journal (the session's `scenario_journal`).

Not for: the rest of the suite under Lazarus (tests/test_scenarios.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chaos.experiments import TestbedOverrides
from chaos.journal import Journal
from common.sentinel_processes import SentinelTimers
from tests.conftest import ScenarioRun

PARTITION = Path(__file__).parents[1] / "scenarios" / "primary_partition.yaml"

pytestmark = pytest.mark.slow  # a testbed and a 12 s load each


def outcome(journal: Journal, hypothesis: str) -> object:
    return next(h for h in journal.hypotheses if h.hypothesis == hypothesis)


def test_under_lazarus_a_partitioned_primary_loses_no_acknowledged_write(
    scenario_journal: ScenarioRun,
) -> None:
    journal, _ = scenario_journal(PARTITION, TestbedOverrides(failover="lazarus"))
    assert journal.failover == "lazarus"
    assert journal.verdict == "passed", (journal.errors, journal.hypotheses)
    assert journal.load["acknowledged"] > 0 and journal.load["lost"] == 0


def test_under_sentinel_with_async_acks_the_ledger_counts_the_acknowledged_writes_lost(
    scenario_journal: ScenarioRun,
) -> None:
    journal, _ = scenario_journal(PARTITION, TestbedOverrides(failover="sentinel", ack="async"))
    assert (journal.failover, journal.ack, journal.status) == ("sentinel", "async", "completed")
    # The timers the testbed started its sentinels with, as a sentinel reported them.
    started_with = SentinelTimers().model_dump(include={"down_after_ms", "failover_timeout_ms"})
    assert journal.sentinel_timers == started_with
    assert journal.moment("promotion") is not None, journal.timeline  # Sentinel did fail over
    # Placed when the sentinels announced it, and the API's switch when the API took the map,
    # not when the run's poll saw them (their details name the source)...
    promoted = next(e.detail for e in journal.timeline if e.name == "promotion")
    routed = next((e.detail for e in journal.timeline if e.name == "topology_published"), "")
    assert re.search(r" \(\+(promoted-slave|switch-master) from sentinel ", promoted), promoted
    assert " (the API took epoch " in routed, journal.timeline
    # ...and the API followed: its own map named the primary Sentinel promoted...
    assert routed.split(" (")[0] == promoted.split(" (")[0], journal.timeline
    # ...and writes went there: recovery is measured to the first write sent after that, not
    # to the cut-off primary's acknowledgements.
    after_switch = journal.moment("first_write_after_switch")
    assert after_switch is not None and after_switch > journal.moment("topology_published")
    recovered = outcome(journal, "recovered_within")
    assert recovered.measured == pytest.approx(journal.recovery_seconds(), abs=0.001)
    assert recovered.measured > journal.moment("promotion") - journal.moment("fault_injected")
    assert "after the API routed to the promoted primary" in recovered.detail
    lost = outcome(journal, "acknowledged_lost")
    assert journal.load["lost"] > 0, journal.load
    assert lost.measured == journal.load["lost"] and not lost.ok
    # Each lost write was looked for on its shard's nodes at the run's end, and placed.
    found = journal.load["undelivered_whereabouts"]
    assert found["looked_for"] == journal.load["lost"], found
    assert found["held"] + found["gone"] + found["unknown"] == found["looked_for"], found
    # Everything else the scenario expects holds: the loss is the one difference.
    others = [h for h in journal.hypotheses if h.hypothesis != "acknowledged_lost"]
    assert all(h.ok for h in others), others
