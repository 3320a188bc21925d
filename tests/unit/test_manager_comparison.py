"""`ratequeue-chaos report`'s side-by-side section: an experiment run under more than one failover
manager gets a row per manager (its latest completed run) with lost, recovery, duplicates, the
rate's overshoot and one primary per shard, and the managers' timelines on one axis; a skipped
hypothesis is never shown as held. `ratequeue-chaos compare` tables every scenario file under
every manager: its latest run, or why that manager cannot run it.

Not for: producing the journals (tests/test_scenarios_on_both_managers.py runs both managers).
"""

from __future__ import annotations

from pathlib import Path

from chaos.comparison import scenario_table, side_by_side
from chaos.journal import HypothesisOutcome, Journal
from chaos.report import write_report
from tests.e2e.support import chaos_command

PARTITION = "Cut a shard primary off"


def run(run_id: str, started: float, failover: str, ack: str | None, lost: int,
        experiment: str = PARTITION, status: str = "completed") -> Journal:  # fmt: skip
    journal = Journal(run_id=run_id, experiment=experiment, deployment="local", environment="dev",
                      started_at=started, failover=failover, ack=ack, status=status,
                      verdict="passed" if lost == 0 else "failed")  # fmt: skip
    journal.mark("fault_injected", started, started)
    journal.mark("promotion", started + 2.5, started, "s0: s0-replica1")
    journal.mark("first_acknowledged_write", started + 0.05, started, "s0")
    if ack == "async":  # the cut-off primary acknowledged at once; the API switched later
        journal.mark("first_write_after_switch", started + 3.1, started, "s0")
    journal.load = {"acknowledged": 400, "lost": lost, "duplicates": 0}
    journal.hypotheses = [
        HypothesisOutcome(hypothesis="acknowledged_lost", ok=lost == 0, expected="<= 0",
                          measured=lost),
        HypothesisOutcome(hypothesis="one_primary_per_shard", ok=True, expected="1",
                          measured={"s0": ["x"]}),
        HypothesisOutcome(hypothesis="rate_limits_held", ok=False, expected="-", measured=None,
                          skipped="not judged here"),
    ]  # fmt: skip
    return journal


def test_each_manager_s_latest_completed_run_of_an_experiment_is_compared() -> None:
    journals = [
        run("old-lazarus", 1.0, "lazarus", "wait", lost=3),
        run("lazarus", 2.0, "lazarus", "wait", lost=0),
        run("sentinel", 3.0, "sentinel", "async", lost=16),
        run("aborted", 4.0, "sentinel", "async", lost=0, status="aborted"),
        run("alone", 5.0, "lazarus", "wait", lost=0, experiment="Kill a primary"),
    ]
    compared = side_by_side(journals)
    assert list(compared) == [PARTITION]  # one manager only: nothing to compare
    rows = compared[PARTITION]
    assert [(r.manager, r.journal.run_id) for r in rows] == [
        ("lazarus, ack wait", "lazarus"),
        ("sentinel, ack async", "sentinel"),
    ]
    lazarus, sentinel = (r.cells() for r in rows)
    assert lazarus[3] == "0" and sentinel[3] == "16"  # lost
    assert lazarus[4] == "0.05"
    assert sentinel[4] == "3.10"  # recovery: after the API switched, not the cut-off primary's
    assert sentinel[6] == "-"  # a skipped hypothesis is shown as not measured
    assert sentinel[7] == "yes"


def test_rate_overshoot_and_primaries_show_though_the_experiment_judges_neither() -> None:
    lazarus = run("lazarus", 2.0, "lazarus", "wait", lost=0)
    sentinel = run("sentinel", 3.0, "sentinel", "async", lost=16)
    sentinel.hypotheses = [h for h in sentinel.hypotheses if h.hypothesis == "acknowledged_lost"]
    sentinel.measures = {"earliest_delivery_before_rate_seconds": 0.12,
                         "primaries_answering": {"s0": ["a"], "s1": ["b", "c"]}}  # fmt: skip
    [(_, rows)] = side_by_side([lazarus, sentinel]).items()
    cells = rows[1].cells()
    assert (cells[6], cells[7]) == ("0.12", "NO")


def test_the_report_shows_the_managers_side_by_side_with_one_timeline_axis(tmp_path: Path) -> None:
    run("lazarus", 2.0, "lazarus", "wait", lost=0).write(tmp_path)
    run("sentinel", 3.0, "sentinel", "async", lost=16).write(tmp_path)
    page_path, summary_path = write_report(tmp_path)
    page = page_path.read_text()
    assert "Failover managers side by side" in page
    assert 'aria-label="timelines of the managers on one axis"' in page
    assert "sentinel, ack async" in page and "lazarus, ack wait" in page
    summary = summary_path.read_text()
    assert "| sentinel, ack async | failed | 400 | 16 |" in summary
    assert "| lazarus, ack wait | passed | 400 | 0 |" in summary


def test_a_report_of_one_manager_has_no_side_by_side_section(tmp_path: Path) -> None:
    run("lazarus", 2.0, "lazarus", "wait", lost=0).write(tmp_path)
    page_path, summary_path = write_report(tmp_path)
    assert "side by side" not in page_path.read_text() + summary_path.read_text()


def scenario(directory: Path, name: str, title: str, target: str = "primary") -> Path:
    path = directory / name
    path.write_text(f"title: {title}\nmethod:\n  - {{action: kill, target: {{role: {target}}}}}\n"
                    "hypotheses:\n  - {type: recovered_within, seconds: 10}\n")  # fmt: skip
    return path


def test_the_scenario_table_has_a_run_or_the_reason_a_manager_cannot_run_it(
    tmp_path: Path,
) -> None:
    files = [scenario(tmp_path, "partition.yaml", PARTITION),
             scenario(tmp_path, "controller.yaml", "Kill a controller", "controller"),
             scenario(tmp_path, "pause.yaml", "Pause a primary")]  # fmt: skip
    journals = [run("lazarus", 2.0, "lazarus", "wait", lost=0),
                run("sentinel", 3.0, "sentinel", "async", lost=16)]  # fmt: skip
    header, _, partition, controller, pause = scenario_table(journals, files)
    assert header == "| scenario | lazarus, ack wait | sentinel, ack async |"
    assert "| passed; lost 0 of 400; recovery 0.05 s; skipped rate_limits_held |" in partition
    assert "| failed; lost 16 of 400; recovery 3.10 s; broke acknowledged_lost;" in partition
    assert controller.endswith("| not run | skipped: failover: sentinel starts no controller: a "
                               "target of that role needs failover: lazarus |")  # fmt: skip
    assert pause.endswith("| not run | not run |")


def test_compare_writes_the_table_saying_how_it_was_made(tmp_path: Path) -> None:
    journals = tmp_path / "journals"
    run("lazarus", 2.0, "lazarus", "wait", lost=0).write(journals)
    files = [scenario(tmp_path, "partition.yaml", PARTITION)]
    table = tmp_path / "table.md"
    made = chaos_command("compare", str(journals), *map(str, files), "--output", str(table))
    assert made.returncode == 0, made.stdout + made.stderr
    text = table.read_text()
    assert "ratequeue-chaos compare JOURNAL_DIR" in text and "1 runs from" in text
    assert f"| `partition.yaml` {PARTITION} | passed; lost 0 of 400" in text


def test_undelivered_writes_say_how_many_were_still_held_at_the_run_s_end() -> None:
    lazarus = run("lazarus", 2.0, "lazarus", "wait", lost=14)
    lazarus.load["undelivered_whereabouts"] = {"held": 14, "gone": 0, "unknown": 0}
    sentinel = run("sentinel", 3.0, "sentinel", "async", lost=16)
    sentinel.load["undelivered_whereabouts"] = {"held": 0, "gone": 12, "unknown": 4}
    rows = side_by_side([lazarus, sentinel])[PARTITION]
    assert [r.cells()[3] for r in rows] == [
        "14 (14 still held, 0 gone)",
        "16 (0 still held, 12 gone, 4 not known)",
    ]


def test_a_sentinel_row_names_the_down_after_its_run_reported() -> None:
    sentinel = run("sentinel", 3.0, "sentinel", "async", lost=16)
    sentinel.sentinel_timers = {"down_after_ms": 2000, "failover_timeout_ms": 10_000}
    older = run("older-sentinel", 2.5, "sentinel", "async", lost=3)  # before runs recorded it
    rows = side_by_side([run("lazarus", 2.0, "lazarus", "wait", lost=0), older, sentinel])
    assert [(r.manager, r.journal.run_id, r.cells()[0]) for r in rows[PARTITION]] == [
        ("lazarus, ack wait", "lazarus", "lazarus, ack wait"),
        ("sentinel, ack async", "sentinel", "sentinel, ack async (down-after 2000 ms)"),
    ]


REPO = Path(__file__).resolve().parents[2]
SCENARIOS = [REPO / "scenarios" / "primary_partition.yaml",
             REPO / "scenarios" / "controller_crash_mid_failover.yaml"]  # fmt: skip
PARTITION_FILE = "Cut a shard primary off from its replicas and the controllers"


def sentinel_run(run_id: str, started: float, down_after_ms: int | None) -> Journal:
    journal = run(run_id, started, "sentinel", "async", lost=16, experiment=PARTITION_FILE)
    if down_after_ms is not None:
        journal.sentinel_timers = {"down_after_ms": down_after_ms, "failover_timeout_ms": 10_000}
    return journal


def test_sentinel_runs_with_timers_fill_the_sentinel_column_and_it_keeps_its_skips() -> None:
    journals = [run("lazarus", 2.0, "lazarus", "wait", lost=0, experiment=PARTITION_FILE),
                sentinel_run("sentinel", 3.0, down_after_ms=2000)]  # fmt: skip
    lines = scenario_table(journals, SCENARIOS)
    header, _, partition, controller, blank, note = lines
    assert header == "| scenario | lazarus, ack wait | sentinel, ack async |"
    assert partition.endswith("| failed; lost 16 of 400; recovery 3.10 s; broke "
                              "acknowledged_lost; skipped rate_limits_held |")  # fmt: skip
    assert controller.endswith("| not run | skipped: failover: sentinel starts no controller: a "
                               "target of that role needs failover: lazarus |")  # fmt: skip
    assert (blank, note) == ("", "Sentinel's timer, the same in every run of its column: "
                                 "sentinel, ack async: down-after 2000 ms.")  # fmt: skip


def test_a_sentinel_column_whose_runs_differ_in_down_after_says_it_in_each_cell(
    tmp_path: Path,
) -> None:
    kill = scenario(tmp_path, "kill.yaml", "Kill a primary")
    unrecorded = run("kill", 4.0, "sentinel", "async", lost=0, experiment="Kill a primary")
    journals = [sentinel_run("partition", 3.0, down_after_ms=2000), unrecorded]
    lines = scenario_table(journals, [SCENARIOS[0], kill])
    assert lines[0] == "| scenario | lazarus, ack wait | sentinel, ack async |"
    assert lines[2].endswith("; down-after 2000 ms |")
    assert lines[3].endswith("; down-after not recorded |")
    assert len(lines) == 4  # no line under the table
