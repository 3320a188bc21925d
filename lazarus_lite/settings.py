"""Settings of a controller node, validated before it starts: a bad value stops the node with a
message naming the setting. Every field is a `lazarus serve` option and a `LAZARUS_*` environment
variable (`common.settings_options`). Not for: rules or workflows (YAML files, see `rules`,
`workflow`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.errors import SettingProblem
from common.settings import LogLevel, Setting, etcd_endpoints_checked, parse_settings
from common.validation import HeaderSecret, HttpUrlText, RedisUrlText
from detection.events import MAX_EVENT_AHEAD
from lazarus_lite.coordination.opening import CoordinationBackend
from lazarus_lite.forensics import WEEK, ForensicsRules
from ratequeue.membership import boot_arguments

DEFINITIONS = Path(__file__).parent / "definitions"
# What a decision's store calls (claim, gates, records, the workflow's start) may take beside its
# quorum round.
DECISION_STORE_SECONDS = 1.0
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A node listening on one of these listens on every address of its family, the loopback ones too.
_EVERY_ADDRESS = {
    "0.0.0.0": ipaddress.ip_network("127.0.0.0/8"),
    "::": ipaddress.ip_network("::1/128"),
}


class ControllerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="this node's name")
    control_url: Annotated[RedisUrlText, Setting("--control")] = Field(
        description="redis:// URL of the control store"
    )
    coordination_backend: CoordinationBackend = Field(
        "redis", description="what keeps the coordination store: redis (control_url) or etcd"
    )
    etcd_endpoints: str | None = Field(
        None, description="comma-separated client URLs of the etcd members (backend etcd)"
    )
    peers: Annotated[list[HttpUrlText], Setting("--peer")] = Field(
        default_factory=list,
        description="URLs of the other nodes, each once (this node's own address is refused)",
    )
    quorum: int = Field(
        2, ge=1, le=15, description="distinct nodes (node ids) that must agree on a remediation"
    )
    quorum_timeout: float = Field(
        2.0,
        gt=0,
        le=60,
        description="seconds to wait for the other nodes' votes; event_reclaim_seconds must "
        "hold two such rounds and their store calls (settings that break it are refused)",
    )
    min_replicas: int = Field(1, ge=0, le=16, description="what ratequeue's WAIT requires")
    probe_timeout: float = Field(
        0.25, gt=0, le=10, description="seconds a check's probe of a host may take"
    )
    rules: list[Path] = Field(
        default_factory=lambda: [DEFINITIONS / "rules"], description="rule files or directories"
    )
    workflows: Path = Field(DEFINITIONS / "workflows", description="workflow definitions")
    actuator: Literal["none", "local", "docker"] | None = Field(
        None, description="how replacements are started (default: local with actuator_dir)"
    )
    actuator_dir: Path | None = Field(None, description="the local actuator's working directory")
    replica_maxmemory: str | None = Field(
        None, description="the local actuator's replacements' maxmemory (their shard's own)"
    )
    # The docker actuator's deployment (its labels, Compose project), networks and images; unset:
    # docker-compose.yml's (lazarus_lite.docker_actuator.DockerActuatorSettings).
    docker_deployment: str | None = Field(None, description="the docker actuator's deployment")
    docker_client_network: str | None = Field(None, description="its clients' network")
    docker_peer_network: str | None = Field(None, description="its peers' network")
    docker_redis_image: str | None = Field(None, description="its Redis nodes' image")
    docker_image: str | None = Field(None, description="its services' image")
    forensics_policy: Literal["demote", "stop"] = Field(
        "demote", description="what is done to a returning former primary"
    )
    rejoin_returning: bool = Field(True, description="former members that answer again rejoin")
    forensics_hold: float = Field(
        0, ge=0, le=WEEK, description="seconds a returning node stays parked before it rejoins"
    )
    forensics_keep: int = Field(5, ge=1, le=1000, description="held nodes and copies per shard")
    forensics_max_age: float = Field(WEEK, gt=0, description="seconds a node or copy is kept")
    forensics_dir: Path | None = Field(
        None, description="copies of returning nodes' data files (None: rejoin without a copy)"
    )
    stream: Literal["redis", "kinesis"] = Field("redis", description="the event stream's backend")
    kinesis_stream: str = Field("lazarus-events", description="the Kinesis stream's name")
    kinesis_region: str = Field("us-east-1", description="the Kinesis stream's region")
    kinesis_endpoint: str | None = Field(None, description="a Kinesis endpoint URL (e.g. moto)")
    incident_ttl: float = Field(600, gt=0, description="seconds duplicate alarms collapse")
    incident_retry_seconds: float = Field(
        20,
        ge=0,
        description="an incident whose workflow failed is decided again on a report this much "
        "later (a refused one on the next report); also how often the shard watch reports a "
        "primary that stays down again",
    )
    event_reclaim_seconds: float = Field(
        10,
        gt=0,
        le=600,
        description="seconds an event taken and not acknowledged stays with its node once the "
        "node stops keeping it (a node keeps the events it is handling every third of this) "
        "before another node is handed it: the Redis stream's reclaim idle; on Kinesis, the "
        "shard lease, which the holder's receives renew (a live holder keeps its shard)",
    )
    resume_interval: float = Field(
        1.0, gt=0, le=60, description="seconds between looks for workflows a stopped node left"
    )
    api_token: Annotated[HeaderSecret, Setting(secret=True)] = Field(
        min_length=16, description="bearer token of mutating endpoints"
    )
    region: str = Field("local", description="where this node runs")
    control_realm: list[str] | None = Field(None, description="regions this deployment controls")
    max_event_age: float = Field(300, gt=0, description="older events are dropped as stale")
    max_event_ahead: float = Field(
        MAX_EVENT_AHEAD,
        ge=0,
        le=60,
        description="seconds an arriving event may be dated ahead of its arrival (the "
        "sensors' clock skew): on the stream, of the time the stream took it (a Redis entry "
        "id's, Kinesis's ApproximateArrivalTimestamp), so this node's own clock does not "
        "matter there; on REST, of this node's clock. One dated further ahead is refused (REST "
        "422, the stream dead-letters it): it would look younger than it is for as long, to "
        "the stale gate, the sensor silence watch and the pager",
    )
    rate_limit_window: float = Field(600, gt=0, description="seconds of the incident rate limit")
    rate_limit_threshold: int = Field(10, ge=1, description="incidents per service per window")
    rate_limit_overrides: Annotated[
        dict[str, Annotated[int, Field(ge=1)]], Setting("--rate-limit-override")
    ] = Field(default_factory=dict, description="SERVICE=N: N incidents per window for SERVICE")
    breaker_window: float = Field(600, gt=0, description="seconds of the circuit breaker")
    breaker_threshold: int = Field(3, ge=1, description="distinct failing services per region")
    notifications: Path | None = Field(None, description="notification channels (YAML)")
    services: Path | None = Field(DEFINITIONS / "services", description="service profiles (YAML)")
    forensics_interval: float = Field(
        2.0, gt=0, le=600, description="seconds between the shard keeper's rounds"
    )
    environment: str = Field(
        "dev",
        pattern=r"^[a-z][a-z0-9_-]*$",
        description="environment of the controllers' own reports when no sensor ever spoke",
    )
    watch_interval: float = Field(1.0, gt=0, le=60, description="seconds between shard watches")
    sensor_silence_after: float = Field(
        15.0, gt=0, description="a sensor silent this long is reported (3 heartbeat periods)"
    )
    self_report_after: float = Field(
        3.0, gt=0, description="a primary this node cannot reach this long, unreported, is reported"
    )
    unwritable_after: float = Field(
        20.0, gt=0, description="a shard without a writable primary this long is escalated"
    )
    degraded_after: float = Field(
        60.0,
        gt=0,
        description="a listed replica not following its shard's primary this long is escalated",
    )
    host: str = Field("127.0.0.1", description="address the node's API listens on")
    port: int = Field(8090, ge=1, le=65535, description="port the node's API listens on")
    log_level: LogLevel = Field("warning", description="the least severe messages logged")

    @model_validator(mode="after")
    def _actuator_has_what_it_needs(self) -> ControllerSettings:
        if self.actuator == "local" and self.actuator_dir is None:
            raise SettingProblem(
                "actuator_dir", "required with actuator local (where its nodes live)"
            )
        if self.coordination_backend == "etcd":
            etcd_endpoints_checked(self.etcd_endpoints)  # refused here, before the node starts
        return self

    @model_validator(mode="after")
    def _a_waiting_report_is_decided_before_its_event_is_reclaimed(self) -> ControllerSettings:
        least = 2 * self.decision_budget
        if self.event_reclaim_seconds < least:
            raise SettingProblem(
                "event_reclaim_seconds",
                f"{self.event_reclaim_seconds:g} s is shorter than two decisions of quorum_timeout "
                f"{self.quorum_timeout:g} s plus {DECISION_STORE_SECONDS:g} s of store calls each "
                f"({least:g} s): a report waits for an earlier report's decision, then is decided "
                "itself, before its event is handed to another node; raise "
                "event_reclaim_seconds or lower quorum_timeout",
            )
        return self

    @model_validator(mode="after")
    def _each_peer_is_another_node_listed_once(self) -> ControllerSettings:
        # A peer listed twice, or this node listed as its own peer, would answer the quorum
        # round twice: one node's verdict counted as two (the quorum also counts node ids, for
        # a node reached under a name told apart here only by resolving it).
        seen: dict[tuple[str, str, int, str], str] = {}
        for url in self.peers:
            scheme, host, port, path = peer_address(url)
            if is_own_listen_address(host, port, self.host, self.port):
                raise SettingProblem(
                    "peers",
                    f"{url} is this node's own address (host {self.host}, port {self.port}): "
                    "its own verdict is counted once already; list only the other nodes",
                )
            first = seen.get((scheme, host, port, path))
            if first is not None:
                again = "listed twice" if url == first else f"{first} again"
                raise SettingProblem(
                    "peers",
                    f"{url} is {again} (the same scheme, host, port and path): each node is "
                    "one vote; list it once",
                )
            seen[(scheme, host, port, path)] = url
        return self

    @property
    def decision_budget(self) -> float:
        """Seconds one decision may take: a quorum round and its store calls."""
        return self.quorum_timeout + DECISION_STORE_SECONDS

    @property
    def decision_wait(self) -> float:
        """How long a report waits for an earlier report's decision of its incident: three
        quorum rounds, cut so that its own decision still ends before the stream hands its
        event to another node (which would decide it again)."""
        return min(3 * self.quorum_timeout, self.event_reclaim_seconds - self.decision_budget)

    @property
    def chosen_actuator(self) -> Literal["none", "local", "docker"]:
        """`actuator`, or when unset: local if an actuator_dir is given, else none."""
        if self.actuator is not None:
            return self.actuator
        return "local" if self.actuator_dir is not None else "none"

    @field_validator("rate_limit_overrides", mode="before")
    @classmethod
    def _overrides_from_pairs(cls, value: object) -> object:
        # The CLI and the environment give SERVICE=N pairs; YAML and code give a mapping.
        if not isinstance(value, list | tuple):
            return value
        overrides: dict[str, str] = {}
        for pair in value:
            service, equals, threshold = str(pair).partition("=")
            if not equals or not service.strip():
                raise ValueError(f"expected SERVICE=N (N incidents per window), got {pair!r}")
            overrides[service.strip()] = threshold.strip()
        return overrides

    @field_validator("replica_maxmemory")
    @classmethod
    def _a_memory_size(cls, value: str | None) -> str | None:
        if value is not None:
            boot_arguments(value)  # raises ValueError saying what was expected
        return value

    @field_validator("peers")
    @classmethod
    def _without_trailing_slash(cls, value: list[str]) -> list[str]:
        return [url.rstrip("/") for url in value]

    def forensics_rules(self) -> ForensicsRules:
        return ForensicsRules(
            rejoin=self.rejoin_returning,
            hold_seconds=self.forensics_hold,
            keep=self.forensics_keep,
            max_age=self.forensics_max_age,
            copy_dir=self.forensics_dir,
        )

    @classmethod
    def parse(
        cls, *, origins: Mapping[str, str] | None = None, **values: object
    ) -> ControllerSettings:
        """Validate; raise `common.errors.InvalidSetting` naming each bad setting (and where its
        value came from: `origins`)."""
        return parse_settings(cls, values, origins)


def peer_address(url: str) -> tuple[str, str, int, str]:
    """What tells two peer URLs apart: scheme, host (lower case, an IP address in its one
    written form), port (the scheme's default when none is given) and path (without a trailing
    slash). `localhost` is not taken for 127.0.0.1: what it resolves to varies by machine."""
    parsed = httpx.URL(url)  # the setting's own validator has taken it already
    port = parsed.port or _DEFAULT_PORTS[parsed.scheme]
    return parsed.scheme, _one_form(parsed.host), port, parsed.path.rstrip("/")


def is_own_listen_address(host: str, port: int, listen_host: str, listen_port: int) -> bool:
    """Whether `host:port` (a `peer_address` host) is certainly the socket a node listening on
    `listen_host:listen_port` serves: the same address or name, or a loopback address when it
    listens on every address."""
    listen = _one_form(listen_host)
    if port != listen_port:
        return False
    if host == listen:
        return True
    every = _EVERY_ADDRESS.get(listen)
    try:
        return every is not None and ipaddress.ip_address(host) in every
    except ValueError:  # a name: only the very same name is certain
        return False


def _one_form(host: str) -> str:
    """A host in lower case, an IP address as Python writes it (`::0:1` is `::1`)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:  # a name, not an address
        return host.lower()
