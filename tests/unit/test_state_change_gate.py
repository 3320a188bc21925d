"""The gate before a state-changing step: a node outside its control realm stops without
reading the coordination store (its kill switches and topology are of no use to it)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lazarus_lite.controller import ControllerNode
from lazarus_lite.errors import Escalate
from lazarus_lite.gates import ControlRealm


class UnreadStore:
    """A store the gate must not read."""

    async def step_reads(self) -> None:
        raise AssertionError("the store was read before the control realm was checked")


async def test_a_node_outside_its_control_realm_escalates_before_reading_the_store() -> None:
    node = SimpleNamespace(
        store=UnreadStore(), gates=SimpleNamespace(realm=ControlRealm("eu-west-1", ["us-east-1"]))
    )
    workflow = SimpleNamespace(definition=SimpleNamespace(category="failover"))
    with pytest.raises(Escalate, match=r"control_realm: this node .* is outside"):
        await ControllerNode._before_state_change(node, workflow, "promote")  # type: ignore[arg-type]
