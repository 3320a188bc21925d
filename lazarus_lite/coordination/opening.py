"""Building the coordination store a deployment is configured for: `open_coordination_store`
reads the `coordination_backend` setting (`redis` on `control_url`, or `etcd` on the members
listed in `etcd_endpoints`, comma-separated, with the record log in the Redis on `control_url`)
and refuses any other value, or an etcd backend without usable endpoints, naming the setting.
Not for: what a store does (`interface`) or how (`redis_backend`, `etcd_backend`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

from common.errors import InvalidSetting
from common.etcd_client import endpoints_setting
from lazarus_lite.coordination.etcd_backend import EtcdCoordinationStore
from lazarus_lite.coordination.interface import CoordinationStore
from lazarus_lite.coordination.redis_backend import RedisCoordinationStore

CoordinationBackend = Literal["redis", "etcd"]
BACKENDS: tuple[str, ...] = ("redis", "etcd")


class StoreSettings(Protocol):
    """What the constructor reads (the controller's settings have both)."""

    @property
    def control_url(self) -> str: ...

    @property
    def coordination_backend(self) -> str: ...

    @property
    def etcd_endpoints(self) -> str | None:
        """Comma-separated client URLs of the etcd members (read for the etcd backend)."""
        ...


class StoreAddress(BaseModel):
    """Where a tool that is no controller (the chaos runner, the testbed, a benchmark) finds
    the store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    control_url: str
    coordination_backend: CoordinationBackend = "redis"
    etcd_endpoints: str | None = None

    @classmethod
    def of(cls, control_url: str, etcd_endpoints: str | None) -> StoreAddress:
        """The store on etcd when its members are given, else in the control Redis."""
        if etcd_endpoints is None:
            return cls(control_url=control_url)
        return cls(control_url=control_url, coordination_backend="etcd",
                   etcd_endpoints=etcd_endpoints)  # fmt: skip


def open_coordination_store(settings: StoreSettings, *, timeout: float = 5.0) -> CoordinationStore:
    """The store `settings.coordination_backend` names; the caller closes it (`aclose`)."""
    if settings.coordination_backend == "redis":
        return RedisCoordinationStore.from_url(settings.control_url, timeout=timeout)
    if settings.coordination_backend == "etcd":
        endpoints = endpoints_setting(settings.etcd_endpoints)
        return EtcdCoordinationStore.open(endpoints, settings.control_url, timeout=timeout)
    raise InvalidSetting(
        f"coordination_backend: {settings.coordination_backend!r} is not a coordination backend "
        f"(expected one of: {', '.join(BACKENDS)})"
    )


@asynccontextmanager
async def opened_coordination_store(
    settings: StoreSettings, *, timeout: float = 5.0
) -> AsyncIterator[CoordinationStore]:
    """The store for the length of a `with` (for tools that look once, then leave)."""
    store = open_coordination_store(settings, timeout=timeout)
    try:
        yield store
    finally:
        await store.aclose()
