"""Profiles: a service opts in to remediation with a few lines of YAML, and its profile
generates the rules and workflows from a template, with parameters and overrides:

```yaml
service: ratequeue
profile: redis_shard           # or: stateless
team: ratequeue-oncall
overrides: {workflow_timeout: 20m}
```

`redis_shard` fails a shard over (the Ratequeue workflow); `stateless` replaces a host whose
healthcheck is down. Generated rules are checked like hand-written ones.
Not for: loading hand-written rules (see `rules`) or running workflows (see `workflow`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common import input_files
from common.durations import DurationSeconds
from common.validation import describe_problems, validated
from lazarus_lite import steps as _registers_the_steps  # noqa: F401
from lazarus_lite.errors import ProfileError
from lazarus_lite.rules import Rule
from lazarus_lite.workflow.definition import WorkflowDefinition
from lazarus_lite.workflow.loading import parse_workflow

DEFINITIONS = Path(__file__).parent / "definitions"


class Overrides(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workflow_timeout: DurationSeconds = Field(1800.0, gt=0, description="default 30 minutes")
    min_active_hosts: int = Field(1, ge=0)
    lock: Literal["host", "service", "shard"] | None = None


class StatelessParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: list[str] = Field(min_length=1, description="starts a host; {python} {port} ...")
    healthcheck_path: str = "/healthz"


class ServiceProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    profile: Literal["redis_shard", "stateless"]
    team: str = Field(min_length=1, description="notification group")
    environments: str = "dev|stage|prod"
    parameters: dict[str, Any] = Field(default_factory=dict)
    overrides: Overrides = Overrides()


def _redis_shard(p: ServiceProfile) -> tuple[list[Rule], list[WorkflowDefinition]]:
    base = (DEFINITIONS / "workflows" / "ratequeue_failover.yaml").read_text()
    workflow = parse_workflow(base, "redis_shard profile").model_copy(
        update={"name": f"{p.service}.failover", "timeout": p.overrides.workflow_timeout}
    )
    rules = [
        Rule.model_validate(
            {
                "name": f"{p.service}_master_down",
                "description": f"redis_shard profile: fail over a {p.service} shard",
                "criteria": {
                    "environment": p.environments,
                    "event_type": "RedisMasterDown",
                    "service": p.service,
                    "event_data": {"master_link_status": "down"},
                },
                "checks": [
                    {"checkName": "MasterDown"},
                    {"checkName": "ReplicasReachable"},
                    {"checkName": "ReplicaCaughtUp"},
                    {"checkName": "PeerCheck"},
                    {"checkName": "MinActiveHosts", "default": p.overrides.min_active_hosts},
                ],
                "lock": p.overrides.lock or "shard",
                "action": {"name": workflow.name, "inputs": {"notification_group": p.team}},
            }
        ),
        Rule.model_validate(
            {
                "name": f"{p.service}_master_recovered",
                "criteria": {
                    "environment": p.environments,
                    "event_type": "RedisMasterRecovered",
                    "service": p.service,
                },
                "action": {"name": "default.record"},
            }
        ),
    ]
    return rules, [workflow]


def _stateless(p: ServiceProfile) -> tuple[list[Rule], list[WorkflowDefinition]]:
    try:
        parameters = StatelessParameters.model_validate(p.parameters)
    except ValidationError as error:
        raise ValueError(describe_problems(error, within="parameters")) from None
    steps = [
        {
            "name": "acquire_lock",
            "run": "lock.acquire",
            "timeout": "5s",
            "retry": {"max_attempts": 3, "backoff": 0.1},
        },
        {"name": "remove_from_lb", "run": "stateless.remove_from_lb", "needs": ["acquire_lock"]},
        {
            "name": "provision_replacement",
            "run": "stateless.provision_replacement",
            "needs": ["remove_from_lb"],
            "timeout": "60s",
            "retry": {"max_attempts": 2},
        },
        {
            "name": "verify_health",
            "run": "stateless.verify_health",
            "changes_state": False,
            "needs": ["provision_replacement"],
            "retry": {"max_attempts": 5, "backoff": 0.5},
        },
        {"name": "add_to_lb", "run": "stateless.add_to_lb", "needs": ["verify_health"]},
        {
            "name": "hold_for_forensics",
            "run": "stateless.hold_for_forensics",
            "needs": ["add_to_lb"],
        },
        {"name": "release_lock", "run": "lock.release", "needs": ["hold_for_forensics"]},
    ]
    workflow = parse_workflow(
        yaml.safe_dump(
            {
                "name": f"{p.service}.replace_host",
                "category": "host_replacement",
                "description": f"stateless profile: replace a failed {p.service} host",
                "timeout": p.overrides.workflow_timeout,
                "steps": steps,
            }
        ),
        "stateless profile",
    )
    rule = Rule.model_validate(
        {
            "name": f"{p.service}_host_down",
            "description": f"stateless profile: replace a {p.service} host whose healthcheck fails",
            "criteria": {
                "environment": p.environments,
                "event_type": "HealthcheckDown|NagiosHostAlarm",
                "service": p.service,
            },
            "checks": [
                {"checkName": "HealthCheckDown", "params": {"path": parameters.healthcheck_path}},
                {"checkName": "HostPeersHealthy", "params": {"path": parameters.healthcheck_path}},
                {
                    "checkName": "MinActiveHosts",
                    "default": p.overrides.min_active_hosts,
                    "params": {"path": parameters.healthcheck_path},
                },
            ],
            "lock": p.overrides.lock or "host",
            "action": {
                "name": workflow.name,
                "inputs": {
                    "notification_group": p.team,
                    "command": parameters.command,
                    "healthcheck_path": parameters.healthcheck_path,
                },
            },
        }
    )
    return [rule], [workflow]


TEMPLATES = {"redis_shard": _redis_shard, "stateless": _stateless}


def load_profiles(directory: Path) -> tuple[list[Rule], dict[str, WorkflowDefinition]]:
    """Rules and workflows for every service file (*.yaml) in `directory`."""
    rules: list[Rule] = []
    workflows: dict[str, WorkflowDefinition] = {}
    for path in input_files.yaml_files(directory, what="service files", error=ProfileError):
        raw = input_files.load(
            path, expected="a mapping with service, profile and team", error=ProfileError
        )
        profile = validated(ServiceProfile, raw, str(path), error=ProfileError)
        try:
            generated_rules, generated_workflows = TEMPLATES[profile.profile](profile)
        except ValidationError as error:  # what the template generated from the values
            raise ProfileError(f"{path}: {describe_problems(error)}") from None
        except ValueError as error:  # the template's parameters
            raise ProfileError(f"{path}: {error}") from None
        rules += generated_rules
        workflows.update({w.name: w for w in generated_workflows})
    return rules, workflows
