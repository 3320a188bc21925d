"""The quorum round: this node runs a rule's precondition checks from its own vantage point
(`evaluate`, also what its peers ask of it over HTTP), asks every peer to do the same, and counts
the distinct nodes whose every check passed, by the node id each verdict carries: a node reached
under two URLs, or this node reached as its own peer, is one vote (its first answer), however
many answers it gave. The round ends as soon as `quorum` nodes passed (a failed or
missing verdict vetoes nothing, so the slowest node cannot change a reached quorum); short of
that it waits for every verdict, so a refusal shows each node's reasons. The nodes not waited
for run on, for at most `quorum_timeout`, and their verdicts reach the audit record late, as a
note (`late_verdicts`), without holding the decision.

Not for: what the checks are (`checks`), the peer endpoint (`routes.quorum`), or what happens
when the quorum is (not) reached (`controller`).
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from detection.events import Event
from lazarus_lite.audit import NodeVerdict, QuorumOutcome
from lazarus_lite.checks import run_checks
from lazarus_lite.coordination.interface import CoordinationStore
from lazarus_lite.metrics import ControllerMetrics
from lazarus_lite.rules import Rule
from lazarus_lite.settings import ControllerSettings

log = logging.getLogger(__name__)


class Quorum:
    """One node's side of the quorum: its own verdict, and the round it coordinates."""

    def __init__(
        self,
        settings: ControllerSettings,
        store: CoordinationStore,
        metrics: ControllerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.node_id = settings.node_id
        self.services = store.services
        self.topology = store.topology
        self._http = httpx.AsyncClient(timeout=settings.quorum_timeout)
        self._told: set[str] = set()  # answers not counted, logged once each

    async def aclose(self) -> None:
        await self._http.aclose()

    async def evaluate(self, event: Event, rule: Rule) -> NodeVerdict:
        """Run the rule's checks from this node's own vantage point."""
        started = time.monotonic()
        try:
            topology = await self.topology.load()
            results = await run_checks(
                event,
                topology,
                rule.checks,
                min_replicas=self.settings.min_replicas,
                probe_timeout=self.settings.probe_timeout,
                services=self.services,
                observe_probe=self.metrics.probed if self.metrics is not None else None,
            )
        except Exception as error:
            return NodeVerdict(
                node=self.node_id,
                passed=False,
                error=str(error),
                seconds=time.monotonic() - started,
            )
        return NodeVerdict(
            node=self.node_id,
            passed=all(r.ok for r in results),
            results=results,
            seconds=time.monotonic() - started,
        )

    async def ask_peer(self, url: str, event: Event, rule: Rule) -> NodeVerdict:
        """The peer's verdict on the rule's checks from its own vantage point; a peer that does
        not answer in time counts as a failed verdict, never as a pass."""
        started = time.monotonic()
        try:
            response = await self._http.post(
                f"{url}/v1/quorum/evaluate",
                json={"event": event.model_dump(mode="json"), "rule": rule.name},
                headers={"Authorization": f"Bearer {self.settings.api_token}"},
            )
            response.raise_for_status()
            return NodeVerdict.model_validate(response.json())
        except Exception as error:
            return NodeVerdict(
                node=url,
                passed=False,
                error=f"no answer: {error}",
                seconds=time.monotonic() - started,
            )

    async def gather_verdicts(
        self, event: Event, rule: Rule
    ) -> tuple[list[NodeVerdict], QuorumOutcome, asyncio.Task[list[NodeVerdict]] | None]:
        """Every node's verdict, in the order asked (this node first), until `quorum` passed;
        and, when the round ended before every node answered, the task in which the nodes not
        waited for run on (for at most `quorum_timeout` more) to give their verdicts late. The
        caller awaits or cancels that task."""
        started = time.monotonic()
        peers = self.settings.peers
        asks = {
            asyncio.ensure_future(self.evaluate(event, rule)): self.node_id,
            **{asyncio.ensure_future(self.ask_peer(url, event, rule)): url for url in peers},
        }
        answered: dict[asyncio.Future[NodeVerdict], NodeVerdict] = {}
        pending: set[asyncio.Future[NodeVerdict]] = set(asks)
        try:
            while pending and len(self._votes(asks, answered)[0]) < self.settings.quorum:
                pending = await _collect(pending, answered, started, None)
        except BaseException:
            await _cancel(pending)
            raise
        verdicts = [answered[ask] for ask in asks if ask in answered]
        passed, failed, not_counted = self._votes(asks, answered)
        self._tell_of_lost_votes(not_counted)
        quorum = QuorumOutcome(
            required=self.settings.quorum,
            passed=passed,
            failed=failed,
            unanswered=[v.node for v in verdicts if v.error is not None],
            not_awaited=[node for ask, node in asks.items() if ask not in answered],
            not_counted=not_counted,
        )
        late = None
        if pending:
            not_awaited = {ask: node for ask, node in asks.items() if ask in pending}
            late = asyncio.create_task(self._run_on(not_awaited, started))
        return verdicts, quorum, late

    def _tell_of_lost_votes(self, not_counted: list[str]) -> None:
        """Log each answer not counted once: two URLs reaching one node, or two nodes sharing
        an id, leave the cluster a vote short of what its peers list, which only the audit
        records would show (a three-node cluster of quorum 2 no longer rides out a node down)."""
        for answer in not_counted:
            if answer not in self._told:
                self._told.add(answer)
                log.warning(
                    "quorum: the answer of %s was not counted (one vote per node id): check "
                    "--peer and --node-id; the cluster has a vote fewer than its peers list",
                    answer,
                )

    def _votes(
        self,
        asks: dict[asyncio.Future[NodeVerdict], str],
        answered: dict[asyncio.Future[NodeVerdict], NodeVerdict],
    ) -> tuple[list[str], list[str], list[str]]:
        """The node ids that passed and that failed, one vote each, and the answers not counted
        (`NODE via URL: why`). Counting answers would let one node vote twice: a peer listed
        under two names, or this node listed as its own peer (the settings refuse the forms of
        that they can tell). This node's own evaluation is its vote, so its id answering through
        a peer is never a second one; any other node's first answer, in the order they arrived,
        is its vote. An answer that never came names the URL, not a node: it votes for nothing."""
        counted: dict[str, asyncio.Future[NodeVerdict]] = {}  # node id: the ask that is its vote
        not_counted: list[str] = []
        for ask, verdict in answered.items():  # in the order they arrived (`_collect`)
            via = asks[ask]
            if verdict.error is not None:
                continue
            if via != self.node_id and verdict.node == self.node_id:
                not_counted.append(f"{verdict.node} via {via}: this node's own id")
            elif verdict.node in counted:
                not_counted.append(f"{verdict.node} via {via}: already counted")
            else:
                counted[verdict.node] = ask
        votes = [answered[ask] for ask in asks if ask in counted.values()]  # in the order asked
        return (
            [v.node for v in votes if v.passed],
            [v.node for v in votes if not v.passed],
            not_counted,
        )

    async def _run_on(
        self, asks: dict[asyncio.Future[NodeVerdict], str], started: float
    ) -> list[NodeVerdict]:
        """The verdicts of the nodes not waited for, in the order asked; one still evaluating
        `quorum_timeout` after the round ended counts as unanswered."""
        answered: dict[asyncio.Future[NodeVerdict], NodeVerdict] = {}
        pending: set[asyncio.Future[NodeVerdict]] = set(asks)
        deadline = time.monotonic() + self.settings.quorum_timeout
        try:
            while pending and time.monotonic() < deadline:
                pending = await _collect(pending, answered, started, deadline - time.monotonic())
        finally:
            await _cancel(pending)
        return [
            answered.get(ask)
            or NodeVerdict(
                node=node,
                passed=False,
                error=f"no answer within {self.settings.quorum_timeout} s after the round ended",
                seconds=time.monotonic() - started,
            )
            for ask, node in asks.items()
        ]


async def _collect(
    pending: set[asyncio.Future[NodeVerdict]],
    answered: dict[asyncio.Future[NodeVerdict], NodeVerdict],
    started: float,
    timeout: float | None,
) -> set[asyncio.Future[NodeVerdict]]:
    """Wait for the next verdicts (at most `timeout`), stamp their arrival into `answered`;
    returns the asks still pending."""
    done, still = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for ask in done:
        answered[ask] = ask.result()
        answered[ask].answered_after = time.monotonic() - started
    return still


async def _cancel(asks: set[asyncio.Future[NodeVerdict]]) -> None:
    for ask in asks:
        ask.cancel()
    await asyncio.gather(*asks, return_exceptions=True)
