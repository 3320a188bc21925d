"""The Gremlin-shaped body every refusal of the agent (`chaos.errors.AgentError`) is answered
with: `{"error": <the status's reason>, "message", "field"?}`.

Not for: deciding what to refuse (`commands`, `state` and `execution` do).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from common.http_contract import REASONS, ErrorShape


class AgentErrorBody(BaseModel):
    """The agent's error envelope: the status's reason, why, and the request field at fault."""

    error: str
    message: str
    field: str | None = None


def _agent_error(status: int, code: str, message: str, field: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": REASONS.get(status, "Error"), "message": message}
    if field:
        body["field"] = field
    return body


AGENT_ERRORS = ErrorShape(AgentErrorBody, _agent_error)
