"""The load-balancer membership of stateless services, kept in the control store: which hosts
(base URLs) serve a service, and which were taken out for forensics. The stateless profile's
workflow changes it; its checks read it. Not for: Redis shards (their map is the topology)."""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis


def members_key(service: str) -> str:
    return f"lz:lb:{service}"


def forensics_key(service: str) -> str:
    return f"lz:lb:{service}:forensics"


class ServiceRegistry:
    def __init__(self, control: aioredis.Redis) -> None:
        self._control = control

    async def members(self, service: str) -> dict[str, dict[str, Any]]:
        raw = await self._control.hgetall(members_key(service))
        return {url.decode(): json.loads(info) for url, info in raw.items()}

    async def add(self, service: str, url: str, **info: Any) -> None:
        await self._control.hset(
            members_key(service), url, json.dumps({"added_at": time.time(), **info})
        )

    async def remove(self, service: str, url: str) -> bool:
        return bool(await self._control.hdel(members_key(service), url))

    async def hold_for_forensics(self, service: str, url: str, reason: str) -> None:
        await self._control.hset(
            forensics_key(service), url, json.dumps({"held_at": time.time(), "reason": reason})
        )

    async def forensics(self, service: str) -> dict[str, dict[str, Any]]:
        raw = await self._control.hgetall(forensics_key(service))
        return {url.decode(): json.loads(info) for url, info in raw.items()}
