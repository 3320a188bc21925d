"""The quorum round's end: it decides once `quorum` nodes passed, without waiting for a slower
node (whose verdict could not change a reached quorum), and short of that waits for every node.
The verdicts are given (no checks run): the subject is the counting and the waiting."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from detection.events import Event, new_event
from lazarus_lite.audit import NodeVerdict
from lazarus_lite.quorum import Quorum
from lazarus_lite.settings import ControllerSettings

PEERS = ["http://peer-a:1", "http://peer-b:1"]
NEVER = -1.0  # a node that never answers on its own


class GivenVerdicts(Quorum):
    """A quorum whose nodes answer `passed` after `seconds` (NEVER: only when cancelled); a peer
    answers with its URL as its node id, or the id `ids` gives it."""

    def __init__(
        self, answers: dict[str, tuple[bool, float]], ids: dict[str, str] | None = None
    ) -> None:
        settings = ControllerSettings(node_id="self", control_url="redis://127.0.0.1:1",
                                      api_token="t" * 16, peers=PEERS, quorum=2,
                                      quorum_timeout=0.5, services=None)  # fmt: skip
        super().__init__(settings, SimpleNamespace(services=None, topology=None))  # type: ignore[arg-type]
        self.answers = answers
        self.ids = ids or {}
        self.cancelled: list[str] = []

    async def _answer(self, node: str) -> NodeVerdict:
        passed, seconds = self.answers[node]
        try:
            await asyncio.sleep(3600 if seconds == NEVER else seconds)
        except asyncio.CancelledError:
            self.cancelled.append(node)
            raise
        return NodeVerdict(node=node, passed=passed, seconds=seconds)

    async def evaluate(self, event: Event, rule: Any) -> NodeVerdict:
        return await self._answer(self.node_id)

    async def ask_peer(self, url: str, event: Event, rule: Any) -> NodeVerdict:
        verdict = await self._answer(url)
        verdict.node = self.ids.get(url, url)
        return verdict


def gather(quorum: GivenVerdicts) -> tuple[list[NodeVerdict], Any, list[NodeVerdict] | None]:
    """The round's verdicts and outcome, and the late verdicts (None: every node was awaited)."""
    event = new_event("RedisMasterDown", environment="dev", region="r", service="ratequeue",
                      shard="s0", host="h:1", source="test")  # fmt: skip

    async def round_() -> tuple[list[NodeVerdict], Any, list[NodeVerdict] | None]:
        try:
            verdicts, outcome, late = await asyncio.wait_for(
                quorum.gather_verdicts(event, None),  # type: ignore[arg-type]
                30,
            )
            return verdicts, outcome, None if late is None else await asyncio.wait_for(late, 30)
        finally:
            await quorum.aclose()

    return asyncio.run(round_())


def test_a_reached_quorum_is_decided_without_the_node_still_evaluating() -> None:
    quorum = GivenVerdicts({"self": (True, 0), PEERS[0]: (True, 0.01), PEERS[1]: (True, NEVER)})
    verdicts, outcome, _ = gather(quorum)
    assert outcome.reached
    assert outcome.passed == ["self", PEERS[0]]
    assert outcome.not_awaited == [PEERS[1]] and outcome.unanswered == []
    assert [v.node for v in verdicts] == ["self", PEERS[0]]


def test_a_node_not_waited_for_gives_its_verdict_late() -> None:
    quorum = GivenVerdicts({"self": (True, 0), PEERS[0]: (True, 0.01), PEERS[1]: (False, 0.2)})
    _, outcome, late = gather(quorum)
    assert outcome.reached and outcome.not_awaited == [PEERS[1]]
    assert late is not None and [(v.node, v.passed, v.error) for v in late] == [
        (PEERS[1], False, None)
    ]


def test_a_node_still_evaluating_after_the_quorum_timeout_is_cancelled_and_counted_unanswered() -> (
    None
):
    quorum = GivenVerdicts({"self": (True, 0), PEERS[0]: (True, 0.01), PEERS[1]: (True, NEVER)})
    _, _, late = gather(quorum)
    assert late is not None and [v.node for v in late] == [PEERS[1]]
    assert not late[0].passed and late[0].error is not None
    assert quorum.cancelled == [PEERS[1]]  # its request is not left running


def test_a_failed_verdict_does_not_end_the_round_while_the_quorum_can_still_pass() -> None:
    quorum = GivenVerdicts({"self": (True, 0), PEERS[0]: (False, 0), PEERS[1]: (True, 0.05)})
    verdicts, outcome, late = gather(quorum)
    assert outcome.reached and outcome.passed == ["self", PEERS[1]]
    assert outcome.failed == [PEERS[0]] and outcome.not_awaited == [] and late is None
    assert [v.node for v in verdicts] == ["self", *PEERS]


def test_a_quorum_short_of_passes_waits_for_every_node_and_records_each_verdict() -> None:
    quorum = GivenVerdicts({"self": (False, 0), PEERS[0]: (True, 0), PEERS[1]: (False, 0.05)})
    verdicts, outcome, late = gather(quorum)
    assert not outcome.reached
    assert outcome.passed == [PEERS[0]] and outcome.failed == ["self", PEERS[1]]
    assert outcome.not_awaited == [] and len(verdicts) == 3 and late is None


def test_each_verdict_records_when_it_reached_the_coordinator() -> None:
    verdicts, _, _ = gather(
        GivenVerdicts({"self": (True, 0), PEERS[0]: (True, 0.5), PEERS[1]: (True, NEVER)})
    )
    arrivals = {v.node: v.answered_after for v in verdicts}
    assert [v.node for v in verdicts] == ["self", PEERS[0]]
    assert arrivals["self"] is not None and arrivals[PEERS[0]] is not None
    assert arrivals[PEERS[0]] >= 0.5 and arrivals[PEERS[0]] >= arrivals["self"]


def test_this_nodes_own_id_answering_through_a_peer_is_not_a_second_vote() -> None:
    # This node listed as its own peer (under a name the settings cannot tell is its own).
    quorum = GivenVerdicts(
        {"self": (True, 0), PEERS[0]: (True, 0.01), PEERS[1]: (False, 0.05)},
        ids={PEERS[0]: "self", PEERS[1]: "other"},
    )
    _, outcome, late = gather(quorum)
    assert not outcome.reached and late is None
    assert outcome.passed == ["self"] and outcome.failed == ["other"]
    assert outcome.not_counted == [f"self via {PEERS[0]}: this node's own id"]
    assert outcome.tally() == (
        f"counted: self passed, other failed; not counted: self via {PEERS[0]}: this node's own id"
    )


def test_this_nodes_own_id_through_a_peer_before_its_own_verdict_is_still_not_a_vote() -> None:
    quorum = GivenVerdicts(
        {"self": (False, 0.05), PEERS[0]: (True, 0), PEERS[1]: (True, 0.1)},
        ids={PEERS[0]: "self", PEERS[1]: "other"},
    )
    _, outcome, _ = gather(quorum)
    assert not outcome.reached
    assert outcome.passed == ["other"] and outcome.failed == ["self"]


def test_a_node_answering_under_two_urls_is_one_vote_its_first_answer() -> None:
    quorum = GivenVerdicts(
        {"self": (False, 0), PEERS[0]: (True, 0.01), PEERS[1]: (True, 0.05)},
        ids={PEERS[0]: "other", PEERS[1]: "other"},
    )
    verdicts, outcome, _ = gather(quorum)
    assert not outcome.reached
    assert outcome.passed == ["other"] and outcome.failed == ["self"]
    assert outcome.not_counted == [f"other via {PEERS[1]}: already counted"]
    assert [v.node for v in verdicts] == ["self", "other", "other"]  # every answer is recorded


def test_an_answer_not_counted_is_logged_once_however_many_rounds_lose_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Otherwise only the audit records would show a cluster a vote short of its peer list.
    answers = {"self": (True, 0), PEERS[0]: (True, 0.01), PEERS[1]: (True, 0.02)}
    ids = {PEERS[0]: "self", PEERS[1]: "other"}  # a peer misconfigured with this node's id
    quorum = GivenVerdicts(answers, ids)
    event = new_event("RedisMasterDown", environment="dev", region="r", service="ratequeue",
                      shard="s0", host="h:1", source="test")  # fmt: skip

    async def two_rounds() -> None:
        try:
            for _ in range(2):
                await quorum.gather_verdicts(event, None)  # type: ignore[arg-type]
        finally:
            await quorum.aclose()

    with caplog.at_level(logging.WARNING, logger="lazarus_lite.quorum"):
        asyncio.run(two_rounds())
    [warning] = [r.getMessage() for r in caplog.records if "not counted" in r.getMessage()]
    assert f"self via {PEERS[0]}: this node's own id" in warning and "--node-id" in warning


def test_distinct_nodes_that_pass_reach_the_quorum_whatever_urls_they_were_asked_at() -> None:
    quorum = GivenVerdicts(
        {"self": (True, 0), PEERS[0]: (True, 0.01), PEERS[1]: (True, NEVER)},
        ids={PEERS[0]: "other", PEERS[1]: "third"},
    )
    _, outcome, _ = gather(quorum)
    assert outcome.reached and outcome.passed == ["self", "other"]
    assert outcome.not_counted == [] and outcome.not_awaited == [PEERS[1]]
