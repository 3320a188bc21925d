"""The load-balancer membership of stateless services, kept in the control store: which hosts
(base URLs) serve a service, and which were taken out for forensics. The stateless profile's
workflow changes it; its checks read it. Not for: Redis shards (their map is the topology)."""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as aioredis

from lazarus_lite import control_keys


class ServiceRegistry:
    def __init__(self, control: aioredis.Redis) -> None:
        self._control = control

    async def members(self, service: str) -> dict[str, dict[str, Any]]:
        raw = await self._control.hgetall(control_keys.service_members(service))
        return {url.decode(): json.loads(info) for url, info in raw.items()}

    async def add(self, service: str, url: str, **info: Any) -> None:
        await self._control.hset(
            control_keys.service_members(service),
            url,
            json.dumps({"added_at": time.time(), **info}),
        )

    async def remove(self, service: str, url: str) -> bool:
        return bool(await self._control.hdel(control_keys.service_members(service), url))

    async def hold_for_forensics(self, service: str, url: str, reason: str) -> None:
        await self._control.hset(
            control_keys.service_forensics(service),
            url,
            json.dumps({"held_at": time.time(), "reason": reason}),
        )

    async def forensics(self, service: str) -> dict[str, dict[str, Any]]:
        raw = await self._control.hgetall(control_keys.service_forensics(service))
        return {url.decode(): json.loads(info) for url, info in raw.items()}
