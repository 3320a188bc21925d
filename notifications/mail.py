"""The email channel: SMTP through smtplib in a worker thread, with optional STARTTLS and login,
and which SMTP replies are worth retrying.

Not for: what the message says (the notifier writes it) or receiving mail.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from notifications.delivery import ChannelName, Delivery, DeliveryPolicy, deliver
from notifications.errors import Permanent, Retryable


class Email:
    """SMTP email through smtplib in a worker thread, with optional STARTTLS and login."""

    name: ChannelName = "email"

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        recipients: list[str],
        starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
        *,
        retry: DeliveryPolicy = DeliveryPolicy(),
    ) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.recipients = list(recipients)
        self.starttls, self.username, self.password = starttls, username, password
        self.retry = retry

    async def send(self, subject: str, body: str) -> Delivery:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or None)
        message.set_content(body)

        async def attempt() -> tuple[int | None, dict[str, Any]]:
            return await asyncio.to_thread(self._send_blocking, message)

        target = f"smtp://{self.host}:{self.port} to {', '.join(self.recipients)}"
        return await deliver(
            "email", "email", target, self.retry, attempt, redact=(self.password or "",)
        )

    def _send_blocking(self, message: EmailMessage) -> tuple[int | None, dict[str, Any]]:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.retry.timeout) as smtp:
                smtp.ehlo()
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                    smtp.ehlo()
                if self.username:
                    smtp.login(self.username, self.password or "")
                refused = smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as error:
            codes = [code for code, _ in error.recipients.values()]
            text = f"recipients refused: {error.recipients}"
            if all(400 <= code < 500 for code in codes):
                raise Retryable(text, codes[0] if codes else None) from None
            raise Permanent(text, codes[0] if codes else None) from None
        except smtplib.SMTPServerDisconnected:
            raise
        except smtplib.SMTPResponseException as error:
            text = f"SMTP {error.smtp_code}: {error.smtp_error!r}"
            if 400 <= error.smtp_code < 500:
                raise Retryable(text, error.smtp_code) from None
            raise Permanent(text, error.smtp_code) from None
        except (smtplib.SMTPNotSupportedError, ssl.SSLError) as error:
            raise Permanent(f"{type(error).__name__}: {error}") from None
        extra: dict[str, Any] = {}
        if refused:
            extra["error"] = f"some recipients refused: {refused}"
        return 250, extra
