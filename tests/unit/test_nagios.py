"""The Nagios check's verdicts, status line and option parsing, from given probe results (no
Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from detection import probes
from detection.errors import UsageProblem
from detection.nagios import (
    CheckOutcome,
    CheckRequest,
    Perfdata,
    Status,
    Thresholds,
    evaluate,
    format_number,
    parse_request,
    run_request,
)
from detection.probes import ProbeResult, parse_address

REPLICA = "127.0.0.2:7002"
PRIMARY = "127.0.0.2:7001"


def replica_info(**changes: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "role": "slave",
        "master_host": "127.0.0.2",
        "master_port": 7001,
        "master_link_status": "up",
        "master_last_io_seconds_ago": 0,
        "slave_repl_offset": 12345,
        "master_replid": "a" * 40,
    }
    info.update(changes)
    return {key: value for key, value in info.items() if value is not None}


def check(
    info: dict[str, Any] | None = None,
    probe: ProbeResult | None = ProbeResult(True, 0.0004),
    *,
    primary: str | None = PRIMARY,
    error: str | None = None,
) -> CheckOutcome:
    return evaluate(replica=REPLICA, replica_info=info, replica_error=error, primary=primary,
                    probe=probe, thresholds=Thresholds(2, 5), timeout=1.0)  # fmt: skip


def test_a_healthy_pair_is_ok_with_one_status_line_and_perfdata() -> None:
    outcome = check(replica_info())
    assert outcome.exit_code == 0
    assert outcome.line() == (
        "REDIS-PRIMARY OK - primary 127.0.0.2:7001 answers in 0.4 ms, link up"
        " | latency=0.0004s last_io=0s;2;5;0 offset=12345c"
    )


def test_an_old_last_io_is_warning_then_critical() -> None:
    assert check(replica_info(master_last_io_seconds_ago=3)).status is Status.WARNING
    critical = check(replica_info(master_last_io_seconds_ago=7))
    assert critical.status is Status.CRITICAL
    assert "last I/O 7 s ago" in critical.line()


def test_a_last_io_at_a_threshold_is_inside_its_range_as_the_plugin_guidelines_read_it() -> None:
    # `last_io=2s;2;5`: the range "2" alerts on a value outside 0..2, so 2 is OK and 5 WARNING.
    assert check(replica_info(master_last_io_seconds_ago=2)).status is Status.OK
    assert check(replica_info(master_last_io_seconds_ago=5)).status is Status.WARNING


def test_a_primary_that_does_not_answer_is_critical() -> None:
    outcome = check(replica_info(master_link_status="down"), ProbeResult(False, 1.0, "timed out"))
    assert outcome.exit_code == 2
    assert outcome.line().startswith(
        "REDIS-PRIMARY CRITICAL - primary 127.0.0.2:7001 does not answer PING: "
        "timed out after 1 s; replica link down |"
    )
    assert "latency=U" in outcome.line()


def test_a_link_that_is_down_while_the_primary_answers_is_at_least_warning() -> None:
    briefly = replica_info(master_link_status="down", master_last_io_seconds_ago=-1,
                           master_link_down_since_seconds=1)  # fmt: skip
    assert check(briefly).status is Status.WARNING
    assert "link is down for 1 s" in check(briefly).summary
    long = dict(briefly, master_link_down_since_seconds=60)
    assert check(long).status is Status.CRITICAL


def test_a_replica_that_cannot_be_read_or_is_no_replica_is_unknown() -> None:
    unreachable = check(None, None, primary=None, error="Error 111 connecting")
    assert unreachable.exit_code == 3
    assert unreachable.line() == (
        "REDIS-PRIMARY UNKNOWN - replica 127.0.0.2:7002 cannot be read: Error 111 connecting"
    )
    assert check({"role": "master"}).line() == (
        "REDIS-PRIMARY UNKNOWN - 127.0.0.2:7002 is not a replica (role master)"
    )
    assert check(replica_info(master_host=None), None, primary=None).status is Status.UNKNOWN


def test_a_pipe_or_newline_in_a_message_cannot_break_the_status_line() -> None:
    outcome = check(None, None, primary=None, error="bad | thing\nsecond line")
    assert outcome.line() == (
        "REDIS-PRIMARY UNKNOWN - replica 127.0.0.2:7002 cannot be read: bad / thing second line"
    )


def test_perfdata_syntax() -> None:
    assert Perfdata("latency", 0.00001, "s").render() == "latency=0.00001s"
    assert Perfdata("last_io", 3, "s", 2, 5, 0).render() == "last_io=3s;2;5;0"
    assert Perfdata("io", 1, "s", None, 5).render() == "io=1s;;5"
    assert Perfdata("a b", 1).render() == "'a b'=1"
    assert Perfdata("it's", None).render() == "'it''s'=U"
    assert format_number(1.5e-7) == "0"
    assert format_number(2.0) == "2"


def test_options_are_parsed_and_bad_ones_named() -> None:
    request = parse_request(replica=REPLICA, primary=PRIMARY, warning_io_seconds="1.5",
                            critical_io_seconds="3", timeout="1m",
                            probe_timeout="500ms")  # fmt: skip
    assert request.thresholds == Thresholds(1.5, 3)
    assert (request.timeout, request.plugin_timeout) == (0.5, 60)
    problems = {
        "--replica": dict(replica="nope"),
        "--primary": dict(replica=REPLICA, primary="host:99999"),
        "--timeout": dict(replica=REPLICA, timeout="0"),
        "--probe-timeout": dict(replica=REPLICA, probe_timeout="soon"),
        "--critical-io-seconds": dict(replica=REPLICA, critical_io_seconds="soon"),
        "--warning-io-seconds": dict(replica=REPLICA, warning_io_seconds="9"),
        "missing option --replica": dict(replica=None),
        "unexpected argument '--bogus'": dict(replica=REPLICA, extra=["--bogus"]),
    }
    for expected, options in problems.items():
        with pytest.raises(UsageProblem, match=expected):
            parse_request(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("primary", "probe_timeout", "timeout"),
    [(None, "1", "2"), (None, "1", "0.5"), (PRIMARY, "1", "1"), (PRIMARY, "2s", "1500ms")],
)
def test_probes_that_cannot_finish_within_the_check_timeout_are_refused(
    primary: str | None, probe_timeout: str, timeout: str
) -> None:
    with pytest.raises(UsageProblem, match=r"--probe-timeout: .* -t/--timeout"):
        parse_request(replica=REPLICA, primary=primary, probe_timeout=probe_timeout,
                      timeout=timeout)  # fmt: skip


def test_probes_that_finish_within_the_check_timeout_are_accepted() -> None:
    assert parse_request(replica=REPLICA, probe_timeout="1", timeout="2.5").timeout == 1
    assert parse_request(replica=REPLICA, primary=PRIMARY, probe_timeout="1", timeout="1.5")


def hangs(*_: Any) -> Any:
    return asyncio.sleep(3600)


async def answers_info(*_: Any) -> tuple[dict[str, Any], None]:
    return replica_info(), None


@pytest.mark.parametrize(
    ("replication_info", "waiting_for"),
    [(hangs, "the replica's INFO"), (answers_info, "the primary's PING")],
)
def test_a_check_cut_short_by_its_timeout_says_which_probe_it_waited_for(
    monkeypatch: pytest.MonkeyPatch, replication_info: Any, waiting_for: str
) -> None:
    monkeypatch.setattr(probes, "replication_info_or_error", replication_info)
    monkeypatch.setattr(probes, "ping", hangs)
    request = CheckRequest(replica=REPLICA, timeout=60, plugin_timeout=0.05)
    outcome = asyncio.run(run_request(request))
    assert outcome.line() == (
        "REDIS-PRIMARY UNKNOWN - the check did not finish within its -t/--timeout of 0.05 s, "
        f"waiting for {waiting_for}"
    )


def test_addresses() -> None:
    assert parse_address("127.0.0.2:6379") == ("127.0.0.2", 6379)
    assert parse_address("[::1]:6379") == ("::1", 6379)
    for bad in ("6379", ":6379", "host:", "host:0", "host:x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)
