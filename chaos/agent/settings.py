"""Settings of `ratequeue-chaos agent`, the Gremlin-compatible attacks API: every field is an
option and a `CHAOS_AGENT_*` environment variable (`common.settings_options`).

Not for: the API key itself (read from the variable `api_key_env` names, never a flag: a flag
shows in `ps`), or the targets file's contents (`chaos.agent.targets`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from common.settings import Setting


class AgentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    targets: Path = Field(description="testbed.json (or its directory) or a targets YAML/JSON file")
    allow: Annotated[list[str], Setting("--allow")] = Field(
        min_length=1, description="target identifiers attacks may name (or comma-separate)"
    )
    host: str = Field("127.0.0.1", description="a loopback address to serve on")
    port: int = Field(9090, ge=1, le=65535, description="port to serve on")
    api_key_env: str = Field(
        "GREMLIN_API_KEY", min_length=1, description="environment variable holding the API key"
    )
    team_id_env: str = Field(
        "GREMLIN_TEAM_ID",
        min_length=1,
        description="environment variable with the teamId to require (unset: any)",
    )
    chain: str = Field("RQCHAOS", min_length=1, description="iptables chain for network attacks")
