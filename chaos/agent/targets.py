"""The nodes the agent may attack: read from a testbed (`testbed.json` or its directory) or a
targets file (a `targets:` list in YAML or JSON), and re-read when the file changes so a
replaced node's pid is current.

Not for: deciding whether an attack may touch a node (`execution.check_plan`) or the allowlist
of identifiers (`state.Agent`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from chaos.faults.base import NodeAddress, NodeTarget
from common import input_files
from common.errors import InputFileError
from common.validation import validated


class AgentTarget(BaseModel):
    """A node the agent may attack: where it is, and optionally how to restart it."""

    model_config = ConfigDict(extra="forbid")

    node: NodeTarget
    command: list[str] | None = None
    expect: str | None = None


class _TargetEntry(NodeAddress):
    """A node as the agent's targets file lists it: no container or Gremlin target (the agent
    is the Gremlin target), and how to restart it and what it runs."""

    command: list[str] | None = None
    expect: str | None = None


def load_targets(path: Path) -> dict[str, AgentTarget]:
    """Targets by identifier from a testbed (`testbed.json` or its directory) or a targets
    file (`targets:` list in YAML or JSON). Raises ValueError with the reason."""
    if path.is_dir():
        path = path / "testbed.json"
    expected = "a testbed.json or a 'targets:' list"
    data = input_files.load(path, expected=expected, shape=(dict, list))
    if isinstance(data, dict) and "nodes" in data:
        return _testbed_targets(data, path)
    entries = data.get("targets") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise InputFileError(f"{path}: expected {expected}")
    targets: dict[str, AgentTarget] = {}
    for index, raw in enumerate(entries):
        where = f"{path}: targets[{index}]"
        entry = validated(_TargetEntry, raw, where, error=InputFileError)
        fields = entry.model_dump(exclude={"command", "expect"})
        node = validated(NodeTarget, fields, where, error=InputFileError)
        targets[entry.name] = AgentTarget(node=node, command=entry.command, expect=entry.expect)
    return targets


def _testbed_targets(data: dict[str, Any], path: Path) -> dict[str, AgentTarget]:
    from chaos.targets import from_testbed
    from chaos.testbed import TestbedState

    state = validated(TestbedState, data, str(path), error=InputFileError)
    deployment = from_testbed(state, path.parent)
    return {n.name: AgentTarget(node=deployment.as_target(n)) for n in deployment.nodes}


class TargetSource:
    """A targets file, re-read whenever it changes (a testbed replaces nodes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._targets: dict[str, AgentTarget] = {}
        self._lock = threading.Lock()
        self.get_all()  # fail at start, not at the first attack

    def _file(self) -> Path:
        return self.path / "testbed.json" if self.path.is_dir() else self.path

    def get_all(self) -> dict[str, AgentTarget]:
        with self._lock:
            try:
                stat = self._file().stat()
                stamp = (stat.st_mtime, stat.st_size)
            except OSError:
                stamp = None
            if stamp is None or stamp != self._stamp:
                self._targets = load_targets(self.path)
                self._stamp = stamp
            return dict(self._targets)
