"""Every setting of every service is a command-line flag and an environment variable, made from
the service's settings model: each field below is taken from the model itself, so a field added
without either fails here. A flag wins over its variable, which wins over the default; `--help`
shows defaults and variables and never a secret; a bad value refuses to start naming the setting
and where it came from; README's table is the models'. Nothing is started: the settings each
command would start with are kept."""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import NoneType, UnionType

import annotated_types
import pytest
import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from typer.testing import CliRunner

from chaos.agent.settings import AgentSettings
from chaos.cli import app as chaos_app
from chaos.schedule_settings import ScheduleSettings
from common import settings_options
from common.settings import parse_settings
from common.settings_options import SettingOption, setting_named, setting_option
from common.settings_reference import README, readme_with_table
from common.validation import quoted, without_passwords
from detection import cli as detection_cli
from detection.cli import app as detection_app
from detection.errors import InvalidSensorConfig
from detection.sensor import SensorConfig
from detection.settings import SENSOR_CONFIG_FIELDS, SensorSettings
from lazarus_lite.cli import app as lazarus_app
from lazarus_lite.settings import ControllerSettings
from ratequeue.cli import app as ratequeue_app
from ratequeue.config import InitialTopologySettings, ServiceSettings

CONTROL = "redis://127.0.0.1:1/0"
TOKEN = "a-token-of-sixteen-chars"
# Given to every service that can keep its state in etcd: its etcd backend needs endpoints.
ETCD = "http://127.0.0.1:2379"


@dataclass(frozen=True)
class Service:
    name: str
    app: typer.Typer
    command: str
    model: type[BaseModel]
    env_prefix: str
    needs: dict[str, str | list[str]] = field(default_factory=dict)  # what every start needs

    def __str__(self) -> str:
        return self.name

    def option(self, name: str) -> SettingOption:
        return setting_option(name, self.model.model_fields[name], self.env_prefix)


SERVICES = [
    Service("ratequeue serve", ratequeue_app, "serve", ServiceSettings, "RATEQUEUE_",
            {"control_url": CONTROL, "etcd_endpoints": ETCD}),
    Service("ratequeue topology-init", ratequeue_app, "topology-init", InitialTopologySettings,
            "RATEQUEUE_", {"shards": ["s0=127.0.0.1:7000"]}),
    Service("lazarus serve", lazarus_app, "serve", ControllerSettings, "LAZARUS_",
            {"node_id": "n1", "control_url": CONTROL, "api_token": TOKEN, "etcd_endpoints": ETCD}),
    Service("detection sensor", detection_app, "sensor", SensorSettings, "FAILOVER_",
            {"control_url": CONTROL, "replica": "127.0.0.2:7001"}),
    Service("ratequeue-chaos agent", chaos_app, "agent", AgentSettings, "CHAOS_AGENT_",
            {"targets": "targets.yaml", "allow": ["s0-primary"]}),
    Service("ratequeue-chaos run", chaos_app, "run", ScheduleSettings, "CHAOS_"),
]  # fmt: skip
# What else a command needs: `topology-init`'s store (`ServiceSettings`'), `run`'s experiment.
ALSO_NEEDED = {"ratequeue topology-init": ["--control", CONTROL],
               "ratequeue-chaos run": ["scenarios/replica_kill.yaml"]}  # fmt: skip
# What a setting needs beside it to mean anything (a jitter moves a schedule's run times).
COMPANIONS: dict[tuple[str, str], dict[str, str]] = {
    ("ratequeue-chaos run", "jitter"): {"every": "4h"}
}


def companion_flags(service: Service, name: str) -> list[str]:
    given = COMPANIONS.get((service.name, name), {})
    return [
        part for other, value in given.items() for part in as_flags(service.option(other), value)
    ]


# Values a model accepts for fields whose type alone does not say one.
EXAMPLES: dict[str, str | list[str]] = {
    "control_url": "redis://127.0.0.1:7/1",
    "etcd_endpoints": "http://127.0.0.1:2381",
    "sentinels": "127.0.0.1:26379,127.0.0.1:26380,127.0.0.1:26381",
    "replica": "127.0.0.2:7002",
    "peers": ["http://127.0.0.1:9001", "http://127.0.0.1:9002"],
    "api_token": "another-token-of-sixteen",
    "replica_maxmemory": "1gb",
    "rate_limit_overrides": ["sms=3", "voice=40"],
    "shards": ["s0=127.0.0.1:7000", "s1=127.0.0.1:7001"],
    "cron": "0 */4 * * *",
    "every": "4h",  # a schedule runs at most once a minute
    "journal_url": "https://chaos.example/journals",
}


def _bare(annotation: object) -> object:
    if typing.get_origin(annotation) in (typing.Union, UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not NoneType]
    return annotation


def _within(info: FieldInfo, value: float) -> bool:
    checks = {
        annotated_types.Ge: lambda bound: value >= bound.ge,
        annotated_types.Gt: lambda bound: value > bound.gt,
        annotated_types.Le: lambda bound: value <= bound.le,
        annotated_types.Lt: lambda bound: value < bound.lt,
    }
    return all(checks[type(bound)](bound) for bound in info.metadata if type(bound) in checks)


def _number(info: FieldInfo, kind: type) -> str:
    """A number within the field's bounds that is not its default."""
    default = info.default if isinstance(info.default, int | float) else 0
    candidate = next(c for c in (default + 1, default - 1, default / 2, 1) if _within(info, c))
    return str(kind(candidate))


def example(name: str, info: FieldInfo) -> str | list[str]:
    """A value the field takes that is not its default, as a flag or variable gives it."""
    if name in EXAMPLES:
        return EXAMPLES[name]
    annotation = _bare(info.annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return next(str(c) for c in typing.get_args(annotation) if c != info.default)
    if annotation is bool:
        return "false" if info.default else "true"
    if annotation in (int, float):
        return _number(info, annotation)
    if typing.get_origin(annotation) in (list, dict):
        return [f"{name}-1", f"{name}-2"]
    return f"{name}-example"


def as_flags(option: SettingOption, value: str | list[str]) -> list[str]:
    if option.switch:
        return [option.flag if value == "true" else f"--no-{option.flag[2:]}"]
    values = value if isinstance(value, list) else [value]
    return [part for item in values for part in (option.flag, item)]


def as_variable(value: str | list[str]) -> str:
    return " ".join(value) if isinstance(value, list) else value


# Runs a service's command: the settings it would start with, or (exit code, output).
Start = Callable[..., BaseModel | tuple[int, str]]


class Started(Exception):
    """The command validated its settings and would start now."""

    def __init__(self, settings: BaseModel) -> None:
        self.settings = settings


# Every service's variables (CHAOS_ covers the agent's CHAOS_AGENT_ too).
SERVICE_VARIABLES = ("RATEQUEUE_", "LAZARUS_", "FAILOVER_", "CHAOS_")


@pytest.fixture(autouse=True)
def no_service_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith(SERVICE_VARIABLES):
            monkeypatch.delenv(name)


@pytest.fixture
def start(monkeypatch: pytest.MonkeyPatch) -> Start:
    """Run a service's command with the given flags and variables; the settings it would start
    with (raised as `Started` before anything starts), or its exit code and output."""
    parse = settings_options._parse

    def run(
        service: Service, flags: list[str], env: dict[str, str] | None = None, leave: str = ""
    ) -> BaseModel | tuple[int, str]:
        def parsed(model: type[BaseModel], values: dict, origins: dict) -> BaseModel:
            settings = parse(model, values, origins)
            if model is service.model:
                raise Started(settings)
            return settings

        monkeypatch.setattr(settings_options, "_parse", parsed)
        needed = [part for name, value in service.needs.items() if name != leave
                  for part in as_flags(service.option(name), value)]  # fmt: skip
        args = [service.command, *needed, *ALSO_NEEDED.get(service.name, []), *flags]
        result = CliRunner().invoke(service.app, args, env=env)
        if isinstance(result.exception, Started):
            return result.exception.settings
        assert isinstance(result.exception, SystemExit | None), repr(result.exception)
        return result.exit_code, result.output

    return run


def every_field() -> list[typing.Any]:
    """(service, field) for every field of every service's model: a new field is tested too."""
    return [pytest.param(service, name, id=f"{service}-{name}")
            for service in SERVICES for name in service.model.model_fields]  # fmt: skip


def numeric_field(service: Service) -> str:
    return next(name for name, info in service.model.model_fields.items()
                if _bare(info.annotation) in (int, float) and not info.is_required())  # fmt: skip


def given_directly(service: Service, name: str, value: str | list[str]) -> object:
    """What the model itself makes of `value` (the value of a flag or variable)."""
    if service.option(name).many and not isinstance(value, list):
        value = value.split()
    companions = COMPANIONS.get((service.name, name), {})
    return getattr(
        parse_settings(service.model, {**service.needs, **companions, name: value}), name
    )


@pytest.mark.parametrize(("service", "name"), every_field())
def test_every_setting_is_taken_from_its_flag(start: Start, service: Service, name: str) -> None:
    value = example(name, service.model.model_fields[name])
    companions = companion_flags(service, name)
    settings = start(service, [*as_flags(service.option(name), value), *companions], leave=name)
    assert isinstance(settings, BaseModel), settings
    assert getattr(settings, name) == given_directly(service, name, value)
    assert getattr(settings, name) != service.model.model_fields[name].get_default(
        call_default_factory=True
    )


@pytest.mark.parametrize(("service", "name"), every_field())
def test_every_setting_is_taken_from_its_environment_variable(
    start: Start, service: Service, name: str
) -> None:
    value = example(name, service.model.model_fields[name])
    option = service.option(name)
    companions = companion_flags(service, name)
    settings = start(service, companions, env={option.env: as_variable(value)}, leave=name)
    assert isinstance(settings, BaseModel), settings
    assert getattr(settings, name) == given_directly(service, name, value)


@pytest.mark.parametrize("service", SERVICES, ids=str)
def test_a_flag_wins_over_its_variable(start: Start, service: Service) -> None:
    name = numeric_field(service)
    option = service.option(name)
    flag_value = example(name, service.model.model_fields[name])
    settings = start(service, [option.flag, flag_value], env={option.env: "not-a-number"})
    assert isinstance(settings, BaseModel), settings
    assert getattr(settings, name) == given_directly(service, name, flag_value)


@pytest.mark.parametrize("service", SERVICES, ids=str)
def test_a_setting_given_neither_way_is_the_models_default(start: Start, service: Service) -> None:
    settings = start(service, [])
    assert isinstance(settings, BaseModel), settings
    assert settings == parse_settings(service.model, service.needs)


@pytest.mark.parametrize("service", SERVICES, ids=str)
def test_a_bad_variable_refuses_to_start_naming_the_setting_and_the_variable(
    start: Start, service: Service
) -> None:
    name = numeric_field(service)
    outcome = start(service, [], env={service.option(name).env: "not-a-number"})
    assert not isinstance(outcome, BaseModel), "started with a bad setting"
    code, output = outcome
    assert code == 2 and "Traceback" not in output, output
    assert f"refusing to start: setting '{name}' ({service.option(name).env}): " in output


def help_text(service: Service, env: dict[str, str] | None = None) -> str:
    """`--help` without the layout: no spaces, line breaks or box lines."""
    wide = {"COLUMNS": "240", "TERMINAL_WIDTH": "240"}
    result = CliRunner().invoke(service.app, [service.command, "--help"], env=wide | (env or {}))
    assert result.exit_code == 0, result.output
    return "".join(result.output.replace("│", "").split())


@pytest.mark.parametrize("service", SERVICES, ids=str)
def test_help_shows_every_settings_flag_variable_and_default(service: Service) -> None:
    shown = help_text(service)
    for name in service.model.model_fields:
        option = service.option(name)
        assert option.flag in shown and f"[envvar:{option.env}]" in shown, name
        if not (option.required or option.secret):
            assert f"[default:{''.join(option.default.split())}]" in shown, name


def test_help_never_shows_a_secret_nor_its_value_from_the_environment() -> None:
    (lazarus,) = [service for service in SERVICES if service.name == "lazarus serve"]
    secret = "the-value-nobody-may-see-1234"
    shown = help_text(lazarus, env={"LAZARUS_API_TOKEN": secret})
    assert lazarus.option("api_token").secret
    assert secret not in shown


def test_the_readme_settings_table_is_the_models() -> None:
    current = README.read_text()
    assert readme_with_table(current) == current, "run: python -m common.settings_reference"


def service_named(name: str) -> Service:
    (found,) = [service for service in SERVICES if service.name == name]
    return found


def test_a_bad_true_false_variable_refuses_to_start_in_the_one_shape(start: Start) -> None:
    outcome = start(service_named("lazarus serve"), [], env={"LAZARUS_REJOIN_RETURNING": "maybe"})
    assert not isinstance(outcome, BaseModel), "started with a bad setting"
    code, output = outcome
    assert code == 2 and "Usage:" not in output, output
    assert "lazarus serve: refusing to start: setting 'rejoin_returning' " in output
    assert "(LAZARUS_REJOIN_RETURNING): " in output


def test_a_true_false_variable_is_read_as_the_model_reads_it(start: Start) -> None:
    settings = start(service_named("lazarus serve"), [], env={"LAZARUS_REJOIN_RETURNING": "no"})
    assert isinstance(settings, ControllerSettings), settings
    assert settings.rejoin_returning is False


@pytest.mark.parametrize(
    ("service", "backend"),
    [("ratequeue serve", "RATEQUEUE_TOPOLOGY_BACKEND"),
     ("lazarus serve", "LAZARUS_COORDINATION_BACKEND")],
)  # fmt: skip
def test_etcd_without_endpoints_is_refused_naming_the_setting_and_how_to_give_it(
    start: Start, service: str, backend: str
) -> None:
    outcome = start(service_named(service), [], env={backend: "etcd"}, leave="etcd_endpoints")
    assert not isinstance(outcome, BaseModel), "started without etcd endpoints"
    code, output = outcome
    option = service_named(service).option("etcd_endpoints")
    assert code == 2, output
    assert f"setting 'etcd_endpoints' ({option.flag} or {option.env}): required" in output


@pytest.mark.parametrize(
    ("flags", "refusal"),
    [(["--topology-backend", "sentinel"],
      "setting 'sentinels' (--sentinels or RATEQUEUE_SENTINELS): required"),
     (["--sentinels", "garbage"],  # with the redis backend: refused, not ignored
      "setting 'sentinels' (--sentinels): 'garbage' is not host:port")],
)  # fmt: skip
def test_sentinels_the_api_cannot_follow_are_refused_naming_the_setting(
    start: Start, flags: list[str], refusal: str
) -> None:
    outcome = start(service_named("ratequeue serve"), flags, leave="sentinels")
    assert not isinstance(outcome, BaseModel), "started with sentinels it cannot follow"
    code, output = outcome
    assert code == 2 and refusal in output, output


def test_a_local_actuator_without_its_directory_names_the_directory_setting(start: Start) -> None:
    outcome = start(service_named("lazarus serve"), ["--actuator", "local"])
    assert not isinstance(outcome, BaseModel), "started a local actuator without a directory"
    code, output = outcome
    assert code == 2, output
    assert "setting 'actuator_dir' (--actuator-dir or LAZARUS_ACTUATOR_DIR): required" in output


@pytest.mark.parametrize(
    ("given", "level"),
    [("WARN", "warning"), ("fatal", "critical"), ("NOTSET", "notset"), ("Debug", "debug")],
)
def test_the_sensor_takes_every_level_name_logging_takes(
    start: Start, given: str, level: str
) -> None:
    settings = start(service_named("detection sensor"), ["--log-level", given])
    assert isinstance(settings, SensorSettings), settings
    assert settings.log_level == level


def test_a_bundled_path_default_is_labelled_as_bundled() -> None:
    rules = service_named("lazarus serve").option("rules")
    assert rules.default == "(bundled) lazarus_lite/definitions/rules"
    assert "[default: (bundled) lazarus_lite/definitions/rules]" in rules.help


def test_a_relative_path_default_is_shown_as_given() -> None:
    assert settings_options._default_text(Path("chaos-journals")) == "chaos-journals"


def test_a_bad_control_url_is_refused_without_its_password(start: Start) -> None:
    secret = "hunter2-password"
    url = f"redis://:{secret}@127.0.0.1:70000/0"
    outcome = start(service_named("ratequeue serve"), [], env={"RATEQUEUE_CONTROL_URL": url},
                    leave="control_url")  # fmt: skip
    assert not isinstance(outcome, BaseModel), "started with a bad control URL"
    code, output = outcome
    assert code == 2 and "setting 'control_url' (RATEQUEUE_CONTROL_URL)" in output, output
    assert secret not in output


def test_a_quoted_url_hides_its_password_and_keeps_the_rest() -> None:
    assert quoted("redis://user:pw@host:6379/0") == "'redis://user:***@host:6379/0'"
    assert without_passwords("see http://a:b@h:1/x and redis://:c@h") == (
        "see http://a:***@h:1/x and redis://:***@h"
    )


def test_a_default_url_in_help_hides_its_password() -> None:
    assert settings_options._default_text("redis://:pw@h:1/0") == "redis://:***@h:1/0"


def test_a_check_after_start_names_the_source_the_value_came_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`setting_named` inside a command says the flag or variable that gave the value."""
    seen: list[str] = []

    def metrics_checked() -> None:  # stands in for SensorMetrics: a check the command makes
        seen.append(setting_named(SensorSettings, "FAILOVER_", "metrics_port"))
        raise typer.Exit(0)

    monkeypatch.setattr(detection_cli, "SensorMetrics", metrics_checked)
    needs = ["--control", CONTROL, "--replica", "127.0.0.2:7001"]
    CliRunner().invoke(detection_app, ["sensor", *needs, "--metrics-port", "9"])
    CliRunner().invoke(detection_app, ["sensor", *needs], env={"FAILOVER_METRICS_PORT": "9"})
    CliRunner().invoke(detection_app, ["sensor", *needs])
    assert seen == [
        "setting 'metrics_port' (--metrics-port)",
        "setting 'metrics_port' (FAILOVER_METRICS_PORT)",
        "setting 'metrics_port' (--metrics-port or FAILOVER_METRICS_PORT)",
    ]


def test_a_sensor_metrics_port_in_use_is_refused_in_the_one_shape(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        needs = ["--control", CONTROL, "--replica", "127.0.0.2:7001"]
        result = CliRunner().invoke(detection_app, ["sensor", *needs, "--metrics-port", port])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(
        "detection sensor: refusing to start: setting 'metrics_port' (--metrics-port): "
    ), result.output


def test_sensor_notifications_that_do_not_load_are_refused_in_the_one_shape(
    tmp_path: Path,
) -> None:
    channels = tmp_path / "channels.yaml"
    channels.write_text("not: [a, channels, file\n")
    result = CliRunner().invoke(detection_app, ["sensor", "--control", CONTROL, "--replica",
                                                "127.0.0.2:7001"],
                                env={"FAILOVER_NOTIFICATIONS": str(channels)})  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.output.startswith(
        "detection sensor: refusing to start: setting 'notifications' (FAILOVER_NOTIFICATIONS): "
    ), result.output


def test_the_sensor_gets_every_setting_its_configuration_has() -> None:
    """No field of SensorConfig can be left out: each is a sensor setting, passed on as given."""
    sensor = service_named("detection sensor")
    given = {name: example(name, SensorSettings.model_fields[name])
             for name in SENSOR_CONFIG_FIELDS if name not in ("name", "environment")}  # fmt: skip
    config = parse_settings(SensorSettings, {**sensor.needs, **given}).sensor_config()
    for name in SENSOR_CONFIG_FIELDS:
        assert name in SensorSettings.model_fields, name
    for name, value in given.items():
        assert getattr(config, name) == given_directly(sensor, name, value), name


def test_every_sensor_setting_defaults_to_the_sensors_own_default() -> None:
    for config_field in dataclasses.fields(SensorConfig):
        if config_field.default is not dataclasses.MISSING:
            info = SensorSettings.model_fields[config_field.name]
            assert info.default == config_field.default, config_field.name


@pytest.mark.parametrize(
    ("name", "value"), [("interval", "0"), ("threshold", "0"), ("topology_refresh", "-1")]
)
def test_a_sensor_bound_is_the_sensors_own_and_refused_naming_its_variable(
    start: Start, name: str, value: str
) -> None:
    sensor = service_named("detection sensor")
    outcome = start(sensor, [], env={sensor.option(name).env: value})
    assert not isinstance(outcome, BaseModel), "started with a value out of bounds"
    code, output = outcome
    assert code == 2, output
    assert f"refusing to start: setting '{name}' ({sensor.option(name).env}): {value}" in output
    with pytest.raises(InvalidSensorConfig):
        SensorConfig(control_url=CONTROL, replica="127.0.0.2:7001", **{name: float(value)})


def test_no_scheduler_variable_is_taken_for_one_of_the_agents() -> None:
    run, agent = service_named("ratequeue-chaos run"), service_named("ratequeue-chaos agent")
    scheduler = {run.option(name).env for name in ScheduleSettings.model_fields}
    agents = {agent.option(name).env for name in AgentSettings.model_fields}
    assert not {env for env in scheduler if env.startswith("CHAOS_AGENT_")}
    assert not scheduler & agents


def test_what_one_chaos_run_asks_stays_an_argument_not_a_setting() -> None:
    for per_invocation in ("experiments", "dry_run", "json_output"):
        assert per_invocation not in ScheduleSettings.model_fields
    shown = help_text(service_named("ratequeue-chaos run"))
    assert "CHAOS_DRY_RUN" not in shown and "CHAOS_JSON" not in shown


def test_the_scheduler_takes_its_schedule_from_its_variables(start: Start) -> None:
    env = {"CHAOS_EVERY": "4h", "CHAOS_JITTER": "10m", "CHAOS_JOURNAL_DIR": "/journals"}
    settings = start(service_named("ratequeue-chaos run"), [], env=env)
    assert isinstance(settings, ScheduleSettings), settings
    assert (settings.every, settings.jitter, settings.journal_dir) == (
        4 * 3600.0, 600.0, Path("/journals"))  # fmt: skip


def test_a_bad_scheduler_duration_is_refused_naming_its_variable(start: Start) -> None:
    outcome = start(service_named("ratequeue-chaos run"), [], env={"CHAOS_EVERY": "often"})
    assert not isinstance(outcome, BaseModel), "started with a bad duration"
    code, output = outcome
    assert code == 2, output
    assert output.startswith("ratequeue-chaos run: refusing to start: setting 'every' "
                             "(CHAOS_EVERY): "), output  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "refusal"),
    [
        (["--every", "0"], "setting 'every' (--every): must be at least 1 min and at most "
                           "30 days, not 0 s"),
        (["--every", "59s"], "setting 'every' (--every): must be at least 1 min and at most "
                             "30 days, not 59 s"),
        (["--every", "99999999h"], "setting 'every' (--every): must be at least 1 min and at "
                                   "most 30 days, not 99999999 h"),
        (["--every", "4h", "--jitter", "99999999h"], "setting 'jitter' (--jitter): must be at "
                                                     "least 0 s and at most 30 days"),
        (["--jitter", "10m"], "setting 'jitter' (--jitter): moves a schedule's run times: "
                              "give --every or --cron"),
        (["--every", "4h", "--jitter", "5h"], "setting 'jitter' (--jitter): 18000 s could start "
                                              "two runs less than 60 s apart (the schedule's runs "
                                              "are 14400 s apart); at most 7170 s"),
        (["--cron", "*/5 * * * *", "--jitter", "3m"], "setting 'jitter' (--jitter): 180 s could "
                                                     "start two runs less than 60 s apart (the "
                                                     "schedule's runs are 300 s apart); at most "
                                                     "120 s"),
    ],
)  # fmt: skip
def test_a_schedule_interval_out_of_range_is_refused_naming_the_option_and_the_range(
    start: Start, flags: list[str], refusal: str
) -> None:
    outcome = start(service_named("ratequeue-chaos run"), flags)
    assert not isinstance(outcome, BaseModel), f"started with {flags}"
    code, output = outcome
    assert code == 2, output
    assert " ".join(output.split()).startswith(
        f"ratequeue-chaos run: refusing to start: {refusal}"
    ), output


# The names deployments and launchers use, listed as they use them (not made from the models, so
# renaming a field cannot quietly break them): docker-compose.yml's environment and commands,
# and the command lines chaos/testbed.py, lazarus_lite/actuators.py and docker_actuator.py run.
DEPENDED_ON = [
    pytest.param(ratequeue_app, "serve",
                 ["--control", "--host", "--port", "--log-level", "--workers",
                  "--topology-backend", "--etcd-endpoints"],
                 ["RATEQUEUE_CONTROL_URL"], id="ratequeue serve"),
    pytest.param(ratequeue_app, "topology-init",
                 ["--control", "--shard", "--wait", "--peer-host", "--etcd-endpoints"], [],
                 id="ratequeue topology-init"),
    pytest.param(lazarus_app, "serve",
                 ["--control", "--node-id", "--host", "--port", "--peer", "--quorum",
                  "--actuator-dir", "--log-level", "--api-token", "--forensics-dir",
                  "--replica-maxmemory", "--coordination-backend", "--etcd-endpoints",
                  "--rate-limit-override"],
                 ["LAZARUS_CONTROL_URL", "LAZARUS_API_TOKEN", "LAZARUS_QUORUM", "LAZARUS_REGION",
                  "LAZARUS_LOG_LEVEL", "LAZARUS_ACTUATOR", "LAZARUS_DOCKER_DEPLOYMENT",
                  "LAZARUS_DOCKER_CLIENT_NETWORK", "LAZARUS_DOCKER_PEER_NETWORK",
                  "LAZARUS_DOCKER_REDIS_IMAGE", "LAZARUS_DOCKER_IMAGE"],
                 id="lazarus serve"),
    pytest.param(detection_app, "sensor",
                 ["--control", "--replica", "--name", "--source-host", "--etcd-endpoints",
                  "--ping-timeout"],
                 ["FAILOVER_CONTROL_URL", "FAILOVER_ENVIRONMENT", "FAILOVER_REGION",
                  "FAILOVER_LOG_LEVEL"],
                 id="detection sensor"),
    pytest.param(chaos_app, "run", ["--target", "--every", "--jitter", "--journal-dir"], [],
                 id="ratequeue-chaos run"),
]  # fmt: skip


@pytest.mark.parametrize(("app", "command", "flags", "variables"), DEPENDED_ON)
def test_the_flags_and_variables_deployments_use_still_exist(
    app: typer.Typer, command: str, flags: list[str], variables: list[str]
) -> None:
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    declared = {flag for param in click_command.params
                for flag in (*param.opts, *param.secondary_opts)}  # fmt: skip
    read = {param.envvar for param in click_command.params if param.envvar}
    assert not set(flags) - declared, "flags a launcher passes are gone"
    assert not set(variables) - read, "variables a deployment sets are gone"


def test_help_never_shows_a_control_urls_password_from_the_environment() -> None:
    secret = "pw-nobody-may-see-5678"
    url = f"redis://:{secret}@127.0.0.1:6379/0"
    shown = help_text(service_named("lazarus serve"), env={"LAZARUS_CONTROL_URL": url})
    assert "LAZARUS_CONTROL_URL" in shown and secret not in shown
