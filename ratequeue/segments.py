"""How many SMS segments a message costs, as carriers count them.

GSM-7 text: 160 characters in one segment, 153 per segment once split (the user-data header takes
7). Characters from the GSM extension table take two septets. Anything outside GSM-7 forces UCS-2:
70 UTF-16 code units in one segment, 67 per segment when split.
"""

from __future__ import annotations

import math
from typing import Any

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")


def count_segments(text: str) -> int:
    """Segments needed to send `text` (at least 1, also for an empty message)."""
    if GSM7_BASIC.issuperset(text):  # most texts: one septet a character, no loop in Python
        septets = len(text)
    else:
        septets = _gsm7_septets(text)
        if septets is None:
            return _ucs2_segments(text)
    if septets <= 160:
        return 1
    return math.ceil(septets / 153)


def _gsm7_septets(text: str) -> int | None:
    """Septets of `text` in GSM-7, or None if a character has none (the text goes as UCS-2)."""
    septets = 0
    for char in text:
        if char in GSM7_BASIC:
            septets += 1
        elif char in GSM7_EXTENSION:
            septets += 2
        else:
            return None
    return septets


def _ucs2_segments(text: str) -> int:
    units = len(text.encode("utf-16-le")) // 2
    if units <= 70:
        return 1
    return math.ceil(units / 67)


def message_text(body: Any) -> str | None:
    """The text a message body sends: the body itself if a string, else its `text` field."""
    if isinstance(body, str):
        return body
    if isinstance(body, dict) and isinstance(body.get("text"), str):
        return body["text"]
    return None


def segments_for_body(body: Any) -> int:
    """Segments for a message body; a body with no text (pure data) costs one segment."""
    text = message_text(body)
    return 1 if text is None else count_segments(text)
