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
                 "RATE_LIMIT_OVERRIDES", "PEERS", "HOST", "PORT"):  # fmt: skip
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


# A peer listed twice, under the spellings one URL has, or this node's own address as a peer:
# its verdict would be asked twice and count as two nodes.
@pytest.mark.parametrize(
    ("peers", "listen", "expected"),
    [(["http://127.0.0.1:9001", "http://127.0.0.1:9001/"], [], "listedtwice"),
     (["http://Lazarus2:8090", "http://lazarus2:8090"], [], "ishttp://Lazarus2:8090again"),
     (["http://lazarus2", "http://lazarus2:80/"], [], "ishttp://lazarus2again"),
     (["https://lazarus2/", "https://lazarus2:443"], [], "ishttps://lazarus2again"),
     (["http://127.0.0.1:9001/"], ["--port", "9001"], "thisnode'sownaddress"),
     (["https://127.0.0.1:9001"], ["--port", "9001"], "thisnode'sownaddress"),
     (["http://127.0.0.2:9001"], ["--host", "0.0.0.0", "--port", "9001"],
      "thisnode'sownaddress")],
    ids=["trailing slash", "host case", "default port", "default https port", "own address",
         "own address, another scheme", "a loopback address of every address"],
)  # fmt: skip
@pytest.mark.parametrize("source", ["option", "variable"])
def test_a_peer_listed_twice_or_this_nodes_own_address_is_refused_naming_the_peers_setting(
    built_with: list[ControllerSettings],
    peers: list[str],
    listen: list[str],
    expected: str,
    source: str,
) -> None:
    if source == "option":
        code, output = serve(*listen, *[part for url in peers for part in ("--peer", url)])
    else:
        code, output = serve(*listen, env={"LAZARUS_PEERS": " ".join(peers)})
    assert code == 2 and "Traceback" not in output, output
    where = "(--peer)" if source == "option" else "(LAZARUS_PEERS)"
    assert f"setting'peers'{where}" in output and expected in output, output
    assert not built_with  # nothing starts


def test_peers_that_differ_in_port_or_path_or_only_resolve_alike_are_other_nodes(
    built_with: list[ControllerSettings],
) -> None:
    # localhost is not taken for 127.0.0.1 (it may resolve otherwise): the quorum's count of
    # distinct node ids is what keeps such a peer from voting twice.
    peers = ["http://127.0.0.1:9002", "http://127.0.0.1:9003", "http://proxy/a", "http://proxy/b",
             "http://localhost:9001"]  # fmt: skip
    code, output = serve("--port", "9001", *[part for url in peers for part in ("--peer", url)])
    assert code == 0, output
    assert built_with[0].peers == peers
