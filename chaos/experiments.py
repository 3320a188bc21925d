"""Experiments: typed models of the YAML files in `scenarios/` (title, load profile, steady-state
probes with tolerances, method, hypotheses, rollbacks), in the spirit of Chaos Toolkit's
experiment model but validated up front: a mistake is reported with the file, the field and what
was expected, before anything is touched.

Not for: running them (see `runner`) or judging results (see `hypotheses`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    Tag,
    field_validator,
    model_validator,
)

from chaos.errors import ExperimentError, NotApplicable
from chaos.faults.base import CPU_MAX_CORES, CPU_MAX_LENGTH, FAULT_ACTIONS
from chaos.load import LoadProfile
from chaos.testbed import AckMode, ControlBackend, FailoverManager
from common import input_files
from common.durations import DurationSeconds, seconds_within
from common.errors import SettingProblem
from common.validation import quoted, validated

Seconds = Annotated[float, Field(ge=0)]

# The longest a run's load lasts (`load.duration`): a step later than that, or a fault that
# lasts longer, happens after the run has ended; more is a typo (`99999999h`), not a test.
DAY = 24 * 3600.0
# A step's time from the load's start: never before it, never after the longest load.
StepTime = Annotated[DurationSeconds, seconds_within(0, DAY)]
# How long a fault lasts before it rolls back by itself, or a wait (a probe's, the outcome's):
# 0 s is no fault and no wait.
Length = Annotated[DurationSeconds, seconds_within(0, DAY, above=True)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoadSettings(LoadProfile):
    """The load profile plus how long producers run in all (the fault happens inside)."""

    duration: DurationSeconds = Field(12.0, gt=0, le=DAY)
    drain_seconds: DurationSeconds = Field(
        30.0, ge=0, le=3600, description="wait for deliveries after"
    )


class Selector(Strict):
    """Which node a step acts on. `shard: random` picks one shard for the whole run (one shard
    at a time); `other` picks a different one; `same` is the run's shard. The coordination
    store's own nodes: `control_store` is the control Redis; `etcd_member` one etcd member,
    by the part it plays at the moment of the fault (`member`: leader, follower or random)."""

    role: Literal[
        "primary", "replica", "controller", "sensor", "api", "etcd_member", "control_store"
    ]
    shard: str = "random"
    which: Literal["first", "random", "coordinator", "all"] = "first"
    member: Literal["leader", "follower", "random"] | None = Field(
        None, description="etcd_member only: which member (default: random)"
    )

    @model_validator(mode="after")
    def _member_is_for_etcd(self) -> Selector:
        if self.member is not None and self.role != "etcd_member":
            raise ValueError(f"member is for an etcd_member target, not {self.role}")
        return self


# What a selector's `shard` says when it names no shard (see Selector).
SHARD_WORDS = frozenset({"random", "same", "other"})
# Nodes of the coordination store, which belong to no shard: their selector's shard is unused.
STORE_NODE_ROLES = frozenset({"etcd_member", "control_store"})


class FaultStep(Strict):
    action: Literal[FAULT_ACTIONS]  # type: ignore[valid-type]
    target: Selector
    backend: Literal["local", "docker", "gremlin"] | None = Field(
        None, description="fault backend; default: the deployment's default_backend"
    )
    at: StepTime = Field(2.0, description="seconds after the load starts")
    duration: Length | None = Field(None, description="roll back by itself after this long")
    when: Literal["now", "workflow_running", "workflow_waiting"] = "now"
    latency_ms: int | None = Field(None, gt=0, le=60_000)
    from_node: Selector | None = Field(None, description="blackhole: cut only this node's path")
    # Strict: `true` or '2' is a typo, not a core count.
    cores: StrictInt | None = Field(
        None, ge=1, le=CPU_MAX_CORES, description="cpu: how many cores to keep busy (default: all)"
    )

    @model_validator(mode="after")
    def _latency_needs_ms(self) -> FaultStep:
        if self.action == "latency" and self.latency_ms is None:
            raise ValueError("a latency fault needs latency_ms")
        return self

    @model_validator(mode="after")
    def _cpu_params(self) -> FaultStep:
        if self.cores is not None and self.action != "cpu":
            raise ValueError(f"cores is for a cpu fault, not {self.action}")
        # Blamed on `duration`, so the message names it (or the argument that set it).
        if self.action == "cpu" and not self.duration:
            raise SettingProblem("duration", "a cpu fault needs how long the cores stay busy")
        if self.action == "cpu" and not 1 <= self.duration <= CPU_MAX_LENGTH:
            # The bounds every backend accepts (Docker and Gremlin take whole seconds).
            raise SettingProblem(
                "duration",
                f"a cpu fault lasts 1 s to {CPU_MAX_LENGTH} s (a day), not {self.duration:g} s",
            )
        return self


class ApproveStep(Strict):
    """Approve a waiting workflow gate through a live controller node."""

    approve: str = Field(description="the gate's step name")
    at: StepTime = 0.0
    when: Literal["now", "workflow_running", "workflow_waiting"] = "workflow_waiting"

    @field_validator("approve")
    @classmethod
    def _names_a_gate(cls, value: str) -> str:
        # An empty name matches no gate: the step would wait out the run approving nothing.
        if not value.strip():
            raise ValueError("must name the gate's step (a workflow step name), not be empty")
        return value


def _method_step_kind(value: Any) -> str:
    # Tags unlike any field's name: an error's location hides them, and must not hide a field.
    if isinstance(value, ApproveStep) or (isinstance(value, dict) and "approve" in value):
        return "approve_step"
    return "fault_step"


MethodStep = Annotated[
    Annotated[FaultStep, Tag("fault_step")] | Annotated[ApproveStep, Tag("approve_step")],
    Discriminator(_method_step_kind),
]


class Probe(Strict):
    """A steady-state probe; checked before the fault (the run aborts if it fails) and, with
    `after: true`, once more after recovery."""

    probe: Literal[
        "api_healthy",
        "controllers_healthy",
        "every_shard_writable",
        "one_primary_per_shard",
        "replicas_attached",
    ]
    after: bool = True
    timeout: Length = 10.0


class RecoveredWithin(Strict):
    type: Literal["recovered_within"]
    seconds: DurationSeconds = Field(gt=0)


class AcknowledgedLost(Strict):
    type: Literal["acknowledged_lost"]
    max: int = Field(0, ge=0)


class Duplicates(Strict):
    type: Literal["duplicates"]
    max: int = Field(ge=0)


class OtherShardsAvailability(Strict):
    type: Literal["other_shards_availability"]
    min: float = Field(ge=0, le=1)


class FaultedShardAvailability(Strict):
    """The faulted shard keeps acknowledging writes while the fault lasts (from the fault to
    its rollback): for a fault that must not stop the shard."""

    type: Literal["faulted_shard_availability"]
    min: float = Field(ge=0, le=1)


class OnePrimaryPerShard(Strict):
    type: Literal["one_primary_per_shard"]


class RateLimitsHeld(Strict):
    type: Literal["rate_limits_held"]
    tolerance_seconds: float = Field(0.25, ge=0)


class Escalated(Strict):
    type: Literal["escalated"]


class NotRemediated(Strict):
    type: Literal["not_remediated"]


class OneWorkflowPerIncident(Strict):
    """Each faulted shard's incident was handled once: at most one failover workflow, and it
    ended (succeeded or escalated), or the incident was escalated without one."""

    type: Literal["one_workflow_per_incident"]


class EscalatedThenRemediated(Strict):
    """The incident was first escalated to a person without a workflow (the store was away),
    then remediated by a workflow that succeeded (once the store was back)."""

    type: Literal["escalated_then_remediated"]


class RemediatedWhileFaultsLasted(Strict):
    """A workflow remediated the faulted shard (it succeeded) before the faults were undone: what
    was faulted (say, the event stream's Redis) was not needed to fail the shard over."""

    type: Literal["remediated_while_faults_lasted"]


class CompletedByAnotherNode(Strict):
    """The failover workflow was resumed and finished by a node other than its coordinator."""

    type: Literal["completed_by_another_node"]


Hypothesis = Annotated[
    RecoveredWithin
    | AcknowledgedLost
    | Duplicates
    | OtherShardsAvailability
    | FaultedShardAvailability
    | OnePrimaryPerShard
    | RateLimitsHeld
    | Escalated
    | NotRemediated
    | CompletedByAnotherNode
    | OneWorkflowPerIncident
    | EscalatedThenRemediated
    | RemediatedWhileFaultsLasted,
    Field(discriminator="type"),
]


class Rollback(Strict):
    """Extra rollbacks after the method's own (every fault is rolled back regardless)."""

    action: Literal["resume_all", "remove_network_faults"]


# Nodes a Sentinel-managed testbed does not have (nor an etcd cluster: its map is in Redis).
SENTINEL_ABSENT_ROLES = frozenset({"controller", "sensor", "etcd_member"})


class TestbedOptions(Strict):
    """How the embedded testbed is started for this experiment (ignored with --target)."""

    shards: int = Field(3, ge=1, le=16)
    replicas: int = Field(2, ge=1, le=4)
    controller_args: list[str] = Field(default_factory=list)


class Experiment(Strict):
    title: str = Field(min_length=1)
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    testbed: TestbedOptions = TestbedOptions()
    load: LoadSettings = LoadSettings()
    steady_state: list[Probe] = Field(default_factory=list)
    method: list[MethodStep] = Field(min_length=1)
    watch_seconds: Length = Field(20.0, description="longest wait for the outcome")
    expect: Literal["remediation", "escalation", "nothing"] = "remediation"
    hypotheses: list[Hypothesis] = Field(min_length=1)
    rollbacks: list[Rollback] = Field(default_factory=list)
    control: ControlBackend = Field(
        "redis", description="the embedded testbed's coordination store (ignored with --target)"
    )
    failover: FailoverManager = Field(
        "lazarus",
        description="who fails the embedded testbed's shards over: the Lazarus controllers or "
        "Redis Sentinel (ignored with --target)",
    )
    ack: AckMode = Field(
        "wait",
        description="the embedded testbed's enqueue acknowledgement: once a replica holds it, "
        "or at once (async; ignored with --target)",
    )

    @model_validator(mode="after")
    def _sentinel_has_no_controllers(self) -> Experiment:
        if self.failover != "sentinel":
            if self.ack == "async":
                raise ValueError(
                    "ack: async is Sentinel's acknowledgement: it needs failover: sentinel "
                    "(the Lazarus controllers appoint every primary with the write quorum)"
                )
            return self
        if self.control != "redis":
            raise ValueError(
                f"failover: sentinel keeps the map in the control Redis: it needs control: "
                f"redis, not control: {self.control}"
            )
        selectors = [s.target for s in self.faults] + [
            s.from_node for s in self.faults if s.from_node is not None
        ]
        absent = sorted({s.role for s in selectors} & SENTINEL_ABSENT_ROLES)
        if absent:
            raise ValueError(
                f"failover: sentinel starts no {' or '.join(absent)}: a target of that role "
                "needs failover: lazarus"
            )
        if any(isinstance(s, ApproveStep) or s.when != "now" for s in self.method):
            raise ValueError(
                "failover: sentinel runs no workflow: an approve step or a step `when` a "
                "workflow runs or waits needs failover: lazarus"
            )
        return self

    @model_validator(mode="after")
    def _etcd_targets_need_etcd(self) -> Experiment:
        roles = [s.target.role for s in self.faults] + [
            s.from_node.role for s in self.faults if s.from_node is not None
        ]
        if "etcd_member" in roles and self.control != "etcd":
            raise ValueError(
                f"an etcd_member target needs control: etcd, not control: {self.control}"
            )
        return self

    @property
    def faults(self) -> list[FaultStep]:
        return [s for s in self.method if isinstance(s, FaultStep)]

    def named_shards(self) -> list[tuple[str, str]]:
        """The shards the method's selectors name outright (not random, same or other), each
        with its field (`method.2.target.shard`): which shards a deployment has is known only
        when a run has its deployment, so a file names them unchecked."""
        named = []
        for index, step in enumerate(self.method):
            if not isinstance(step, FaultStep):
                continue
            for place, selector in (("target", step.target), ("from_node", step.from_node)):
                if (
                    selector is not None
                    and selector.shard not in SHARD_WORDS
                    and selector.role not in STORE_NODE_ROLES
                ):
                    named.append((f"method.{index}.{place}.shard", selector.shard))
        return named

    def unknown_shards(self, shard_ids: list[str]) -> list[str]:
        """What is wrong with the shards the method names, for a deployment of `shard_ids`:
        a sentence per selector naming one it does not have, its field and the shards there
        are (none: every named shard is there)."""
        there = ", ".join(shard_ids) or "none"
        return [
            f"field '{field}': no shard {quoted(shard)} in this deployment (its shards: {there})"
            for field, shard in self.named_shards()
            if shard not in shard_ids
        ]

    def unusable_backends(self, default_backend: str, containers: bool, where: str) -> list[str]:
        """What is wrong with the fault steps' backends for a deployment (`where`) whose
        default backend is `default_backend` and that has `containers` or not: a sentence per
        step the docker backend would fail half-way, naming its field (none: all usable)."""
        problems = []
        for index, step in enumerate(self.method):
            if not isinstance(step, FaultStep) or containers:
                continue
            if (step.backend or default_backend) != "docker":
                continue
            field = (
                f"method.{index}.backend"
                if step.backend
                else f"method.{index} (the deployment's default_backend)"
            )
            problems.append(
                f"field '{field}': docker acts on containers, and {where} has none (no node "
                "names a container, no docker_deployment); use backend local or gremlin, or "
                "a target of a Docker deployment"
            )
        return problems


class TestbedOverrides(Strict):
    """What `ratequeue-chaos run` options set over every file's own (None: the file's)."""

    __test__ = False  # not a pytest test class

    control: ControlBackend | None = None
    failover: FailoverManager | None = None
    ack: AckMode | None = None


def parse_experiment(
    text: str, source: str, overrides: TestbedOverrides | None = None
) -> Experiment:
    """The experiment in `text`; `overrides` (`ratequeue-chaos run --control/--failover/--ack`)
    replace the file's. ExperimentError for a file that is wrong on its own; NotApplicable for
    one that is right but that the overrides cannot run (an etcd_member target on a Redis-only
    testbed, a controller target under Sentinel)."""
    raw = input_files.parse(
        text, source, expected="a mapping with title, method and hypotheses", error=ExperimentError
    )

    def checked(fields: object) -> Experiment:
        # The method's union tags are not fields a person wrote.
        return validated(Experiment, fields, source, error=ExperimentError,
                         hide={"fault_step", "approve_step"})  # fmt: skip

    replaced = {} if overrides is None else overrides.model_dump(exclude_none=True)
    if not replaced or not isinstance(raw, dict):
        return checked(raw)
    try:
        return checked({**raw, **replaced})
    except ExperimentError as error:
        checked(raw)  # a file wrong on its own is refused for that
        raise NotApplicable(str(error)) from None


def load_experiment(path: Path, overrides: TestbedOverrides | None = None) -> Experiment:
    text = input_files.read_text(path, error=ExperimentError)
    return parse_experiment(text, str(path), overrides)


def applicable_experiments(
    paths: list[Path], overrides: TestbedOverrides | None = None
) -> tuple[list[tuple[Path, Experiment]], list[tuple[Path, str]]]:
    """The experiments the overrides can run, and the files they cannot with the reason (a
    directory run under `--failover sentinel` skips the ones that need controllers). A file
    wrong on its own raises ExperimentError."""
    runnable: list[tuple[Path, Experiment]] = []
    skipped: list[tuple[Path, str]] = []
    for path in paths:
        try:
            runnable.append((path, load_experiment(path, overrides)))
        except NotApplicable as reason:
            skipped.append((path, str(reason)))
    return runnable, skipped
