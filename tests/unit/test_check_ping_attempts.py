"""How a controller's checks ask a node whether it answers (`CheckContext.ping`, what MasterDown
and PeerCheck read): two attempts on separate connections, the node answering if either does;
the second sent alongside a first that is still waiting, not after its timeout. The PINGs are
stand-ins here (the order of the attempts is what is specified); the checks against real nodes
are in tests/lazarus/test_checks_on_real_nodes.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from detection.events import new_event
from detection.probes import ProbeResult
from lazarus_lite import checks
from lazarus_lite.checks import CheckContext
from lazarus_lite.rules import CheckSpec
from ratequeue.topology import NodeRef

PRIMARY = NodeRef(name="s0-primary", host="127.0.0.1", port=7000, peer_host="127.0.0.2")
SILENT = ProbeResult(False, 0.25, "timed out", silent=True)
REFUSED = ProbeResult(False, 0.001, "Connection refused", refused=True)
PONG = ProbeResult(True, 0.001)


def context() -> CheckContext:
    event = new_event("RedisMasterDown", environment="dev", region="local", service="ratequeue",
                      shard="s0", host=PRIMARY.address, source="test")  # fmt: skip
    return CheckContext(event, None, CheckSpec(checkName="MasterDown"))


class Attempts:
    """Stand-in PINGs: the n-th attempt answers `answers[n]`; an attempt marked to wait holds
    its answer until the next attempt has started (as a silent node's PING holds until its
    timeout), so an implementation that sends the next only after it would never finish."""

    def __init__(self, *answers: ProbeResult, first_waits: bool = False) -> None:
        self.answers = list(answers)
        self.first_waits = first_waits
        self.started = 0
        self.second_started = asyncio.Event()

    async def ping(self, host: str, port: int, timeout: float = 0.2, **_: Any) -> ProbeResult:
        number = self.started
        self.started += 1
        if number == 1:
            self.second_started.set()
        if number == 0 and self.first_waits:
            await self.second_started.wait()
        return self.answers[number]


async def asked(attempts: Attempts, monkeypatch: pytest.MonkeyPatch) -> ProbeResult:
    monkeypatch.setattr(checks, "ping", attempts.ping)
    async with asyncio.timeout(5):  # a second attempt queued behind the first never starts
        return await context().ping(PRIMARY)


def test_a_second_attempt_is_sent_while_a_silent_first_one_still_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts = Attempts(SILENT, SILENT, first_waits=True)
    result = asyncio.run(asked(attempts, monkeypatch))
    assert not result.ok and attempts.started == 2


def test_a_node_answering_the_second_attempt_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = Attempts(SILENT, PONG, first_waits=True)
    assert asyncio.run(asked(attempts, monkeypatch)).ok


def test_a_refused_first_attempt_is_followed_by_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = Attempts(REFUSED, REFUSED)
    result = asyncio.run(asked(attempts, monkeypatch))
    assert result.refused and attempts.started == 2


def test_a_first_attempt_that_answers_is_the_only_one(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = Attempts(PONG)
    assert asyncio.run(asked(attempts, monkeypatch)).ok and attempts.started == 1
