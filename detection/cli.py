"""`detection` command line: run a heartbeat sensor beside a replica (`detection sensor`), or
check a replica's primary once as a Nagios plugin (`detection check`).

For: starting sensors (by hand, from the testbed, from a unit file) and Nagios/NRPE.
Not for: remediation; that is `lazarus`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from typing import Any

import typer
from typer.core import TyperCommand

from common.settings_options import refuse_to_start, setting_named, with_settings
from common.validation import without_passwords
from common.version import add_version_option, testbed_version
from detection import nagios
from detection.errors import UsageProblem
from detection.metrics import SensorMetrics
from detection.sensor import Sensor, SensorConfig
from detection.settings import SensorSettings

app = typer.Typer(
    help="Heartbeat sensors that watch Redis primaries, and the same check as a Nagios plugin.",
    no_args_is_help=True,
)
add_version_option(app, "detection")


def _refuse(setting: str, problem: object) -> typer.Exit:
    named = setting_named(SensorSettings, "FAILOVER_", setting)
    return refuse_to_start("detection sensor", f"{named}: {problem}")


@app.command()
@with_settings(SensorSettings, env_prefix="FAILOVER_", command_name="detection sensor")
def sensor(settings: SensorSettings) -> None:
    """Watch the primary of one replica and publish RedisMasterDown / RedisMasterRecovered /
    SensorHeartbeat events. Runs until SIGTERM or SIGINT."""
    config = settings.sensor_config()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    kinesis = {"kinesis_stream": settings.kinesis_stream, "kinesis_region": settings.kinesis_region,
               "kinesis_endpoint": settings.kinesis_endpoint}  # fmt: skip
    pager_config = None
    if settings.notifications is not None:
        from notifications.config import load_notification_config
        from notifications.errors import NotificationConfigError

        try:
            pager_config = load_notification_config(settings.notifications)
        except NotificationConfigError as error:
            raise _refuse("notifications", error) from None
    metrics = SensorMetrics()
    if settings.metrics_port is not None:
        try:
            metrics.serve(settings.metrics_port, settings.metrics_host)
        except OSError as error:
            raise _refuse("metrics_port", error) from None
    try:
        asyncio.run(_run_sensor(config, settings.stream, kinesis, pager_config, metrics))
    except ValueError as error:  # a control URL redis-py refuses
        raise _refuse("control_url", without_passwords(str(error))) from None
    finally:
        metrics.close()


def _open_stream(config: SensorConfig, backend: str, kinesis: dict[str, Any]) -> Any:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    if backend == "redis":
        from detection.streams import RedisEventStream

        # Short timeouts, no retries: a publish that cannot finish is retried on the next cycle.
        connection = aioredis.Redis.from_url(
            config.control_url,
            socket_timeout=config.control_timeout,
            socket_connect_timeout=config.control_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        return RedisEventStream(connection)
    from detection.stream_factory import open_event_stream

    return open_event_stream(backend, config.control_url, **kinesis)


async def _run_sensor(
    config: SensorConfig,
    backend: str,
    kinesis: dict[str, Any],
    pager_config: Any = None,
    metrics: SensorMetrics | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    event_stream = _open_stream(config, backend, kinesis)
    pager = None
    if pager_config is not None:
        from notifications.notifier import Notifier

        # The sensor only triggers pages; deadlines are the controller's to enforce.
        pager = Notifier(pager_config)
    try:
        async with Sensor(config, event_stream, pager=pager, metrics=metrics) as watcher:
            await watcher.run(stop)
    finally:
        with contextlib.suppress(Exception):
            await event_stream.close()
        if pager is not None:
            with contextlib.suppress(Exception):
                await pager.aclose()
    logging.getLogger(__name__).info("%s: stopped", config.source)


# Nagios plugin guidelines: bad arguments are UNKNOWN (3), never CRITICAL (2, "the primary is
# down"). So every option is taken as text and parsed here, and unknown options are collected
# instead of being refused by the option parser (which would exit 2). The Monitoring Plugins
# Interface (02.Input.md) also fixes -h/--help and -V/--version: print, then exit UNKNOWN (3),
# so click's own --help (exit 0) is replaced.
# click's UsageError (a missing value, an option given twice wrongly...): typer exports only its
# subclass BadParameter, and recent typer vendors its own click, so `click.UsageError` would be
# the wrong class.
OPTION_PARSER_ERROR: type[Exception] = typer.BadParameter.__base__  # type: ignore[assignment]


class NagiosCheckCommand(TyperCommand):
    """The check's options, parsed so that what the option parser itself refuses (an option
    missing its value, e.g. `-t` last) is UNKNOWN with a status line too, not click's exit 2."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        as_json = "--json" in args
        try:
            return super().parse_args(ctx, args)
        except OPTION_PARSER_ERROR as problem:
            outcome = nagios.unknown(problem.format_message())  # type: ignore[attr-defined]
            typer.echo(json.dumps(outcome.as_json()) if as_json else outcome.line())
            raise typer.Exit(outcome.exit_code) from None


CHECK_COMMAND_SETTINGS: dict[str, Any] = {
    "cls": NagiosCheckCommand,
    "context_settings": {
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": [],
    },
}

# The check alone, as the `check_ratequeue_primary` plugin: under `detection check` a mistyped
# option before `check` or a misspelled `check` is the group's usage error, exit 2, which Nagios
# shows as CRITICAL (a false "primary down" page). With no group, every bad argument is UNKNOWN.
nagios_plugin = typer.Typer(add_completion=False)


@nagios_plugin.command(**CHECK_COMMAND_SETTINGS)
@app.command(**CHECK_COMMAND_SETTINGS)
def check(
    ctx: typer.Context,
    replica: str = typer.Option(
        None, metavar="HOST:PORT", help="the replica (its peer address), required"
    ),
    primary: str = typer.Option(
        None,
        metavar="HOST:PORT",
        help="the primary to PING (default: the replica's master_host:master_port)",
    ),
    warning_io_seconds: str = typer.Option(
        "2",
        metavar="SECONDS",
        help="WARNING when the replica's last I/O from its primary is older than this",
    ),
    critical_io_seconds: str = typer.Option(
        "5", metavar="SECONDS", help="CRITICAL when it is older than this"
    ),
    timeout: str = typer.Option(
        "10",
        "-t",
        "--timeout",
        metavar="DURATION",
        help="the whole check's limit (10, 10s, 500ms); UNKNOWN when it is reached",
    ),
    probe_timeout: str = typer.Option(
        "1",
        metavar="DURATION",
        help="how long each probe may take; a primary that does not answer PING in it is CRITICAL",
    ),
    json_output: bool = typer.Option(
        False, "--json", help="one JSON document (status, summary, perfdata) instead of the line"
    ),
    show_help: bool = typer.Option(False, "-h", "--help", help="show this help; exits 3"),
    show_version: bool = typer.Option(False, "-V", "--version", help="show the version; exits 3"),
) -> None:
    """Check the primary of a replica once, as a Nagios plugin: exit 0 OK, 1 WARNING,
    2 CRITICAL, 3 UNKNOWN (also for bad options, -h and -V), and one status line with
    perfdata."""
    if show_help or show_version:
        name = "detection check" if ctx.parent is not None else "check_ratequeue_primary"
        typer.echo(ctx.get_help() if show_help else f"{name} {testbed_version()}")
        raise typer.Exit(int(nagios.Status.UNKNOWN))
    try:
        request = nagios.parse_request(
            replica=replica, primary=primary, warning_io_seconds=warning_io_seconds,
            critical_io_seconds=critical_io_seconds, timeout=timeout,
            probe_timeout=probe_timeout, extra=ctx.args,
        )  # fmt: skip
    except UsageProblem as problem:
        outcome = nagios.unknown(str(problem))
    else:
        outcome = asyncio.run(nagios.run_request(request))
    typer.echo(json.dumps(outcome.as_json()) if json_output else outcome.line())
    raise typer.Exit(outcome.exit_code)
