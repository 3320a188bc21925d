"""Running experiments once or on a schedule (`ratequeue-chaos run --every 4h --jitter 10m`): no two
runs overlap (the run lock in the coordination store), a failed run does not stop the schedule, each
run's journal is handed to `on_journal` as the run ends, runs start on a fixed grid kept in the
target's control store, or beside the journals for the embedded testbed (`schedule_grid`: no
drift, missed slots skipped and said, the next run time kept across a restart), and SIGTERM
lets the current run finish its rollbacks before the process exits. With no target, each run
starts the embedded local testbed and stops it afterwards.

Not for: what happens inside a run (see `runner`).
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from chaos import schedule_settings
from chaos.cron_schedule import CronSchedule
from chaos.embedded_testbed import embedded_testbed_dir
from chaos.errors import RefusedTarget, ScheduleNotRead, TargetError
from chaos.experiments import Experiment, TestbedOverrides, applicable_experiments
from chaos.journal import Journal, Say
from chaos.processes import read_cmdline, running
from chaos.run_watchers import RunWatcher
from chaos.runner import ExperimentRunner
from chaos.schedule_grid import ScheduleGrid
from chaos.schedule_store import StoreScheduleKeeper, schedule_name
from chaos.targets import Deployment, from_testbed
from chaos.testbed import running_testbed
from common.points_in_time import iso_utc
from lazarus_lite.coordination.interface import RunLock

T = TypeVar("T")
PID_FILE = "chaos-run.pid"


def check_target_allowed(deployment: Deployment, allow_prod: bool) -> None:
    if deployment.environment.lower() in {"prod", "production"} and not allow_prod:
        raise RefusedTarget(
            f"target {deployment.name} is a production environment "
            f"({deployment.environment}); pass --allow-prod to run against it"
        )


@contextlib.contextmanager
def run_lock(deployment: Deployment, holder: str, ttl_seconds: float) -> Iterator[None]:
    """Hold the deployment's run lock; raise TargetError if another run holds it, or if the
    control store cannot be reached."""

    def on_lock(use: Callable[[RunLock], Awaitable[T]]) -> T:
        return deployment.on_store(lambda store: use(store.run_lock))

    current = on_lock(lambda lock: lock.take(holder, ttl_seconds))
    if current is not None:
        raise TargetError(f"another chaos run holds the run lock: {current!r}")
    released = threading.Event()

    def keep_lock() -> None:
        # Renewed while the run lasts, however long its drain or probes take.
        while not released.wait(timeout=ttl_seconds / 3):
            with contextlib.suppress(TargetError):
                on_lock(lambda lock: lock.renew(holder, ttl_seconds))

    renewer = threading.Thread(target=keep_lock, name="chaos-run-lock", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        released.set()
        renewer.join(timeout=5)
        with contextlib.suppress(TargetError):
            on_lock(lambda lock: lock.release(holder))


def resolve_controller_args(args: list[str], experiment_file: Path | None) -> list[str]:
    """Paths in an experiment's controller args are relative to the project or the file."""
    resolved = []
    for arg in args:
        candidates = [Path(arg)]
        if experiment_file is not None:
            candidates += [experiment_file.parent / arg, experiment_file.parent.parent / arg]
        found = next((c for c in candidates if c.exists()), None)
        resolved.append(
            str(found.resolve()) if found is not None and not arg.startswith("-") else arg
        )
    return resolved


def run_one(
    path: Path,
    experiment: Experiment,
    *,
    target: Deployment | None,
    journal_dir: Path,
    dry_run: bool,
    say: Say,
    stop: threading.Event,
    seed: int | None = None,
    on_fault: Callable[[bool], None] = lambda active: None,
) -> Journal:
    """One experiment against `target`, or against a fresh embedded testbed (`on_fault`: see
    `ExperimentRunner`). A dry run only plans: it takes no run lock and starts nothing (see
    `ExperimentRunner.dry_run`)."""
    options = experiment.testbed
    if dry_run:
        # Without a target, plan against the testbed the run would start, without starting it.
        deployment = target or Deployment(
            name="embedded testbed (not started: dry run)",
            api="http://127.0.0.1",
            control="redis://127.0.0.1",
        )
        runner = ExperimentRunner(
            deployment, journal_dir=journal_dir, say=say, stop=stop, seed=seed
        )
        shard_ids = None if target else [f"s{i}" for i in range(options.shards)]
        return runner.dry_run(experiment, str(path), shard_ids)
    if target is not None:
        budget = experiment.load.duration + experiment.watch_seconds + 120
        with run_lock(target, f"{os.uname().nodename}:{os.getpid()}", budget):
            runner = ExperimentRunner(
                target, journal_dir=journal_dir, say=say, stop=stop, seed=seed, on_fault=on_fault
            )
            return runner.run(experiment, str(path))
    # Stopped by a reaper should this process be killed (`embedded_testbed`).
    with embedded_testbed_dir(journal_dir) as scratch:
        say(
            f"starting the embedded testbed ({options.shards} shards x "
            f"{options.replicas} replicas, {_manager(experiment)}, control store on "
            f"{experiment.control})"
        )
        args = resolve_controller_args(options.controller_args, path)
        with running_testbed(
            scratch,
            shards=options.shards,
            replicas=options.replicas,
            controller_args=args,
            control=experiment.control,
            failover=experiment.failover,
            ack=experiment.ack,
        ) as state:
            deployment = from_testbed(state, scratch)
            runner = ExperimentRunner(
                deployment,
                journal_dir=journal_dir,
                say=say,
                stop=stop,
                seed=seed,
                on_fault=on_fault,
            )
            return runner.run(experiment, str(path))


def _manager(experiment: Experiment) -> str:
    if experiment.failover == "sentinel":
        return f"3 Redis Sentinels, ack {experiment.ack}"
    return f"3 controllers, ack {experiment.ack}"


def run_schedule(
    paths: list[Path],
    *,
    target: Deployment | None,
    journal_dir: Path,
    every: float | None,
    jitter: float,
    dry_run: bool,
    say: Say,
    stop: threading.Event,
    on_journal: Callable[[Journal], None] = lambda _: None,
    max_runs: int | None = None,
    watchers: Sequence[RunWatcher] = (),
    overrides: TestbedOverrides | None = None,
    cron: CronSchedule | None = None,
) -> list[Journal]:
    """Run every experiment once, or (with `every`, or at the times `cron` names) again and
    again until `stop` is set (or `max_runs` runs ended). `watchers` are told of each run as
    it happens. A failed single run raises; a dry run writes nothing (no pid file either:
    nothing to halt) and tells no one."""
    # All validated before any run; `overrides` replace each file's testbed settings, and the
    # files they cannot run are skipped, saying why.
    experiments, skipped = applicable_experiments(paths, overrides)
    for _, reason in skipped:
        say(f"skipped {reason}")  # the reason names the file
    watchers = () if dry_run else watchers

    def tell_fault(active: bool) -> None:
        for watcher in watchers:
            watcher.fault_active(active)

    pid_file = journal_dir / PID_FILE
    if not dry_run:
        journal_dir.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(str(os.getpid()))
    journals: list[Journal] = []
    rng = random.Random()
    # A dry run keeps no schedule: it plans, and a real schedule's times are not its to move.
    scheduled = every is not None or cron is not None
    grid = None
    try:
        if scheduled and not dry_run:
            # Against a deployment, kept in its control store (a restarted scheduler needs no
            # disk of its own); the embedded testbed's store lasts one run: beside the journals.
            keeper = (
                journal_dir
                if target is None
                else StoreScheduleKeeper(
                    target,
                    schedule_name([p for p, _ in experiments], every, cron),
                    say,
                    stop,
                    journal_dir,
                )
            )
            try:
                grid = ScheduleGrid(keeper, every, time.time(), cron)
            except ScheduleNotRead as stopped:
                say(f"nothing ran: {stopped}")
                return journals
            wait_for_first_slot(grid, jitter, rng, say, stop, watchers)
        while not stop.is_set():
            cycle_started = time.time()
            for path, experiment in experiments:
                if stop.is_set():
                    break
                for watcher in watchers:
                    watcher.started(path, experiment)
                try:
                    journal = run_one(
                        path,
                        experiment,
                        target=target,
                        journal_dir=journal_dir,
                        dry_run=dry_run,
                        say=say,
                        stop=stop,
                        on_fault=tell_fault,
                    )
                except Exception as error:  # a failed run must not stop the schedule
                    for watcher in watchers:
                        watcher.broke(path, experiment, error)
                    if not scheduled:
                        raise  # the caller says it, once
                    say(f"run of {path} failed: {type(error).__name__}: {error}")
                    continue
                journals.append(journal)
                on_journal(journal)
                for watcher in watchers:
                    watcher.ended(journal)
                if max_runs is not None and len(journals) >= max_runs:
                    return journals
            if not scheduled:
                break
            if dry_run:
                # A dry run only plans: the schedule's times are part of the plan, not a wait.
                say(f"a schedule would run at {planned_times(every, cron, jitter)}; a dry run "
                    "stops here")  # fmt: skip
                break
            if grid is None:
                period = every if every is not None else _cron_wait(cron)
                pause = period + rng.uniform(-jitter, jitter)
            else:
                slot = grid.advance(time.time())
                if slot.skipped:
                    say(f"the run overran its slot: skipped {slot.skipped_text()} slot(s)")
                pause = slot.at + rng.uniform(-jitter, jitter) - time.time()
            # Jitter must not start two runs back to back: the settings refuse a jitter the
            # schedule's gaps cannot take, but a cron's gaps vary (month ends, leap days).
            if jitter:
                pause = max(pause, cycle_started + schedule_settings.MIN_EVERY - time.time())
            say(f"next run at {clock(time.time() + pause)} (in {max(0.0, pause):.0f} s)")
            for watcher in watchers:
                watcher.next_run(time.time() + max(0.0, pause))
            stop.wait(timeout=max(0.0, pause))
    finally:
        with contextlib.suppress(OSError):
            if pid_file.read_text() == str(os.getpid()):
                pid_file.unlink()
    return journals


# How many of a schedule's run times a dry run shows.
PLANNED_TIMES = 3


def planned_times(every: float | None, cron: CronSchedule | None, jitter: float) -> str:
    """The first `PLANNED_TIMES` times a new schedule would start its runs (`every`: now, then
    every period; `cron`: the times it names), as a log reads them."""
    now = time.time()
    if every is not None:
        times = [now + index * every for index in range(PLANNED_TIMES)]
    else:
        assert cron is not None
        times = [cron.next_after(now)]
        while len(times) < PLANNED_TIMES:
            times.append(cron.next_after(times[-1]))
    spread = f" (each +/- up to {jitter:g} s of jitter)" if jitter else ""
    return ", ".join(clock(at) for at in times) + spread


def _cron_wait(cron: CronSchedule | None) -> float:
    """Seconds from now to the next time `cron` names."""
    assert cron is not None
    now = time.time()
    return cron.next_after(now) - now


def clock(stamp: float) -> str:
    """A time as people read it in a log: local date and time to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(stamp))


def wait_for_first_slot(
    grid: ScheduleGrid,
    jitter: float,
    rng: random.Random,
    say: Say,
    stop: threading.Event,
    watchers: Sequence[RunWatcher] = (),
) -> None:
    """A restarted schedule waits for its kept next run (or runs at once if that passed), a new
    cron schedule for its first time; watchers are told when that is."""
    slot = grid.catch_up(time.time())
    grid.save()
    if not grid.resumed:
        if grid.cron is not None:  # a new cron schedule waits for its first time
            say(f"first run at {iso_utc(slot.at)} ({grid.cron.expression}, UTC)")
            for watcher in watchers:
                watcher.next_run(slot.at)
            stop.wait(timeout=max(0.0, slot.at + rng.uniform(-jitter, jitter) - time.time()))
        return
    missed = f"; {slot.skipped_text()} slot(s) passed while it was stopped" if slot.skipped else ""
    say(f"resuming the schedule kept in {grid.keeper.where}: next run at {clock(slot.at)}{missed}")
    if slot.at > time.time():
        for watcher in watchers:
            watcher.next_run(slot.at)
        stop.wait(timeout=max(0.0, slot.at + rng.uniform(-jitter, jitter) - time.time()))


def halt(journal_dir: Path, wait_seconds: float = 120) -> int | None:
    """Ask the running `ratequeue-chaos run` to stop and roll back; returns its pid (None: none
    ran)."""
    import signal

    pid_file = journal_dir / PID_FILE
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return None
    argv = read_cmdline(pid) or []
    if not any(part.endswith("chaos") for part in argv) or "run" not in argv:
        # A stale pid file (the run was killed); the pid may be someone else's now.
        pid_file.unlink(missing_ok=True)
        return None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return None
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline and running(pid):
        time.sleep(0.2)
    if running(pid):
        raise TimeoutError(f"chaos run {pid} is still rolling back after {wait_seconds:g} s")
    return pid
