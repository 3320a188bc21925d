"""Settings of a heartbeat sensor process, validated before it starts: every field is a
`detection sensor` option and a `FAILOVER_*` environment variable (`common.settings_options`);
a bad value stops the sensor with a message naming the setting.

Not for: what the sensor checks while it runs (`SensorConfig`, which these build and which
checks what only the sensor knows, e.g. that its events pass the schema), or the Nagios
check's options (`detection check` takes its own, by the plugin guidelines).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from common.errors import SettingProblem
from common.settings import LoggingLevel, Setting, lowercase_text
from common.validation import RedisUrlText
from detection.errors import InvalidSensorConfig
from detection.sensor import SensorConfig

# The sensor's defaults are SensorConfig's (the testbed and tests build one directly).
DEFAULTS = SensorConfig
# What `sensor_config` passes on: all of SensorConfig, so none can be left out.
SENSOR_CONFIG_FIELDS = tuple(field.name for field in dataclasses.fields(SensorConfig))


class SensorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    control_url: Annotated[RedisUrlText, Setting("--control")] = Field(
        description="control store URL (topology; Redis event stream)"
    )
    replica: str = Field(description="the watched replica, HOST:PORT on its peer address")
    etcd_endpoints: str | None = Field(
        None,
        description="the topology is in etcd: its members' client URLs, a,b,c (unset: in the "
        "control store)",
    )
    name: Annotated[str | None, Setting(env="FAILOVER_SENSOR_NAME")] = Field(
        None, description="sensor name, the events' source (unset: sensor@REPLICA)"
    )
    environment: str = Field(DEFAULTS.environment, description="the events' environment")
    region: str = Field(DEFAULTS.region, description="the events' region")
    service: str = Field(DEFAULTS.service, description="the watched service")
    interval: float = Field(DEFAULTS.interval, description="seconds between checks")
    threshold: int = Field(
        DEFAULTS.threshold, description="consecutive failed PINGs that make the primary down"
    )
    ping_timeout: float = Field(
        DEFAULTS.ping_timeout, description="seconds a PING of the primary may take"
    )
    heartbeat_every: float = Field(
        DEFAULTS.heartbeat_every, description="seconds between SensorHeartbeat events"
    )
    reemit_every: float = Field(
        DEFAULTS.reemit_every, description="seconds between reports of a primary still down"
    )
    info_timeout: float = Field(
        DEFAULTS.info_timeout, description="seconds an INFO of the replica may take"
    )
    control_timeout: float = Field(
        DEFAULTS.control_timeout, description="seconds a topology read or publish may take"
    )
    topology_refresh: float = Field(
        DEFAULTS.topology_refresh,
        description="seconds between topology re-reads while its watch is broken",
    )
    source_host: str | None = Field(None, description="local address the PINGs leave from")
    notifications: Path | None = Field(None, description="page on-call directly (channels YAML)")
    # Any case, as before the settings were a model (`--stream Kinesis`).
    stream: Annotated[Literal["redis", "kinesis"], BeforeValidator(lowercase_text)] = Field(
        "redis", description="event stream backend"
    )
    kinesis_stream: str | None = Field(
        None, description="the Kinesis stream's name (unset: lazarus-events)"
    )
    kinesis_region: str | None = Field(
        None, description="the Kinesis stream's region (unset: us-east-1)"
    )
    kinesis_endpoint: str | None = Field(None, description="a Kinesis endpoint URL (e.g. moto)")
    log_level: LoggingLevel = Field("info", description="the least severe messages logged")
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="serve Prometheus /metrics (probe latency, events published) on this port",
    )
    metrics_host: str = Field("127.0.0.1", description="address for /metrics")

    @model_validator(mode="after")
    def _the_sensor_takes_them(self) -> SensorSettings:
        # The sensor's own checks are the only bounds (the testbed builds a SensorConfig
        # directly): refused here, naming the setting and where its value came from.
        try:
            self.sensor_config()
        except InvalidSensorConfig as error:
            raise SettingProblem(error.setting, error.message) from None
        return self

    def sensor_config(self) -> SensorConfig:
        """The sensor's own configuration: every field of it is a setting of the same name."""
        return SensorConfig(**{name: getattr(self, name) for name in SENSOR_CONFIG_FIELDS})
