"""`chaos` command line: the local testbed and the main job.

A bad file, option or deployment is one line naming it (messages are printed escaped: a file
name or value may look like rich markup). Not for: the work itself (see `runner`, `testbed`)."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from chaos import testbed as testbed_module
from chaos.agent.settings import AgentSettings
from chaos.errors import ChaosError, TestbedError
from chaos.load import LoadProfile
from chaos.schedule_settings import ScheduleSettings
from chaos.soak_growth import BYTES_PER_CYCLE
from common.nodes import SHARD_ROLES
from common.settings_options import refuse_to_start, setting_named, with_settings
from common.version import add_version_option
from ratequeue.membership import boot_arguments

if TYPE_CHECKING:
    from sys import UnraisableHookArgs

app = typer.Typer(help="Chaos experiments against a ratequeue deployment.", no_args_is_help=True)
testbed_app = typer.Typer(help="A whole deployment on loopback.", no_args_is_help=True)
app.add_typer(testbed_app, name="testbed")
add_version_option(app, "ratequeue-chaos")  # `chaos` is Chaos Toolkit's
console = Console()


def refused(error: Exception, what: str | None = None) -> typer.Exit:
    """Print why a command cannot go on (in red, `what` first) and the exit to raise (code 1)."""
    text = escape(str(error))
    console.print(f"[red]{what}:[/] {text}" if what else f"[red]{text}[/]")
    return typer.Exit(1)


# What stops a command from outside: Ctrl-C, and `kill` (or a service manager) by default.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interruptible() -> Iterator[list[int]]:
    """Turn the first SIGINT or SIGTERM into KeyboardInterrupt, so the work unwinds and stops
    what it started (SIGTERM would otherwise end the process on the spot); later ones are
    ignored while it does, lest a second Ctrl-C cut that short too. Yields the list the signal
    that arrived is put in (for the exit status)."""
    caught: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        if not caught:
            caught.append(signum)
            raise KeyboardInterrupt(signal.Signals(signum).name)

    previous_hook = sys.unraisablehook

    def quiet_about_the_interrupt(unraisable: UnraisableHookArgs) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt) or not caught:
            previous_hook(unraisable)

    previous = {signum: signal.signal(signum, interrupt) for signum in STOP_SIGNALS}
    sys.unraisablehook = quiet_about_the_interrupt
    try:
        yield caught
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = previous_hook
    if caught:
        # The signal came while a finalizer ran (a redis ConnectionPool's __del__, say): Python
        # drops what a finalizer raises, so the work went on to its end. It is stopped all the
        # same; the caller stops what the work started.
        raise KeyboardInterrupt(signal.Signals(caught[0]).name)


@contextlib.contextmanager
def stop_signals_ignored() -> Iterator[None]:
    """SIGINT and SIGTERM ignored for the block (a teardown after an interrupt), then restored."""
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def written_state(directory: Path) -> tuple[int, str] | None:
    """When the testbed state file was written and its text (None: there is none), to tell
    whether an `up` wrote it: one left by a testbed whose processes all died is started over,
    in place."""
    path = testbed_module.state_path(directory)
    try:
        return path.stat().st_mtime_ns, path.read_text()
    except OSError:
        return None


class ControlChoice(StrEnum):
    redis = "redis"
    etcd = "etcd"


class FailoverChoice(StrEnum):
    lazarus = "lazarus"
    sentinel = "sentinel"


class AckChoice(StrEnum):
    wait = "wait"
    async_ = "async"


@testbed_app.command("up")
def testbed_up(
    dir: Path = typer.Option(..., "--dir", help="directory for state, data and logs"),
    shards: int = typer.Option(3, min=1, max=64),
    replicas: int = typer.Option(2, min=1, max=8),
    controllers: int = typer.Option(3, min=0, max=9, help="Lazarus-lite nodes (0: none)"),
    sensors: bool = typer.Option(True, help="a heartbeat sensor beside every replica"),
    supervise: bool = typer.Option(
        True, help="a supervisor starts a killed API, controller or sensor again"
    ),
    control: ControlChoice = typer.Option(
        ControlChoice.redis, "--control", help="the coordination store: redis, or 3-member etcd"
    ),
    failover: FailoverChoice = typer.Option(
        FailoverChoice.lazarus,
        "--failover",
        help="who fails shards over: the Lazarus controllers, or 3 Redis Sentinels (quorum 2; "
        "then no controllers or sensors are started)",
    ),
    ack: AckChoice = typer.Option(
        AckChoice.wait,
        "--ack",
        help="acknowledge an enqueue once a replica holds it (wait), or at once (async)",
    ),
    down_after_ms: int = typer.Option(
        2000,
        "--down-after-ms",
        min=100,
        max=600_000,
        help="sentinel down-after-milliseconds (at 1000 or less Sentinel may fail a shard over "
        "again right after a failover: README)",
    ),
    failover_timeout_ms: int = typer.Option(
        10_000,
        "--failover-timeout-ms",
        min=1000,
        max=3_600_000,
        help="sentinel failover-timeout (ms)",
    ),
    parallel_syncs: int = typer.Option(
        1, "--parallel-syncs", min=1, max=16, help="sentinel parallel-syncs"
    ),
    api_workers: int = typer.Option(
        1, "--api-workers", min=1, max=64, help="worker processes of the ratequeue API"
    ),
    shard_maxmemory: str = typer.Option(
        testbed_module.TESTBED_SHARD_MAXMEMORY,
        "--shard-maxmemory",
        help="each shard node's memory limit (e.g. 512mb); full, a shard refuses writes",
    ),
) -> None:
    """Start a testbed and leave it running; writes DIR/testbed.json."""
    from common.sentinel_processes import SentinelTimers

    timers = SentinelTimers(
        down_after_ms=down_after_ms,
        failover_timeout_ms=failover_timeout_ms,
        parallel_syncs=parallel_syncs,
    )
    try:
        boot_arguments(shard_maxmemory)
    except ValueError as error:
        raise refused(error, "testbed up refused: --shard-maxmemory") from None
    caught: list[int] = []
    state_before = written_state(dir)
    try:
        with interruptible() as caught:
            state = testbed_module.up(
                dir,
                shards=shards,
                replicas=replicas,
                controllers=controllers,
                sensors=sensors,
                supervise=supervise,
                control=control.value,
                failover=failover.value,
                ack=ack.value,
                sentinel_timers=timers,
                api_workers=api_workers,
                shard_maxmemory=shard_maxmemory,
            )
    except KeyboardInterrupt:
        signum = caught[0] if caught else signal.SIGINT
        with stop_signals_ignored():  # a second Ctrl-C must not cut the teardown short
            state_now = written_state(dir)
            if state_now is not None and state_now != state_before:
                testbed_module.down(dir)  # this up had finished when the signal came
        console.print(
            f"testbed up interrupted ({signal.Signals(signum).name}): stopped every process it "
            "had started"
        )
        raise typer.Exit(128 + signum) from None
    except (TestbedError, RuntimeError) as error:
        raise refused(error, "testbed up failed") from None
    where = testbed_module.state_path(dir)
    store = f", etcd {state.etcd_endpoints}" if state.etcd_endpoints else ""
    if state.sentinels:
        store += f", sentinels {','.join(state.sentinels)} (ack {state.ack})"
    console.print(
        f"testbed up: API {state.api}, control {state.control}{store}, "
        f"{len(state.nodes)} processes; state in {where}"
    )


def roles_in_the_map(state: testbed_module.TestbedState, directory: Path) -> dict[str, str] | None:
    """Each shard node's role in the current topology, by name (None: it could not be read)."""
    from chaos.errors import TargetError
    from chaos.targets import from_testbed

    try:
        topology = from_testbed(state, directory).topology()
    except TargetError:
        return None
    roles = {shard.primary.name: "primary" for shard in topology.shards}
    roles |= {node.name: "replica" for shard in topology.shards for node in shard.replicas}
    return roles


def role_now(name: str, started_as: str, roles: dict[str, str] | None) -> str:
    """A node's role as `status` shows it: a shard node's is the map's now (a failover moves
    it), with the role it was started as when that differs."""
    if started_as not in SHARD_ROLES:
        return started_as
    if roles is None:
        return f"{started_as} (as started; the map could not be read)"
    now = roles.get(name)
    if now is None:
        return f"not in the map (started as {started_as})"
    return now if now == started_as else f"{now} (started as {started_as})"


@testbed_app.command("status")
def testbed_status(dir: Path = typer.Option(..., "--dir")) -> None:
    """Show the testbed's processes and the API's health."""
    try:
        state, alive, health = testbed_module.status(dir)
    except TestbedError as error:
        raise refused(error) from None
    roles = roles_in_the_map(state, dir)
    table = Table(title=f"testbed {dir}")
    for column in ("name", "role", "shard", "address", "pid", "alive"):
        table.add_column(column)
    for node in state.nodes:
        table.add_row(
            node.name,
            role_now(node.name, node.role, roles),
            node.shard or "",
            f"{node.host}:{node.port}",
            str(node.pid),
            "yes" if alive[node.name] else "[red]no[/]",
        )
    console.print(table)
    supervisor = state.supervisor
    if supervisor is not None:
        running = testbed_module.supervisor_alive(dir, supervisor)
        console.print(
            f"supervisor pid {supervisor.pid}: " + ("running" if running else "[red]not running[/]")
        )
        for restart in supervisor.restarts:
            at = time.strftime("%H:%M:%S", time.localtime(restart.at))
            what = restart.note or f"started again as pid {restart.pid}"
            console.print(f"  {at} {restart.name} (pid {restart.old_pid}): {what}")
    in_lb = bool(health and health.get("in_load_balancer"))
    console.print(f"API {state.api}: " + ("healthy" if in_lb else "[red]not healthy[/]"))
    if not (in_lb and all(alive.values())):
        raise typer.Exit(1)


@testbed_app.command("down")
def testbed_down(dir: Path = typer.Option(..., "--dir")) -> None:
    """Stop every process the testbed started."""
    try:
        stopped = testbed_module.down(dir, say=lambda undone: console.print(f"undone: {undone}"))
    except TestbedError as error:
        raise refused(error) from None
    console.print(f"testbed down: stopped {len(stopped)} processes")


@testbed_app.command("supervise", hidden=True)
def testbed_supervise(dir: Path = typer.Option(..., "--dir")) -> None:
    """Run the testbed's supervisor in the foreground (`up` starts it in the background)."""
    from chaos.supervisor import supervise

    supervise(dir)


@testbed_app.command("reap", hidden=True)
def testbed_reap(
    dir: Path = typer.Option(..., "--dir"),
    runner: int = typer.Option(..., "--runner"),
    mark: Path = typer.Option(..., "--mark"),
) -> None:
    """Stop the embedded testbed in DIR once the run RUNNER is gone (`chaos.embedded_testbed`)."""
    from chaos.embedded_testbed import reap

    reap(dir, runner, mark)


@app.command()
def demo(
    shards: int = typer.Option(3, min=1, max=16),
    replicas: int = typer.Option(2, min=1, max=4),
    seconds: float = typer.Option(10, min=1, max=3600),
    rate: float = typer.Option(100, help="enqueues per second", min=1),
    numbers: int = typer.Option(200, min=1),
) -> None:
    """Start a local testbed, push traffic through it, print what happened, stop it."""
    from chaos.demo import run_demo

    profile = LoadProfile(numbers=numbers, enqueue_per_second=rate)
    ok = run_demo(
        shards=shards, replicas=replicas, seconds=seconds, profile=profile, console=console
    )
    raise typer.Exit(0 if ok else 1)


def print_verdict(journal: object) -> None:
    from chaos.journal import Journal

    assert isinstance(journal, Journal)
    table = Table(title=f"{journal.experiment} — {journal.verdict.upper()}")
    for column in ("hypothesis", "expected", "measured", "ok"):
        table.add_column(column)
    for outcome in journal.hypotheses:
        if outcome.skipped:
            table.add_row(outcome.hypothesis, "", escape(outcome.skipped), "[yellow]SKIPPED[/]")
            continue
        table.add_row(
            outcome.hypothesis,
            outcome.expected,
            str(outcome.measured),
            "[green]yes[/]" if outcome.ok else "[red]NO[/]",
        )
    console.print(table)
    timeline = Table(title="timeline (seconds after the fault)")
    timeline.add_column("moment")
    timeline.add_column("t", justify="right")
    timeline.add_column("detail")
    for entry in journal.timeline:
        timeline.add_row(entry.name, f"{entry.offset:+.3f}", entry.detail)
    console.print(timeline)
    for error in journal.errors:
        console.print(f"[red]error:[/] {escape(str(error))}")


@app.command()
@with_settings(ScheduleSettings, env_prefix="CHAOS_", command_name="ratequeue-chaos run")
def run(
    ctx: typer.Context,
    settings: ScheduleSettings,
    experiments: list[Path] = typer.Argument(..., help="experiment files (scenarios/*.yaml)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate, plan, touch nothing"),
    json_output: bool = typer.Option(
        False,
        "--json",
        help="print the journals as JSON on stdout (everything else goes to stderr): one "
        "document when the runs end, or, on a schedule (--every, --cron), one line per run as "
        "it ends (JSON Lines)",
    ),
) -> None:
    """Run experiments once, or on a schedule; exit 1 when a hypothesis fails (single run)."""
    import json
    import signal
    import threading

    if json_output:  # stdout carries the one JSON document and nothing else
        console.stderr = True
        ctx.call_on_close(lambda: setattr(console, "stderr", False))

    from chaos.errors import ExperimentError, RefusedTarget, TargetError
    from chaos.experiments import TestbedOverrides, applicable_experiments
    from chaos.journal import Journal
    from chaos.run_watchers import RunWatcher
    from chaos.schedule_metrics import ScheduleMetrics
    from chaos.scheduler import check_target_allowed, run_schedule
    from chaos.targets import Deployment, load_deployment
    from notifications.config import NotificationConfig, load_notification_config
    from notifications.errors import NotificationConfigError

    # `settings`: the scheduler's (flags or CHAOS_* variables), validated before anything runs.
    cron_schedule = settings.cron_schedule
    channels: NotificationConfig | None = None
    try:
        overrides = TestbedOverrides(
            control=settings.control, failover=settings.failover, ack=settings.ack
        )
        runnable, skipped = applicable_experiments(experiments, overrides)
        if not runnable:
            reasons = "; ".join(reason for _, reason in skipped)  # each names its file
            raise ExperimentError(f"none of the experiments can run with these options: {reasons}")
        deployment = load_deployment(settings.target) if settings.target is not None else None
        if deployment is None:
            # Before the testbed starts: it runs processes, which a docker step cannot reach.
            for path, experiment in runnable:
                backend = Deployment.model_fields["default_backend"].default
                unusable = experiment.unusable_backends(backend, False, "the embedded testbed")
                if unusable:
                    raise ExperimentError(f"{path}: " + "; ".join(unusable))
        if deployment is not None:
            check_target_allowed(deployment, settings.allow_prod)
        if settings.notifications is not None:
            channels = load_notification_config(settings.notifications)
    except (ExperimentError, TargetError, RefusedTarget, NotificationConfigError) as error:
        console.print(f"[red]refused:[/] {escape(str(error))}")
        raise typer.Exit(2) from None
    stop = threading.Event()

    def finish_rollbacks_and_exit(signum: int, frame: object) -> None:
        console.print("[yellow]stopping: rolling back the current run[/]")
        stop.set()

    signal.signal(signal.SIGTERM, finish_rollbacks_and_exit)
    signal.signal(signal.SIGINT, finish_rollbacks_and_exit)

    scheduled = settings.every is not None or cron_schedule is not None

    def say_verdict(journal: Journal) -> None:
        # As each run ends: a schedule's runs are seen while it runs, not when it stops (it
        # may run for weeks), so its JSON is a line per run.
        print_verdict(journal)
        if json_output and scheduled:
            typer.echo(journal.model_dump_json())
        if not journal.dry_run:  # a plan is not journaled
            console.log(f"journal: {settings.journal_dir / (journal.run_id + '.json')}")

    metrics: ScheduleMetrics | None = None
    if settings.metrics_port is not None and not dry_run:
        metrics = ScheduleMetrics()
        try:
            metrics.serve(settings.metrics_port, settings.metrics_host)
        except OSError as error:
            named = setting_named(ScheduleSettings, "CHAOS_", "metrics_port")
            raise refuse_to_start("ratequeue-chaos run", f"{named}: {error}") from None
    try:
        with console.status("ratequeue-chaos run") as status:

            def say(message: str) -> None:
                status.update(f"[bold]{message}")
                console.log(message)

            watchers: list[RunWatcher] = []
            if channels is not None:
                from chaos.announcements import RunAnnouncer

                watchers.append(
                    RunAnnouncer(
                        channels,
                        settings.notify_service,
                        settings.journal_dir,
                        say,
                        settings.journal_url,
                    )
                )
            if metrics is not None:
                watchers.append(metrics)

            journals = run_schedule(
                experiments,
                target=deployment,
                journal_dir=settings.journal_dir,
                every=settings.every,
                jitter=settings.jitter,
                dry_run=dry_run,
                say=say,
                stop=stop,
                on_journal=say_verdict,
                max_runs=settings.runs,
                watchers=watchers,
                overrides=overrides,
                cron=cron_schedule,
            )
    except (TargetError, TestbedError) as error:
        # The deployment could not be reached or locked, or the testbed would not start: a
        # sentence, not a traceback (a run that started reports its errors in its journal).
        what = "ratequeue-chaos run (dry run)" if dry_run else "ratequeue-chaos run"
        raise refused(error, f"{what} failed") from None
    finally:
        if metrics is not None:
            metrics.close()
    failed = any(j.verdict not in ("passed", "not_run") for j in journals)
    if json_output and not scheduled:
        runs = [json.loads(journal.model_dump_json()) for journal in journals]
        typer.echo(json.dumps({"failed": failed, "runs": runs}))
    if not scheduled and failed:
        raise typer.Exit(1)


@app.command()
def validate(experiments: list[Path] = typer.Argument(...)) -> None:
    """Check experiment files; name the file, field and what was expected for each mistake."""
    from chaos.errors import ExperimentError
    from chaos.experiments import load_experiment

    failed = False
    for path in experiments:
        try:
            experiment = load_experiment(path)
        except ExperimentError as error:
            console.print(f"[red]invalid:[/] {escape(str(error))}")
            failed = True
            continue
        console.print(
            f"ok: {escape(str(path))}: {escape(experiment.title)} ({len(experiment.method)} steps, "
            f"{len(experiment.hypotheses)} hypotheses)"
        )
        # Which shards there are is the deployment's (a target's, or the testbed a run
        # starts): a file alone cannot say whether a shard it names exists.
        for field, shard in experiment.named_shards():
            console.print(
                f"  note: field '{field}' names shard {escape(repr(shard))}: not checked here; "
                "a run (and `run --dry-run`) checks it against the deployment's shards before "
                "anything starts"
            )
    if failed:
        raise typer.Exit(1)


@app.command()
def halt(
    journal_dir: Path = typer.Option(Path("chaos-journals"), "--journal-dir"),
    target: Path | None = typer.Option(
        None,
        "--target",
        help="the deployment a killed run was against (its target file or testbed.json): the "
        "local backend's cut-offs it left on that deployment's processes are undone too",
    ),
) -> None:
    """Stop the running experiment; it rolls back its faults before exiting. Faults a killed
    run left in force are undone too, each named: Docker ones always, the local backend's
    cut-offs on the processes of `--target`; and the embedded testbed of a killed run, should
    the reaper that stops it be gone too, is stopped. Exit 1 when one is left in force (the engine
    refused or was unreachable, another host wrote it, or a chaos command still running here
    may own it), or when nothing was running or left."""
    from chaos.embedded_testbed import stop_orphaned_testbeds
    from chaos.errors import TargetError
    from chaos.fault_phase import undo_local_cut_offs
    from chaos.faults.docker_leftovers import PendingDockerFaults, undo_docker_leftovers
    from chaos.scheduler import halt as halt_run
    from chaos.targets import load_deployment

    if not journal_dir.is_dir():
        # A mistyped directory: nothing can have run there, and looking must not create it.
        raise refused(ValueError(
            f"no journal directory {journal_dir} (a run writes its pid and faults in its "
            "--journal-dir); nothing was halted"
        ))  # fmt: skip
    try:
        if target is not None:
            load_deployment(target)  # a bad file is refused before anything is halted
        pid = halt_run(journal_dir)
    except (TargetError, TimeoutError) as error:
        raise refused(error) from None
    leftovers = undo_docker_leftovers(journal_dir)
    # A killed run's embedded testbed, should its reaper have been killed too.
    orphans = stop_orphaned_testbeds(journal_dir)
    local_left = None
    if target is not None:
        # Read again: the halted run may have restarted a node (a new pid in testbed.json).
        local_undone, local_left = undo_local_cut_offs(load_deployment(target))
        leftovers += local_undone
    for line in leftovers:
        console.print(f"leftover fault of a killed run: {escape(line)}")
    for line in orphans:
        console.print(escape(line))
    if pid is not None:
        console.print(f"halted chaos run {pid}; its faults were rolled back")
    in_force = PendingDockerFaults(journal_dir).unsettled()
    if in_force:
        console.print(f"{len(in_force)} fault(s) still in force, not undone (see above)")
    if local_left is not None:
        console.print(f"[red]local cut-offs left in force:[/] {escape(local_left)}")
    if in_force or local_left is not None:
        raise typer.Exit(1)
    if pid is None and not leftovers and not orphans:
        console.print(f"no chaos run is running (no live pid in {journal_dir}), and none left "
                      "a fault or a testbed behind")  # fmt: skip
        raise typer.Exit(1)


@app.command()
def soak(
    cycles: int = typer.Option(30, "--cycles", min=1, help="experiments to run, one per cycle"),
    compose_file: Path = typer.Option(Path("docker-compose.yml"), "--compose-file"),
    control: ControlChoice = typer.Option(
        ControlChoice.redis,
        "--control",
        help="staging's coordination store: redis, or etcd (three members: the etcd override "
        "beside the compose file, and the target deploy/staging-etcd-target.yaml describes)",
    ),
    scenarios: Path = typer.Option(Path("scenarios"), "--scenarios", help="the templates"),
    journal_dir: Path = typer.Option(Path("soak-journals"), "--journal-dir"),
    up: bool = typer.Option(True, help="bring staging up first (docker compose up --wait)"),
    down: bool = typer.Option(True, help="take staging down at the end"),
    gap: str = typer.Option("5s", "--gap", help="pause between cycles (the compressed schedule)"),
    settle: str = typer.Option("120s", "--settle", help="longest wait for every shard whole"),
    growth_allowance: float = typer.Option(
        BYTES_PER_CYCLE,
        "--growth-allowance-bytes",
        min=0,
        help="control store bytes a cycle its keys without expiry may grow by (slope)",
    ),
    kill_services: str = typer.Option(
        "",
        "--kill-services",
        help="also SIGKILL one of these containers each cycle, in turn, after the node fault: "
        "api, controller (comma-separated; a controller cycle takes lazarus1-3 in turn)",
    ),
    service_back: str = typer.Option(
        "60s", "--service-back", help="longest wait for a killed service back through its restart"
    ),
) -> None:
    """Soak the compose staging deployment: kill, pause and partition primaries and replicas of
    every shard in turn; after each cycle check 0 acknowledged lost, every shard whole, the
    container count within its bound and the control store not growing from cycle to cycle
    (judged from the seventh cycle on). One table; exit 1 on any miss. Ports and subnets: the
    compose file's variables (RQ_API_PORT, ...; on etcd also RQ_ETCD1_PORT..RQ_ETCD3_PORT)."""
    import threading

    from chaos.experiments import DAY
    from chaos.soak import CYCLE_ERRORS, StagingEndpoints, staging_compose_files
    from chaos.soak import soak as run_soak
    from chaos.soak_deliveries import describe_counts
    from chaos.soak_services import parse_services
    from common.durations import check_within, parse_duration

    def duration(value: str, option: str, *, above_zero: bool = True) -> float:
        # Up to a day, as an experiment's times: a soak waiting longer is a typo.
        try:
            return check_within(parse_duration(value), 0, DAY, above=above_zero)
        except ValueError as error:
            raise refuse_to_start("ratequeue-chaos soak", f"{option}: {error}") from None

    gap_seconds = duration(gap, "--gap", above_zero=False)
    settle_seconds = duration(settle, "--settle")
    service_back_seconds = duration(service_back, "--service-back")
    try:
        services = parse_services(kill_services) if kill_services else []
    except ValueError as error:
        raise refuse_to_start("ratequeue-chaos soak", f"--kill-services: {error}") from None
    try:
        compose_files = staging_compose_files(compose_file, control.value)
        endpoints = StagingEndpoints.from_environment(control.value)
    except ChaosError as error:
        raise refuse_to_start("ratequeue-chaos soak", str(error)) from None
    stop = threading.Event()

    def say(text: str) -> None:
        console.log(escape(text))

    try:
        results = run_soak(
            cycles,
            compose_files=compose_files,
            scenarios=scenarios,
            journal_dir=journal_dir,
            endpoints=endpoints,
            bring_up=up,
            take_down=down,
            gap_seconds=gap_seconds,
            settle_seconds=settle_seconds,
            growth_bytes_per_cycle=growth_allowance,
            say=say,
            stop=stop,
            services=services,
            service_back_seconds=service_back_seconds,
        )
    except CYCLE_ERRORS as error:
        raise refused(error, "soak") from None
    except KeyboardInterrupt:
        stop.set()
        raise typer.Exit(130) from None
    table = Table(title=f"soak: {len(results)} of {cycles} cycles")
    for column in ("cycle", "fault", "shard", "run", "acked", "undelivered", "late here",
                   "dequeues failed", "whole after", "containers", "control MiB", "growth",
                   "service", "ok"):  # fmt: skip
        table.add_column(column)
    for r in results:
        table.add_row(
            str(r.cycle),
            r.fault,
            r.shard,
            r.verdict,
            str(r.acknowledged),
            str(r.lost),
            describe_counts(r.late) or "-",
            str(r.failed_dequeues),
            "never" if r.settled_seconds is None else f"{r.settled_seconds:.1f} s",
            f"{r.containers} / {r.container_bound}",
            f"{r.control_memory / 2**20:.2f}",
            r.growth,
            r.service or "-",
            "yes" if r.ok else "[red]NO[/]: " + escape("; ".join(r.misses)),
        )
    Console(width=max(console.width, 150)).print(table)
    if len(results) < cycles or not all(r.ok for r in results):
        raise typer.Exit(1)


@app.command()
def report(
    journal_dir: Path = typer.Argument(
        ..., help="directory of run journals", exists=True, file_okay=False
    ),
    output: Path = typer.Option(None, "--output", help="default: JOURNAL_DIR/report.html"),
) -> None:
    """Write an HTML report (timeline per run, recovery trend) and a markdown summary."""
    from chaos.report import write_report

    unreadable: list[str] = []
    try:
        html, markdown = write_report(journal_dir, output, unreadable)
    except OSError as error:
        raise refused(error, "cannot write the report") from None
    _say_unreadable(unreadable)
    console.print(f"report: {html}\nsummary: {markdown}")


def _say_unreadable(unreadable: list[str]) -> None:
    """Name the journals a command left out (a run gone from the figures without a word would
    mislead whoever reads them)."""
    for problem in unreadable:
        console.print(f"[yellow]journal not read, left out:[/] {escape(problem)}")


@app.command()
def compare(
    journal_dir: Path = typer.Argument(
        ..., help="directory of run journals", exists=True, file_okay=False
    ),
    scenarios: list[Path] = typer.Argument(..., help="the experiment files the table lists"),
    output: Path = typer.Option(..., "--output", help="the markdown file to write"),
) -> None:
    """Write a markdown table of every scenario under every failover manager: the latest run
    of each in JOURNAL_DIR, or why that manager cannot run it."""
    from chaos.comparison import scenario_table
    from chaos.errors import ExperimentError
    from chaos.journal import read_journals
    from common.points_in_time import iso_utc

    unreadable: list[str] = []
    journals = read_journals(journal_dir, unreadable)
    _say_unreadable(unreadable)
    try:
        table = scenario_table(journals, scenarios)
    except ExperimentError as error:
        raise refused(error, "compare refused") from None
    runs = [j for j in journals if not j.dry_run and j.status == "completed"]
    when = (
        f"{len(runs)} runs from {iso_utc(runs[0].started_at)} to "
        f"{iso_utc(runs[-1].ended_at or runs[-1].started_at)}"
        if runs
        else "no completed runs"
    )
    command = "ratequeue-chaos compare JOURNAL_DIR " + " ".join(str(p) for p in scenarios)
    lines = [
        "# Every scenario under each failover manager",
        "",
        f"Written by `{command} --output {output}` ({when}). Each cell is the latest completed "
        "run of the scenario under that manager: its verdict, the acknowledged writes not "
        "delivered of those acknowledged (with, for a run that looked, how many of them were "
        "still held by a node of their shard at its end and how many gone), the recovery "
        "(fault to the first acknowledged write on the faulted shard; under Sentinel once it "
        "promoted, to the first one sent after the API routed to the promoted primary), and "
        "the hypotheses it broke or skipped; or why that manager cannot run it; or `not run`. "
        "Sentinel's down-after, as its runs reported it (Sentinel's own default is 30 s), is "
        "a line under the table for a column whose runs all agree, else in each cell.",
        "",
        *table,
    ]
    try:
        output.write_text("\n".join(lines) + "\n")
    except OSError as error:
        raise refused(error, "cannot write the table") from None
    console.print(f"table: {output}")


@app.command("export-journal")
def export_journal(
    journal: Path = typer.Argument(..., help="a run journal (JOURNAL_DIR/RUN_ID.json)"),
    output: Path = typer.Option(None, "--output", help="default: print to stdout"),
) -> None:
    """Write a run journal in Chaos Toolkit's journal shape (what `chaostoolkit run` writes)."""
    import json

    from pydantic import ValidationError

    from chaos.ctk.journals import to_ctk
    from chaos.journal import Journal
    from common.validation import describe_problems

    try:
        ours = Journal.model_validate_json(journal.read_text())
    except OSError as error:
        raise refused(error, "cannot read the journal") from None
    except ValidationError as error:
        raise refused(
            ValueError(f"{journal}: not a chaos run journal: {describe_problems(error)}")
        ) from None
    text = json.dumps(to_ctk(ours), indent=2, ensure_ascii=False)
    if output is None:
        print(text)
        return
    try:
        output.write_text(text + "\n")
    except OSError as error:
        raise refused(error, "cannot write the CTK journal") from None
    console.print(f"CTK journal: {output}")


@app.command()
@with_settings(AgentSettings, env_prefix="CHAOS_AGENT_", command_name="ratequeue-chaos agent")
def agent(settings: AgentSettings) -> None:
    """Serve a Gremlin-compatible attacks API on loopback; attacks run on this machine."""
    import os

    import uvicorn

    from chaos.agent.app import create_app, is_loopback
    from chaos.agent.state import Agent
    from chaos.agent.targets import TargetSource
    from chaos.faults.local.backend import LocalFaultBackend

    host, port, api_key_env = settings.host, settings.port, settings.api_key_env
    if not is_loopback(host):
        console.print(f"[red]ratequeue-chaos agent serves on loopback only, not {escape(host)}[/]")
        raise typer.Exit(2)
    api_key = os.environ.get(api_key_env, "")
    if not api_key:
        console.print(f"[red]no API key: set {api_key_env}[/]")
        raise typer.Exit(2)
    names = {name.strip() for item in settings.allow for name in item.split(",") if name.strip()}
    try:
        source = TargetSource(settings.targets)
    except ValueError as error:
        console.print(f"[red]{escape(str(error))}[/]")
        raise typer.Exit(2) from None
    unknown = sorted(names - set(source.get_all()))
    if unknown:
        console.print(f"[yellow]allowed but not in {settings.targets}: {', '.join(unknown)}[/]")
    try:
        service = Agent(api_key=api_key, allow=names, targets=source,
                        backend=LocalFaultBackend(chain=settings.chain),
                        team_id=os.environ.get(settings.team_id_env) or None)  # fmt: skip
    except ValueError as error:  # the key from the environment cannot be compared
        console.print(f"[red]{escape(api_key_env)}: {escape(str(error))}[/]")
        raise typer.Exit(2) from None
    allowed = ", ".join(sorted(names))
    console.print(f"ratequeue-chaos agent on http://{host}:{port}/v1, allowing {allowed}")
    uvicorn.run(create_app(service), host=host, port=port, log_level="info")
