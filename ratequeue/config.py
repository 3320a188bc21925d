"""Settings of the ratequeue service, validated before anything starts.

A bad value stops the service with a message naming the setting
(`common.errors.InvalidSetting`); every field is a CLI option and a `RATEQUEUE_*` environment
variable (`common.settings_options`). Not for: per-number rates (API state).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.errors import SettingProblem
from common.settings import LogLevel, Setting, etcd_endpoints_checked, parse_settings
from common.validation import RedisUrlText
from ratequeue.client import ClientRetryPolicy, ClientSettings
from ratequeue.rates import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_NUMBER_SEGMENTS,
    DEFAULT_MAX_QUEUE_SECONDS,
)
from ratequeue.sentinel_topology import parse_sentinel_addresses


class ServiceSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    control_url: Annotated[RedisUrlText, Setting("--control")] = Field(
        description="redis:// URL of the control store"
    )
    topology_backend: Literal["redis", "etcd", "sentinel"] = Field(
        "redis",
        description="where the topology is read and watched: the control store, etcd, or the "
        "control store's map with the primaries Redis Sentinel names",
    )
    etcd_endpoints: str | None = Field(
        None, description="comma-separated client URLs of the etcd members (topology on etcd)"
    )
    sentinels: Annotated[str | None, Setting(metavar="HOST:PORT,...")] = Field(
        None, description="comma-separated host:port of the sentinels (topology on sentinel)"
    )
    min_replicas: int = Field(1, ge=0, le=16, description="replicas WAIT must confirm")
    wait_timeout_ms: int = Field(
        1000, ge=1, le=60_000, description="milliseconds WAIT may take for the replicas"
    )
    max_body_bytes: int = Field(
        64 * 1024, ge=256, le=16 * 1024 * 1024, description="the largest request body"
    )
    max_queue_seconds: float = Field(
        DEFAULT_MAX_QUEUE_SECONDS,
        gt=0,
        description="seconds of its own sending one number's queue may hold",
    )
    max_number_segments: int = Field(
        DEFAULT_MAX_NUMBER_SEGMENTS, ge=1, le=1_000_000_000,
        description="the most segments one number's queue may hold, whatever its rate",
    )  # fmt: skip
    max_message_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES, ge=16, le=16 * 1024 * 1024,
        description="the largest message body, as stored (compact JSON)",
    )  # fmt: skip
    dedup_window_seconds: int = Field(
        3600, ge=1, description="how long a message id is remembered (seconds)"
    )
    refresh_interval: float = Field(
        2.0, gt=0, le=300, description="seconds between topology re-reads"
    )
    retry_deadline: float = Field(3.0, ge=0, le=60, description="seconds to retry internally")
    max_dequeue: int = Field(
        1000, ge=1, le=100_000, description="the most messages one dequeue may lease"
    )
    max_batch: int = Field(
        1000, ge=1, le=2048, description="messages one POST /v1/messages:batch may carry"
    )
    max_batch_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=256,
        le=256 * 1024 * 1024,
        description="bytes of one POST /v1/messages:batch or :ack request body",
    )
    max_lease_seconds: float = Field(
        3600, gt=0, description="the longest lease a dequeue may ask (seconds)"
    )
    workers: int = Field(
        1, ge=1, le=64, description="API worker processes, each with its own connections"
    )
    worker_healthcheck_seconds: int = Field(
        5, ge=1, le=3600,
        description="how long a worker may not answer uvicorn's health check before it is killed "
        "and started again",
    )  # fmt: skip
    host: str = Field("127.0.0.1", description="address the API listens on")
    port: int = Field(8080, ge=1, le=65535, description="port the API listens on")
    log_level: LogLevel = Field("warning", description="the least severe messages logged")

    @classmethod
    def parse(
        cls, *, origins: Mapping[str, str] | None = None, **values: object
    ) -> ServiceSettings:
        """Validate; raise `common.errors.InvalidSetting` naming each bad setting (and where its
        value came from: `origins`) and what was expected."""
        return parse_settings(cls, values, origins)

    @model_validator(mode="after")
    def _etcd_has_endpoints(self) -> ServiceSettings:
        if self.topology_backend == "etcd":
            etcd_endpoints_checked(self.etcd_endpoints)  # refused here, before the service starts
        return self

    @model_validator(mode="after")
    def _sentinels_usable(self) -> ServiceSettings:
        # Checked whenever given, whatever the backend: a typo is refused, not ignored.
        if self.topology_backend == "sentinel" or self.sentinels is not None:
            self.sentinel_addresses()
        return self

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """The sentinels to follow; SettingProblem blaming `sentinels` if they are not usable."""
        if self.sentinels is None:
            raise SettingProblem(
                "sentinels", "required for topology_backend sentinel (host:port,host:port)"
            )
        try:
            return parse_sentinel_addresses(self.sentinels)
        except ValueError as error:
            raise SettingProblem(
                "sentinels", f"{error} (expected host:port,host:port of the sentinels)"
            ) from None

    def client_settings(self) -> ClientSettings:
        return ClientSettings(
            min_replicas=self.min_replicas,
            wait_timeout_ms=self.wait_timeout_ms,
            dedup_window_seconds=self.dedup_window_seconds,
            max_queue_seconds=self.max_queue_seconds,
            max_number_segments=self.max_number_segments,
            max_message_bytes=self.max_message_bytes,
            refresh_interval=self.refresh_interval,
            # Bounded by time, not by a count: a failover takes about a second, and six quick
            # attempts would give up long before the deadline.
            retry=ClientRetryPolicy(max_attempts=100, deadline=self.retry_deadline),
        )


class InitialTopologySettings(BaseModel):
    """What `ratequeue topology-init` makes the first topology of (besides the store's settings,
    which are `ServiceSettings`')."""

    model_config = ConfigDict(extra="forbid")

    shards: Annotated[list[str], Setting("--shard")] = Field(
        min_length=1,
        description="ID=PRIMARY_HOST[/PEER_HOST]:PORT[,REPLICA_HOST[/PEER_HOST]:PORT...] per "
        "shard, in slot order",
    )
    peer_host: str | None = Field(
        None, description="second address (replication, controllers) of every node without its own"
    )
    wait: float = Field(60.0, ge=0, description="seconds to wait for the nodes")
