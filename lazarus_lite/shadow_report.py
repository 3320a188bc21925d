"""`lazarus shadow-report`: what notification-only (shadow) mode decided, next to what happened
afterwards, so a team can judge the automation before letting it act (the seed's way of finding
false positives: compare what Lazarus would have done with what on-call engineers did).

It also records each shadow decision as the controller makes it
(`remember_shadow_decision`), and each change the shard keeper withheld in shadow mode
(`remember_keeper_shadow_decision`). Not for: deciding (the controller does).
"""

from __future__ import annotations

import time
from typing import Any

from detection.events import Event
from detection.probes import ping
from lazarus_lite.coordination.interface import RecordLog
from ratequeue.topology import Shard, TopologySource

# The `type` of a shadow decision the shard keeper made (it acts on no event).
KEEPER_DECISION = "ShardKeeper"


async def shadow_report(
    records: RecordLog, topology_store: TopologySource, limit: int = 200
) -> list[dict[str, Any]]:
    decisions = await records.shadow_decisions(limit)
    topology = await topology_store.load()
    rows = []
    for decision in decisions:
        row = {**decision, "afterwards": "unknown", "agrees": None}
        if decision.get("type") == KEEPER_DECISION:
            # No failure was judged: the keeper puts a returning node back, which happens once
            # shadow mode is off, so there is nothing afterwards to agree with or not.
            row["afterwards"] = "not compared: a shard keeper change, made once shadow mode is off"
            rows.append(row)
            continue
        if topology is not None and decision.get("shard"):
            try:
                shard = topology.shard(decision["shard"])
            except KeyError:
                rows.append(row)
                continue
            if decision.get("primary_then") and shard.primary.name != decision["primary_then"]:
                row["afterwards"] = (f"the primary changed to {shard.primary.name} (a person or "
                                     "another system failed it over)")  # fmt: skip
                row["agrees"] = True
            else:
                probe = await ping(shard.primary.peer_host or shard.primary.host,
                                   shard.primary.port, 0.5)  # fmt: skip
                if probe.ok:
                    row["afterwards"] = "the primary answers again without any action"
                    row["agrees"] = False
                else:
                    row["afterwards"] = "the primary is still down and nobody acted"
                    row["agrees"] = True
        rows.append(row)
    return rows


async def remember_shadow_decision(
    records: RecordLog, topology_store: TopologySource, event: Event, action: str
) -> None:
    """Record what shadow mode would have run, with the primary and the topology epoch of the
    moment, for the report to compare with what happened afterwards."""
    topology = await topology_store.load()
    primary = None
    if topology is not None and event.shard:
        try:
            primary = topology.shard(event.shard).primary.name
        except KeyError:
            primary = None
    await records.append_shadow_decision(
        {
            "event_id": event.id,
            "service": event.service,
            "shard": event.shard,
            "type": event.type,
            "action": action,
            "decided_at": time.time(),
            "primary_then": primary,
            "topology_epoch_then": topology.epoch if topology else None,
        }
    )


async def remember_keeper_shadow_decision(
    records: RecordLog, service: str, shard: Shard, action: str, node_id: str
) -> None:
    """Record a change the shard keeper would have made on `shard` in shadow mode, beside the
    controller's shadow decisions (no event: `event_id` is None)."""
    await records.append_shadow_decision(
        {
            "event_id": None,
            "service": service,
            "shard": shard.id,
            "type": KEEPER_DECISION,
            "action": action,
            "decided_at": time.time(),
            "primary_then": shard.primary.name,
            "shard_epoch_then": shard.epoch,
            "node": node_id,
        }
    )
