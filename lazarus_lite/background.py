"""The controller node's background loops: taking events from the stream (each handled in a
task of its own, acknowledged once decided), resuming orphaned workflows, putting returning
nodes back where the topology says, and writing the escalations made while the store was
unreachable once it answers. Each loop survives its own failures and runs until
cancelled.

Not for: what is done with an event (`controller.ControllerNode.handle`), the shard watch's
loop (`shard_watch.watch_forever`), or what the shard keeper does (`shard_keeper`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from common.cancellation import stop_if_cancelled
from detection.events import Event
from detection.streams import EventStream, Received
from lazarus_lite.decisions import Decisions
from lazarus_lite.errors import DecisionPending, EventIdReused
from lazarus_lite.shard_keeper import ShardKeeper
from lazarus_lite.workflow.engine import WorkflowEngine

log = logging.getLogger(__name__)

EventHandler = Callable[[Event], Awaitable[Any]]


async def consume_events(
    stream: EventStream,
    node_id: str,
    handle: EventHandler,
    handling: set[asyncio.Task],
    *,
    keep_every: float,
) -> None:
    """Hand each event of the stream to `handle` in a task of its own (kept in `handling`),
    keeping the event with this node every `keep_every` seconds while it is handled (a third
    of the stream's reclaim interval)."""
    while True:
        try:
            batch = await stream.receive(node_id, count=10, block_ms=200)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            stop_if_cancelled()
            log.warning("%s: stream unavailable: %s", node_id, error)
            await asyncio.sleep(0.5)
            continue
        stop_if_cancelled()  # the batch is left pending: another node reclaims it
        for received in batch:
            task = asyncio.create_task(
                _handle_and_ack(stream, node_id, handle, received, keep_every)
            )
            handling.add(task)
            task.add_done_callback(handling.discard)


async def _handle_and_ack(
    stream: EventStream,
    node_id: str,
    handle: EventHandler,
    received: Received,
    keep_every: float,
) -> None:
    # However long the handling takes (a quorum round, then paging with retries), the stream
    # must not hand the event out again meanwhile: a second copy would decide or page again.
    keeping = asyncio.create_task(_keep_while_handled(stream, node_id, received, keep_every))
    try:
        await handle(received.event)
        await stream.ack(received)
    except asyncio.CancelledError:
        raise
    except DecisionPending as pending:
        log.warning("%s: %s", node_id, pending)
        # Handed out again explicitly (a Kinesis shard's holder never re-reads what it took):
        # the same event, published again, then this copy acknowledged.
        await _publish_again(stream, node_id, received)
    except EventIdReused as reused:
        # Never decidable: handed out again it would be refused again, for good.
        log.warning("%s: %s", node_id, reused)
        await _refuse(stream, node_id, received, str(reused))
    except Exception:
        # Not acked: another node reclaims it after the stream's reclaim interval.
        log.exception("%s: event %s not handled", node_id, received.event.id)
    finally:
        keeping.cancel()


async def _keep_while_handled(
    stream: EventStream, node_id: str, received: Received, every: float
) -> None:
    while True:
        await asyncio.sleep(every)
        stop_if_cancelled()
        try:
            await stream.keep(node_id, received)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("%s: event %s not kept: %s", node_id, received.event.id, error)


async def _publish_again(stream: EventStream, node_id: str, received: Received) -> None:
    try:
        await stream.publish(received.event)
        await stream.ack(received)
    except asyncio.CancelledError:
        raise
    except Exception:
        # Left unacknowledged: the stream's reclaim (or a new shard holder) hands it out.
        log.exception("%s: event %s not published again", node_id, received.event.id)


async def _refuse(stream: EventStream, node_id: str, received: Received, reason: str) -> None:
    try:
        await stream.refuse(received, reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        # Left unacknowledged: handed out again, it is refused again.
        log.exception("%s: event %s not dead-lettered", node_id, received.event.id)


async def resume_orphans(engine: WorkflowEngine, node_id: str, interval: float) -> None:
    """Every `interval` seconds, claim and resume workflows whose owner's lease lapsed."""
    while True:
        try:
            await engine.resume_orphans()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("%s: resume scan failed: %s", node_id, error)
        stop_if_cancelled()
        await asyncio.sleep(interval)


async def keep_shards(keeper: ShardKeeper, node_id: str, interval: float) -> None:
    """Nodes that come back are put where the topology says (see `shard_keeper`)."""
    while True:
        await asyncio.sleep(interval)
        stop_if_cancelled()
        try:
            for change in await keeper.run_once():
                log.warning("%s: %s", node_id, change)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("%s: shard keeper pass failed: %s", node_id, error)


async def write_held_records(decisions: Decisions, interval: float) -> None:
    """Every `interval` seconds, write what was decided while the record log was away."""
    while True:
        await asyncio.sleep(interval)
        stop_if_cancelled()
        if not len(decisions.records):
            continue
        try:
            await decisions.write_held()  # what it cannot write stays held
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("%s: writing held records failed: %s", decisions.node_id, error)
