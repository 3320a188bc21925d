"""The gate before a state-changing step: a node outside its control realm stops without
reading the coordination store (its kill switches and topology are of no use to it); the shard
keeper's gates stop it for the realm, the `failover` or `all` kill switch and shadow mode of its
service, and for nothing else."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from lazarus_lite.controller import ControllerNode
from lazarus_lite.errors import Escalate
from lazarus_lite.gates import ALL, ControlRealm, KeeperGates


class UnreadStore:
    """A store the gate must not read."""

    async def step_reads(self) -> None:
        raise AssertionError("the store was read before the control realm was checked")


class UnreadFlags:
    """Flags the keeper's gates must not read."""

    async def kill_switches(self) -> None:
        raise AssertionError("the kill switches were read before the control realm was checked")

    async def shadowed(self) -> None:
        raise AssertionError("shadow mode was read before the control realm was checked")


async def test_a_node_outside_its_control_realm_escalates_before_reading_the_store() -> None:
    node = SimpleNamespace(
        store=UnreadStore(), gates=SimpleNamespace(realm=ControlRealm("eu-west-1", ["us-east-1"]))
    )
    workflow = SimpleNamespace(definition=SimpleNamespace(category="failover"))
    with pytest.raises(Escalate, match=r"control_realm: this node .* is outside"):
        await ControllerNode._before_state_change(node, workflow, "promote")  # type: ignore[arg-type]


class Flags:
    """The kill switches and shadowed services a keeper's gates read, as given."""

    def __init__(self, switches: dict[str, dict[str, Any]], shadowed: list[str]) -> None:
        self.switches, self.shadowed_services = switches, shadowed

    async def kill_switches(self) -> dict[str, dict[str, Any]]:
        return self.switches

    async def shadowed(self) -> list[str]:
        return self.shadowed_services


async def test_the_shard_keeper_outside_its_control_realm_stops_before_reading_the_store() -> None:
    gates = KeeperGates(UnreadFlags(), ControlRealm("eu-west-1", ["us-east-1"]))  # type: ignore[arg-type]
    stop = await gates.check("ratequeue")
    assert stop is not None and stop.gate == "control_realm"


@pytest.mark.parametrize(
    ("switches", "shadowed", "gate"),
    [
        ({"failover": {"reason": "maintenance"}}, [], "kill_switch"),
        ({ALL: {}}, [], "kill_switch"),
        ({}, ["ratequeue"], "shadow"),
        ({}, [ALL], "shadow"),
        # Another category's switch or another service's shadow leaves the keeper free.
        ({"host_replacement": {}, "scaling": {}}, ["sms"], None),
    ],
)
async def test_the_shard_keeper_stops_for_the_failover_kill_switch_and_its_services_shadow(
    switches: dict[str, dict[str, Any]], shadowed: list[str], gate: str | None
) -> None:
    stop = await KeeperGates(Flags(switches, shadowed)).check("ratequeue")  # type: ignore[arg-type]
    assert (stop.gate if stop is not None else None) == gate
