"""Schemathesis against each service's published OpenAPI, over real HTTP, with real processes
behind: the queue API (redis-server shards), a controller node's REST (a redis-server control
store) and the fault agent (a targets file naming a `sleep` process of this test). Every check
runs: no 5xx, documented status codes, content types, response schemas and headers, schema-valid
data accepted, schema-invalid data refused, 405 with `Allow`, authentication enforced. The seed
is fixed, generation deterministic and the example count bounded, so each run is the same.

Not for: the services' behaviour in detail (their own test files), or load.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from schemathesis.config import SchemathesisConfig
from schemathesis.core.transport import expand_status_codes
from schemathesis.engine import events
from schemathesis.schemas import BaseSchema

from chaos.agent.app import create_app as create_agent_app
from chaos.agent.state import Agent
from chaos.agent.targets import TargetSource
from chaos.faults.local.backend import LocalFaultBackend
from chaos.faults.local.iptables import iptables_unavailable_reason
from common.nodes import CLIENT_HOST
from common.redis_processes import free_port
from ratequeue.config import ServiceSettings
from ratequeue.local_cluster import LocalCluster
from tests.conftest import ServedApi, ServedApp
from tests.lazarus.served_node import served_node

SEED = 20_261_202
EXAMPLES = 20
CONTROLLER_TOKEN = f"fuzz-token-{uuid.uuid4().hex}"
AGENT_KEY = f"fuzz-key-{uuid.uuid4().hex}"

# Schemathesis' own lists of what counts as refusing bad data and as accepting good data, without
# its "5xx" (a 500 fails every check), plus 413: a body's size in bytes is no JSON Schema
# keyword, so a body over the (published) limit may be schema-valid or not, and is refused
# either way, as the schema says. The one server error a service publishes is the 503 of a
# write WAIT did not confirm in time or of a control store that did not answer (retry later):
# on a loaded machine a schema-valid request may get it, so it is no server error here.
REFUSED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "503"]
NOT_A_SERVER_ERROR = ["2xx", "3xx", "4xx", "503"]


def fuzz_config(**project: Any) -> SchemathesisConfig:
    """Every phase but the stateful one (the services publish no links), every check, a fixed
    seed, and no example database (it would write into the working tree)."""
    return SchemathesisConfig.from_dict({
        "seed": SEED,
        "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"not_a_server_error": {"expected-statuses": NOT_A_SERVER_ERROR},
                   "negative_data_rejection": {"expected-statuses": REFUSED},
                   "positive_data_acceptance": {"expected-statuses": ACCEPTED}},
        **project,
    })  # fmt: skip


def fuzz(schema: BaseSchema) -> list[str]:
    """Run every phase against `schema`; one entry per failed check or engine error, with the
    request that reproduces it (none when the service kept its contract)."""
    problems: set[str] = set()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        problems.add(
                            f"{event.recorder.label}: {check.name}: {failure.title}: "
                            f"{failure.message[:300]}\n  {check.failure_info.code_sample[:400]}"
                        )
        elif isinstance(event, events.NonFatalError):
            problems.add(f"{event.label}: error: {event.info.message}")
        elif isinstance(event, events.FatalError):
            problems.add(f"engine: error: {event.exception!r}")
    return sorted(problems)


@pytest.fixture(scope="module")
def queue_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaseSchema]:
    cluster = LocalCluster.start(tmp_path_factory.mktemp("fuzz-queue"), shards=2, replicas=1)
    try:
        # WAIT gets seconds, not the unit tests' 300 ms: a replica of a loaded machine is slow.
        settings = ServiceSettings(control_url=cluster.control.url, wait_timeout_ms=3000,
                                   retry_deadline=0.5, refresh_interval=0.5)  # fmt: skip
        with ServedApi(settings) as api:
            # A well-formed receipt naming a shard the topology lacks is a 400 (see
            # tests/test_http_api.py): which shards exist is not something a schema can say,
            # so "schema-valid data is accepted" cannot apply to acks.
            acks = {"include-path": "/v1/messages:ack",
                    "checks": {"positive_data_acceptance": {"enabled": False}}}  # fmt: skip
            config = fuzz_config(operations=[acks])
            yield schemathesis.openapi.from_url(f"{api.url}/openapi.json", config=config)
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def controller_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaseSchema]:
    # No rules (see served_node): no fuzzed event makes the node probe a host or act.
    with served_node(tmp_path_factory.mktemp("fuzz-controller"), CONTROLLER_TOKEN) as url:
        # An event dated further ahead of the node's clock than max_event_ahead is a 422: what
        # time it is is not something a schema can say, so a schema-valid event may get it.
        dated = {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, "422"]}}
        events = {"include-path": "/v1/events", "include-method": "POST", "checks": dated}
        config = fuzz_config(auth={"openapi": {"bearer": {"bearer": CONTROLLER_TOKEN}}},
                             operations=[events])  # fmt: skip
        yield schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)


@pytest.fixture(scope="module")
def sleeper() -> Iterator[subprocess.Popen]:
    """The agent's only target: a process of this test that nothing may signal."""
    process = subprocess.Popen(["sleep", "600"])
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def agent_schema(
    tmp_path_factory: pytest.TempPathFactory, sleeper: subprocess.Popen
) -> Iterator[BaseSchema]:
    # Harmless by construction: the one allowlisted target claims to be a Redis primary, so the
    # program check refuses to signal its pid (a `sleep`), and its port serves nothing, so a
    # network attack would cut nothing; the backend's chain is this test's own.
    targets = tmp_path_factory.mktemp("fuzz-agent") / "targets.yaml"
    targets.write_text(yaml.safe_dump({"targets": [
        {"name": "fuzz-sleeper", "role": "primary", "port": free_port((CLIENT_HOST,)),
         "pid": sleeper.pid},
    ]}))  # fmt: skip
    backend = LocalFaultBackend(chain=f"RQF{uuid.uuid4().hex[:10].upper()}")
    agent = Agent(api_key=AGENT_KEY, allow={"fuzz-sleeper"}, targets=TargetSource(targets),
                  backend=backend, halt_wait=5)  # fmt: skip
    try:
        with ServedApp(create_agent_app(agent)) as served:
            config = fuzz_config(auth={"openapi": {"apiKey": {"api_key": f"Key {AGENT_KEY}"}}})
            yield schemathesis.openapi.from_url(f"{served.url}/openapi.json", config=config)
    finally:
        agent.halt_all(wait=10)
        if iptables_unavailable_reason() is None:
            backend.cleanup_all()


@pytest.mark.parametrize("check", ["not_a_server_error", "negative_data_rejection",
                                   "positive_data_acceptance"])  # fmt: skip
def test_a_500_fails_every_status_check(check: str) -> None:
    checks = fuzz_config().projects.default.checks
    assert 500 not in expand_status_codes(getattr(checks, check).expected_statuses)


def test_the_published_503_is_not_counted_a_server_error() -> None:
    statuses = fuzz_config().projects.default.checks.not_a_server_error.expected_statuses
    assert 503 in expand_status_codes(statuses)


def test_the_queue_api_keeps_its_published_contract(queue_schema: BaseSchema) -> None:
    problems = fuzz(queue_schema)
    assert not problems, "\n".join(problems)


def test_the_controller_api_keeps_its_published_contract(controller_schema: BaseSchema) -> None:
    problems = fuzz(controller_schema)
    assert not problems, "\n".join(problems)


def test_the_fault_agent_keeps_its_published_contract_and_signals_nothing(
    agent_schema: BaseSchema, sleeper: subprocess.Popen
) -> None:
    problems = fuzz(agent_schema)
    assert not problems, "\n".join(problems)
    state = Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(") ", 1)[1][:1]
    assert sleeper.poll() is None and state != "T"  # neither killed nor paused
