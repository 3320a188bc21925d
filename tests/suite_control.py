"""Which control store the suite's testbeds, controllers, sensors and APIs run on: the one switch
`RATEQUEUE_SUITE_CONTROL` (`redis`, the default, or `etcd`: three etcd members beside the
Redis that carries the event stream), read once and checked at collection (`make test-etcd`).

What follows the switch: every testbed the suite starts in process (`chaos.testbed.up`, so
`running_testbed`), on the command line (`tests.e2e.support.cli_testbed`) and for a scenario
(`scenario_journal`), unless the test names its control store itself, or the testbed is
managed by Redis Sentinel (which keeps its map in the control Redis: those stay on Redis);
the API over a local cluster (`serve_api`), the sensor tests' sensors, the controller tests'
`coordination` store and served node. The full list, and what does not follow yet, is in
docs/suite-on-etcd.md.
Tests about the Redis store alone (its keys, its outage) carry the `redis_control_store`
marker and are skipped on etcd with the marker's reason. Not for: tests that are about etcd
or about both stores (they choose their backend themselves, whatever the switch says).
"""

from __future__ import annotations

import os
from typing import get_args

from chaos.testbed import ControlBackend

SUITE_CONTROL_ENV = "RATEQUEUE_SUITE_CONTROL"
REDIS_ONLY_MARKER = "redis_control_store"


def suite_control() -> ControlBackend:
    """The control store the switch names (`redis` when unset); a bad value is a ValueError
    naming the variable and the values it takes."""
    value = os.environ.get(SUITE_CONTROL_ENV, "redis")
    choices = get_args(ControlBackend)
    if value not in choices:
        raise ValueError(
            f"{SUITE_CONTROL_ENV}={value!r}: expected one of {', '.join(choices)} "
            "(the control store the suite's testbeds, controllers and APIs run on)"
        )
    return value  # type: ignore[return-value]


def up_args_on_suite_control(args: tuple[str, ...]) -> tuple[str, ...]:
    """`ratequeue-chaos testbed up` arguments with `--control etcd` added when the switch says
    etcd and the arguments name neither a control store nor Sentinel."""
    if suite_control() == "redis" or "--control" in args or "sentinel" in args:
        return args
    return (*args, "--control", "etcd")
