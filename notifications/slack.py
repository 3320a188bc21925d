"""The Slack channel: an incoming webhook, posted through the shared retry loop.

Not for: what the message says (the notifier writes it) or Slack's Web API.
"""

from __future__ import annotations

from typing import Any

import httpx

from notifications.delivery import ChannelName, Delivery, DeliveryPolicy, HttpChannel


def escape(text: object) -> str:
    """Text for a Slack message, with Slack's three control characters escaped: `&`, `<` and
    `>` become `&amp;`, `&lt;` and `&gt;` (Slack's formatting rules: these alone, so a `<` in a
    reason cannot open a link or a mention such as `<!channel>`, and nothing is HTML-escaped
    twice)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# The longest entity `escape` writes (`&amp;`); a cut within the last few characters before it
# could leave `&am`, which Slack shows as is.
LONGEST_ENTITY = len("&amp;")


def cut_escaped(mrkdwn: str, limit: int) -> str:
    """Escaped text cut to at most `limit` characters, without cutting an entity (`&amp;`,
    `&lt;`, `&gt;`) in half: once escaped, every `&` in the text starts one."""
    if len(mrkdwn) <= limit:
        return mrkdwn
    cut = mrkdwn[:limit]
    last_ampersand = cut.rfind("&", max(0, limit - LONGEST_ENTITY + 1))
    if last_ampersand != -1 and ";" not in cut[last_ampersand:]:
        cut = cut[:last_ampersand]
    return cut


class SlackWebhook(HttpChannel):
    """A Slack incoming webhook: POST {"text", "blocks"?}; Slack answers 200 "ok"."""

    name: ChannelName = "slack"

    def __init__(
        self,
        url: str,
        *,
        http: httpx.AsyncClient | None = None,
        retry: DeliveryPolicy = DeliveryPolicy(),
    ) -> None:
        super().__init__(url, http, retry)

    async def post(self, text: str, blocks: list[dict[str, Any]] | None = None) -> Delivery:
        body: dict[str, Any] = {"text": text}
        if blocks:
            body["blocks"] = blocks

        async def attempt() -> tuple[int | None, dict[str, Any]]:
            response = await self.post_json(body, "slack webhook")
            return response.status_code, {}

        return await self.deliver("message", attempt, redact=(self.url,))
