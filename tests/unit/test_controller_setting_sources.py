"""`lazarus serve` takes the incident, resume, probe, forensics and rate-limit-override settings
from its options and from `LAZARUS_*` variables, and refuses a bad one naming it, before the
node is built. The node is not started: the settings it would have been built with are kept."""

from __future__ import annotations

import asyncio

import pytest
from typer.testing import CliRunner

from detection.streams import RedisEventStream
from lazarus_lite.cli import app
from lazarus_lite.service import open_stream
from lazarus_lite.settings import ControllerSettings

SERVE = ["serve", "--node-id", "n1", "--control", "redis://127.0.0.1:1/0",
         "--api-token", "a-token-of-sixteen-chars"]  # fmt: skip


@pytest.fixture
def built_with(monkeypatch: pytest.MonkeyPatch) -> list[ControllerSettings]:
    """The settings each accepted `serve` built its node with; nothing serves."""
    settings: list[ControllerSettings] = []

    def create_app(given: ControllerSettings) -> object:
        settings.append(given)
        return object()

    monkeypatch.setattr("lazarus_lite.service.create_app", create_app)
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: None)
    for name in ("INCIDENT_TTL", "RESUME_INTERVAL", "PROBE_TIMEOUT", "FORENSICS_INTERVAL",
                 "RATE_LIMIT_OVERRIDES"):  # fmt: skip
        monkeypatch.delenv(f"LAZARUS_{name}", raising=False)
    return settings


def serve(*options: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*SERVE, *options], env=env)
    assert isinstance(result.exception, SystemExit | None), repr(result.exception)
    return result.exit_code, "".join(result.output.split())


GIVEN = {"incident_ttl": "30", "resume_interval": "2.5", "probe_timeout": "0.75",
         "forensics_interval": "4"}  # fmt: skip


@pytest.mark.parametrize("source", ["option", "variable"])
def test_the_settings_are_taken_from_their_options_and_lazarus_variables(
    built_with: list[ControllerSettings], source: str
) -> None:
    if source == "option":
        options = [part for name, value in GIVEN.items()
                   for part in (f"--{name.replace('_', '-')}", value)]  # fmt: skip
        code, output = serve(*options, "--rate-limit-override", "sms=3",
                             "--rate-limit-override", "voice=40")  # fmt: skip
    else:
        env = {f"LAZARUS_{name.upper()}": value for name, value in GIVEN.items()}
        code, output = serve(env=env | {"LAZARUS_RATE_LIMIT_OVERRIDES": "sms=3 voice=40"})
    assert code == 0, output
    (settings,) = built_with
    assert (settings.incident_ttl, settings.resume_interval) == (30, 2.5)
    assert (settings.probe_timeout, settings.forensics_interval) == (0.75, 4)
    assert settings.rate_limit_overrides == {"sms": 3, "voice": 40}


def test_an_option_wins_over_its_variable(built_with: list[ControllerSettings]) -> None:
    code, output = serve("--incident-ttl", "30", env={"LAZARUS_INCIDENT_TTL": "90"})
    assert code == 0, output
    assert built_with[0].incident_ttl == 30


@pytest.mark.parametrize(
    ("option", "bad", "expected"),
    [("incident-ttl", "0", "greaterthan0"), ("resume-interval", "61", "lessthanorequalto60"),
     ("probe-timeout", "-1", "greaterthan0"), ("forensics-interval", "0", "greaterthan0"),
     ("rate-limit-override", "sms", "expectedSERVICE=N"),
     ("rate-limit-override", "sms=0", "greaterthanorequalto1"),
     ("rate-limit-override", "sms=many", "validinteger")],
)  # fmt: skip
@pytest.mark.parametrize("source", ["option", "variable"])
def test_a_bad_value_is_refused_naming_the_setting_and_what_was_expected(
    built_with: list[ControllerSettings], option: str, bad: str, expected: str, source: str
) -> None:
    setting = option.replace("-", "_").replace("override", "overrides")
    if source == "option":
        code, output = serve(f"--{option}", bad)
    else:
        code, output = serve(env={f"LAZARUS_{setting.upper()}": bad})
    assert code == 2 and "Traceback" not in output, output
    assert f"setting'{setting}" in output and expected in output, output
    assert not built_with


def test_a_quorum_timeout_whose_decisions_outlast_the_event_reclaim_is_refused_naming_both(
    built_with: list[ControllerSettings],
) -> None:
    code, output = serve("--quorum-timeout", "5", "--event-reclaim-seconds", "10")
    assert code == 2 and "Traceback" not in output, output
    assert "setting'event_reclaim_seconds" in output and "quorum_timeout" in output, output
    assert not built_with


def settings_with(**given: float) -> ControllerSettings:
    return ControllerSettings(
        node_id="n1",
        control_url="redis://127.0.0.1:1/0",
        api_token="a-token-of-sixteen-chars",
        **given,  # type: ignore[arg-type]
    )


# 3.5 s: three rounds (10.5 s) would outlast the reclaim; cut to 10 - (3.5 + store calls).
@pytest.mark.parametrize(
    ("quorum_timeout", "wait"), [(2.0, 6.0), (3.5, 5.5)], ids=["three rounds", "cut"]
)
def test_a_report_waits_for_a_decision_only_as_long_as_its_own_still_ends_before_the_reclaim(
    quorum_timeout: float, wait: float
) -> None:
    settings = settings_with(quorum_timeout=quorum_timeout, event_reclaim_seconds=10)
    assert settings.decision_wait == wait


def test_the_controllers_event_stream_reclaims_after_event_reclaim_seconds() -> None:
    stream = open_stream(settings_with(event_reclaim_seconds=7.5))
    try:
        assert isinstance(stream, RedisEventStream)
        assert stream._reclaim_idle_ms == 7500
    finally:
        asyncio.run(stream.close())
