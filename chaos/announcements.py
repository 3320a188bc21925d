"""Announcing each scheduled chaos run through the notification channels (`ratequeue-chaos run
--every ... --notifications FILE`): its start as a PagerDuty change event only, then its verdict,
the one Slack and email message of the run. A failed verdict triggers a PagerDuty alert (dedup key
per deployment and experiment) and tells Slack and email; any other verdict is a change event (it
pages nobody) and a message, and a passed verdict also resolves the alert a failed run of the same
experiment raised. Each message names the experiment, the verdict and
the journal's path; with the URL the journal directory is served at (`--journal-url`), a verdict's
PagerDuty event and messages link the run's journal there.

Not for: sending (`notifications`), what channels a service has (the notification config), or
deciding a verdict (`runner`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

from chaos.experiments import Experiment
from chaos.journal import Journal, Say
from chaos.run_watchers import RunWatcher
from chaos.runner import slug
from notifications.config import NotificationConfig
from notifications.delivery import Delivery
from notifications.notifier import Notifier
from notifications.pagerduty import Link

SOURCE = "chaos run"


class RunAnnouncer(RunWatcher):
    """Announces runs for `service` (its route in `config`); says each failed delivery."""

    def __init__(
        self,
        config: NotificationConfig,
        service: str,
        journal_dir: Path,
        say: Say,
        journal_url: str | None = None,
    ) -> None:
        self.config = config
        self.service = service
        self.journal_dir = journal_dir
        self.say = say
        self.journal_url = journal_url

    def journal_links(self, run_id: str) -> list[Link]:
        """The link to the run's journal where the journal directory is served (none when
        that is not said)."""
        if self.journal_url is None:
            return []
        href = f"{self.journal_url.rstrip('/')}/{quote(run_id, safe='')}.json"
        return [{"href": href, "text": f"journal of run {run_id}"}]

    def started(self, path: Path, experiment: Experiment) -> None:
        # A PagerDuty change event alone (what change events are for: a change that may
        # explain what follows); Slack and email get one message per run, its verdict.
        route = self.config.route(self.service)
        if route is None or "pagerduty" not in route.channels:
            return
        self._send(
            lambda notifier: notifier.change(
                self.service,
                f"chaos experiment '{experiment.title}' starting",
                {
                    "experiment": experiment.title,
                    "file": str(path),
                    "verdict": "running",
                    "journals": str(self.journal_dir),
                },
                source=SOURCE,
                messages=False,
            )
        )

    def ended(self, journal: Journal) -> None:
        path = self.journal_dir / f"{journal.run_id}.json"
        text = f"chaos experiment '{journal.experiment}': {journal.verdict.upper()}"
        details = {
            "experiment": journal.experiment,
            "verdict": journal.verdict,
            "journal": str(path),
            "deployment": journal.deployment,
        }
        key = self.incident_key(journal.deployment, journal.experiment)
        links = self.journal_links(journal.run_id)
        if journal.verdict == "failed":
            self._send(
                lambda notifier: notifier.page(
                    key,
                    self.service,
                    f"{text} (journal {path})",
                    details,
                    source=SOURCE,
                    event_class="chaos_experiment",
                    links=links,
                )
            )
            return

        async def change_and_resolve(notifier: Notifier) -> list[Delivery]:
            sent = await notifier.change(self.service, text, details, source=SOURCE, links=links)
            route = self.config.route(self.service)
            if journal.verdict == "passed" and route and "pagerduty" in route.channels:
                sent += await notifier.gather(
                    "resolve", key, [notifier.pagerduty(route.team).resolve(key)]
                )
            return sent

        self._send(change_and_resolve)

    def broke(self, path: Path, experiment: Experiment, error: Exception) -> None:
        self._send(
            lambda notifier: notifier.change(
                self.service,
                f"chaos experiment '{experiment.title}' could not run: {error}",
                {"experiment": experiment.title, "file": str(path), "verdict": "not_run"},
                source=SOURCE,
            )
        )

    @staticmethod
    def incident_key(deployment: str, experiment: str) -> str:
        """One alert per deployment and experiment: a later pass resolves it."""
        return f"chaos:{slug(deployment)}:{slug(experiment)}"[:255]

    def _send(self, send: Callable[[Notifier], Awaitable[list[Delivery]]]) -> None:
        async def sent() -> list[Delivery]:
            async with Notifier(self.config) as notifier:
                return await send(notifier)

        for delivery in asyncio.run(sent()):
            if not delivery.ok:
                self.say(f"announcement not delivered: {delivery.describe()}")
