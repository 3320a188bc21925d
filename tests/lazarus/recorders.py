"""Servers on loopback that play Slack's incoming webhook, PagerDuty's Events API v2 and an SMTP
relay, and record what they received (for notification tests)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller


@contextmanager
def serving_http_recorder() -> Iterator[HttpRecorder]:
    """An HttpRecorder serving on loopback for the block; stopped and closed after it."""
    recorder = HttpRecorder()
    recorder.thread.start()
    try:
        yield recorder
    finally:
        recorder.server.shutdown()
        recorder.server.server_close()
        recorder.thread.join(5)


class HttpRecorder:
    """Slack webhook at /slack/..., PagerDuty Events API v2 at /v2/enqueue (its change events at
    /v2/change/enqueue), HTTP 500 at /fail/..., 404 at /gone/... Every request is recorded as
    (path, JSON body)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                with recorder.lock:
                    recorder.requests.append((self.path, body))
                if self.path.startswith("/slack/"):
                    if slack_errors(body):  # what an incoming webhook answers bad blocks
                        self.answer(400, b"invalid_blocks", "text/plain")
                    else:
                        self.answer(200, b"ok", "text/plain")
                elif self.path == "/v2/enqueue":
                    self.pagerduty(body)
                elif self.path == "/v2/change/enqueue":
                    self.change(body)
                elif self.path.startswith("/fail/"):
                    self.answer(500, b"internal error", "text/plain")
                else:
                    self.answer(404, b"no_service", "text/plain")

            def pagerduty(self, event: Any) -> None:
                errors = pagerduty_errors(event)
                if errors:
                    answer = {
                        "status": "invalid event",
                        "message": "Event object is invalid",
                        "errors": errors,
                    }
                    self.answer(400, json.dumps(answer).encode(), "application/json")
                    return
                key = event.get("dedup_key") or uuid.uuid4().hex
                answer = {"status": "success", "message": "Event processed", "dedup_key": key}
                self.answer(202, json.dumps(answer).encode(), "application/json")

            def change(self, event: Any) -> None:
                payload = event.get("payload") if isinstance(event, dict) else None
                if not (isinstance(event, dict) and event.get("routing_key")) or not (
                    isinstance(payload, dict) and payload.get("summary")
                ):
                    answer = {"status": "invalid event", "message": "Event object is invalid"}
                    self.answer(400, json.dumps(answer).encode(), "application/json")
                    return
                answer = {"status": "success", "message": "Change event processed"}
                self.answer(202, json.dumps(answer).encode(), "application/json")

            def answer(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def received(self, prefix: str) -> list[Any]:
        with self.lock:
            return [body for path, body in self.requests if path.startswith(prefix)]

    def pagerduty_events(self) -> list[dict[str, Any]]:
        return self.received("/v2/enqueue")


# Block Kit's published limits (api.slack.com/reference/block-kit): a message holds at most 50
# blocks; a text object's text is 1 to 3000 characters; a context block at most 10 elements.
SLACK_MAX_BLOCKS, SLACK_MAX_TEXT, SLACK_MAX_CONTEXT_ELEMENTS = 50, 3000, 10


def slack_errors(message: Any) -> list[str]:
    """What Slack's incoming webhook would refuse of a Block Kit message (with 400
    invalid_blocks)."""
    if not isinstance(message, dict):
        return ["body is not a JSON object"]
    blocks = message.get("blocks", [])
    errors = [] if len(blocks) <= SLACK_MAX_BLOCKS else [f"{len(blocks)} blocks"]
    for number, block in enumerate(blocks):
        texts = [block["text"]] if block.get("type") == "section" else block.get("elements", [])
        if block.get("type") == "context" and len(texts) > SLACK_MAX_CONTEXT_ELEMENTS:
            errors.append(f"block {number}: {len(texts)} context elements")
        for text in texts:
            if not 1 <= len(text.get("text", "")) <= SLACK_MAX_TEXT:
                errors.append(f"block {number}: a text of {len(text.get('text', ''))} characters")
    return errors


def pagerduty_errors(event: Any) -> list[str]:
    """What PagerDuty's Events API v2 would reject."""
    if not isinstance(event, dict):
        return ["body is not a JSON object"]
    errors = []
    if not event.get("routing_key"):
        errors.append("'routing_key' is missing")
    action = event.get("event_action")
    if action not in {"trigger", "acknowledge", "resolve"}:
        errors.append("'event_action' is invalid")
    if action in {"acknowledge", "resolve"} and not event.get("dedup_key"):
        errors.append("'dedup_key' is missing")
    if action == "trigger":
        payload = event.get("payload") or {}
        for field in ("summary", "source", "severity"):
            if not payload.get(field):
                errors.append(f"'payload.{field}' is missing")
        if payload.get("severity") not in {None, "critical", "error", "warning", "info"}:
            errors.append("'payload.severity' is invalid")
    if len(event.get("dedup_key") or "") > 255:
        errors.append("'dedup_key' is too long")
    return errors


class SmtpRecorder:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


class LoopbackSmtp(Controller):
    """aiosmtpd's Controller, bound to port 0: the port is read back from the bound socket."""

    def _create_server(self) -> Any:
        async def bind() -> asyncio.AbstractServer:
            server = await self.loop.create_server(
                self._factory_invoker, host=self.hostname, port=0, ssl=self.ssl_context
            )
            self.port = server.sockets[0].getsockname()[1]
            return server

        return bind()
