"""Where a node's peers (replicas, sensors, controllers) reach it, the path the network faults
act on; the client address (`target.host`) stays untouched.

Not for: the client path, or choosing which node to cut off.
"""

from __future__ import annotations

from chaos.faults.base import NodeTarget
from common.nodes import PEER_HOST


def peer_address(target: NodeTarget, peer_host: str | None) -> str:
    """The address a network fault acts on: the one given, the node's own, or the default."""
    return peer_host or target.peer_host or PEER_HOST
