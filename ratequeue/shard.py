"""Queue operations on one shard primary: the scripts of `ratequeue.scripts` plus the durable
enqueue rule (a write is acknowledged only after `WAIT` confirms `min_replicas`).

Not for: choosing the shard or retrying (the client does both).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.validation import quoted
from ratequeue import scripts
from ratequeue.errors import (
    DurabilityNotMet,
    ShardFull,
    ShardScriptFailed,
    ShardUnavailable,
    StaleEpoch,
)
from ratequeue.rates import DEFAULT_MAX_NUMBER_SEGMENTS, Rate

_decode_json = json.JSONDecoder().decode

# What a message id may be (the published schema's pattern too); anchored for the schema, so
# checked with fullmatch (`$` alone also matches before a trailing newline). No `|`, `/` or
# whitespace: those separate a batch's fields, a message's number from its id, and receipts.
MESSAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

# Expired leases returned to their queues per dequeue call: bounds the work of one call.
REQUEUE_LIMIT = 200


@dataclass(frozen=True)
class OutgoingMessage:
    id: str
    number: str
    segments: int
    default_rate: Rate
    body_json: str


@dataclass(frozen=True)
class EnqueueOutcome:
    """`status` is `ok` (queued now), `duplicate` (the same message is held, or was delivered
    within the dedup window), `conflict` (its number used the id for another body then), `full`
    or `invalid` (a message no line of a batch can carry; nothing written)."""

    status: str
    detail: str = ""


# ENQUEUE_BATCH answers one letter per message; reasons come only with `conflict` and `full`.
_OUTCOME_OF_CODE = {"o": EnqueueOutcome("ok"), "d": EnqueueOutcome("duplicate")}
_STATUS_OF_CODE = {"c": "conflict", "f": "full", "x": "invalid"}


@dataclass(frozen=True)
class LeasedMessage:
    id: str
    number: str
    body: Any
    receipt: str
    attempt: int
    shard: str
    leased_at: float
    """When the shard leased it, by its own clock (the DEQUEUE script's time), in seconds."""


@dataclass(frozen=True)
class NumberState:
    depth: int
    held_segments: int
    rate: Rate
    rate_source: str
    next_eligible_ms: float
    now_ms: int


@dataclass(frozen=True)
class ShardStats:
    messages: int
    leased: int
    ready_numbers: int
    quarantined: int = 0  # layout-1 records the conversion set aside (docs/upgrading.md)


def make_receipt(shard_id: str, lease: str) -> str:
    # The lease names the message (`seq:number/id`), so a receipt issued by a primary that died
    # before replicating can never acknowledge a different message leased later under the same
    # sequence number by its successor.
    return f"{shard_id}:{lease}"


# What `parse_receipt` accepts, for the published API schema.
RECEIPT_PATTERN = r"^[^:]+:[0-9]+:[\s\S]+$"


def parse_receipt(receipt: str) -> tuple[str, str]:
    """Split a receipt into (shard id, lease). Raises ValueError naming what is wrong."""
    parts = receipt.split(":", 2)
    # ASCII digits only: str.isdigit() also takes '²' and other scripts' digits.
    sequence_ok = len(parts) == 3 and parts[1].isascii() and parts[1].isdigit()
    if not sequence_ok or not parts[0] or not parts[2]:
        raise ValueError(f"malformed receipt {quoted(receipt)}: expected SHARD:SEQUENCE:MESSAGE")
    return parts[0], f"{parts[1]}:{parts[2]}"


class _Script:
    """A Lua script run by EVALSHA, reloaded when a node (e.g. a newly promoted replica) lacks
    it. Unlike redis-py's Script in a pipeline, it costs no SCRIPT EXISTS round trip."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


ENQUEUE_BATCH = _Script(scripts.ENQUEUE_BATCH)
DEQUEUE = _Script(scripts.DEQUEUE)
ACK = _Script(scripts.ACK)
SET_RATE = _Script(scripts.SET_RATE)
NUMBER_STATUS = _Script(scripts.NUMBER_STATUS)
SHARD_STATS = _Script(scripts.SHARD_STATS)
ALL_SCRIPTS = (ENQUEUE_BATCH, DEQUEUE, ACK, SET_RATE, NUMBER_STATUS, SHARD_STATS)


def enqueue_batch_arguments(
    epoch: int | str,
    messages: Iterable[OutgoingMessage],
    *,
    dedup_window_seconds: int,
    max_queue_seconds: float,
    max_number_segments: int,
) -> list[Any]:
    """The ENQUEUE_BATCH script's arguments: its header (the epoch and the shard's limits), then
    the messages as one argument, a line per message (`number|rate|segments|id|body`). The one
    place that knows the script's argument order.

    A message that cannot be one line (a field holding a newline, or a separator in its number
    or id: `prepare` refuses those, this guards the callers that build messages by hand) is sent
    as a line the script refuses on its own (`invalid`), so the other messages of the batch,
    often other callers' (`ratequeue.coalescing`), keep their lines and their answers."""
    lines = [
        f"{m.number}|{m.default_rate.encode()}|{m.segments}|{m.id}|{m.body_json}"
        if _fits_one_line(m)
        else _INVALID_LINE
        for m in messages
    ]
    return [epoch, dedup_window_seconds, max_queue_seconds, max_number_segments, "\n".join(lines)]


# A line ENQUEUE_BATCH refuses (`x`) without reading anything.
_INVALID_LINE = "!"
_NUMBER_TEXT = re.compile(r"\+?[0-9]+")


def _fits_one_line(message: OutgoingMessage) -> bool:
    return (
        _NUMBER_TEXT.fullmatch(message.number) is not None
        and MESSAGE_ID.fullmatch(message.id) is not None
        and "\n" not in message.body_json
        and message.body_json != ""
    )


def _translate(error: Exception, shard_id: str) -> Exception:
    if isinstance(error, RedisConnectionError | RedisTimeoutError | OSError):
        return ShardUnavailable(f"shard {shard_id}: primary unreachable ({error})")
    if isinstance(error, ReadOnlyError):  # redis-py strips the READONLY prefix from its text
        return ShardUnavailable(f"shard {shard_id}: node is a replica now ({error})")
    if isinstance(error, OutOfMemoryError):
        # Redis refuses a script at its first write only, so nothing of it was written.
        return ShardFull(
            f"shard {shard_id} is full (its maxmemory is reached): nothing was written; it "
            "takes writes again as consumers acknowledge messages"
        )
    if isinstance(error, ResponseError):
        text = str(error)
        if text.startswith("STALEEPOCH") or "STALEEPOCH" in text:
            return StaleEpoch(f"shard {shard_id}: {text}")
        if text.startswith("READONLY") or "READONLY" in text:
            return ShardUnavailable(f"shard {shard_id}: node is a replica now ({text})")
        if text.startswith(("LOADING", "MASTERDOWN", "BUSY", "NOREPLICAS")):
            return ShardUnavailable(f"shard {shard_id}: {text}")
        if "user_script" in text:  # Redis names where in the script it failed
            # A script that failed on data it did not expect: a clean, retryable refusal that
            # names the shard, never an unmapped error (a 500 with a traceback).
            return ShardScriptFailed(f"shard {shard_id}: its script failed ({text})")
    return error


class ShardQueue:
    """The queue on one shard, reached through its current primary."""

    def __init__(
        self,
        shard_id: str,
        primary: aioredis.Redis,
        *,
        dedup_window_seconds: int = 3600,
        max_queue_seconds: float = 36_000,
        max_number_segments: int = DEFAULT_MAX_NUMBER_SEGMENTS,
    ) -> None:
        self.shard_id = shard_id
        self.primary = primary
        self.dedup_window_seconds = dedup_window_seconds
        self.max_queue_seconds = max_queue_seconds
        self.max_number_segments = max_number_segments
        self._scripts_loaded = False

    async def load_scripts(self) -> None:
        """Load the scripts into this node's script cache, even if this queue did before (the
        node may have restarted since; SCRIPT LOAD of a cached script is cheap and writes no
        data, so this is also safe on a replica)."""
        # Loaded up front: a NOSCRIPT inside an EVALSHA+WAIT pipeline would also cost the WAIT.
        try:
            async with self.primary.pipeline(transaction=False) as pipe:
                for script in ALL_SCRIPTS:
                    pipe.script_load(script.source)
                await pipe.execute()
        except Exception as error:
            raise _translate(error, self.shard_id) from error
        self._scripts_loaded = True

    async def _run(self, script: _Script, *args: Any, then_wait: tuple[int, int] | None = None):
        """EVALSHA (loading the script if needed); with `then_wait`, follow it by WAIT on the same
        connection in the same round trip. Returns (script result, replicas acknowledged)."""
        for _ in range(2):
            if not self._scripts_loaded:
                await self.load_scripts()
            try:
                async with self.primary.pipeline(transaction=False) as pipe:
                    pipe.execute_command("EVALSHA", script.sha, 0, *args)
                    if then_wait is not None:
                        pipe.execute_command("WAIT", *then_wait)
                    results = await pipe.execute(raise_on_error=False)
            except Exception as error:  # connection-level failures
                raise _translate(error, self.shard_id) from error
            result = results[0]
            if isinstance(result, NoScriptError):  # e.g. the node restarted since
                self._scripts_loaded = False
                continue
            if isinstance(result, Exception):
                raise _translate(result, self.shard_id) from result
            replicas = None
            if then_wait is not None:
                replicas = results[1]
                if isinstance(replicas, Exception):
                    raise _translate(replicas, self.shard_id) from replicas
            return result, replicas
        raise ShardScriptFailed(
            f"shard {self.shard_id}: its scripts were gone again as soon as "
            "they were loaded (SCRIPT FLUSH?)"
        )

    async def enqueue_batch(
        self,
        epoch: int,
        messages: list[OutgoingMessage],
        *,
        min_replicas: int,
        wait_timeout_ms: int,
    ) -> list[EnqueueOutcome]:
        """Queue `messages` and acknowledge them only when `min_replicas` replicas hold them.

        Raises DurabilityNotMet when WAIT falls short: the writes may persist (WAIT does not roll
        back) and a retry with the same ids is then a no-op that is acknowledged once durable.
        """
        args = enqueue_batch_arguments(
            epoch, messages, dedup_window_seconds=self.dedup_window_seconds,
            max_queue_seconds=self.max_queue_seconds, max_number_segments=self.max_number_segments,
        )  # fmt: skip
        wait = (min_replicas, wait_timeout_ms) if min_replicas > 0 else None
        (codes, details), replicas = await self._run(ENQUEUE_BATCH, *args, then_wait=wait)
        reasons = iter(details)
        outcomes = [
            _OUTCOME_OF_CODE[code]
            if code in _OUTCOME_OF_CODE
            else EnqueueOutcome(_STATUS_OF_CODE[code], next(reasons).decode())
            for code in codes.decode()
        ]
        written = any(outcome.status in ("ok", "duplicate") for outcome in outcomes)
        if wait is not None and replicas < min_replicas and written:
            raise DurabilityNotMet(
                f"shard {self.shard_id}: WAIT confirmed {replicas} of {min_replicas} "
                f"required replicas within {wait_timeout_ms} ms; not acknowledged"
            )
        return outcomes

    async def dequeue(self, max_messages: int, lease_ms: int) -> list[LeasedMessage]:
        result, _ = await self._run(DEQUEUE, max_messages, lease_ms, REQUEUE_LIMIT)
        leased_at = int(result[0]) / 1000
        flat = result[1]
        leased = []
        for i in range(0, len(flat), 5):
            leased.append(
                LeasedMessage(
                    id=flat[i + 1].decode(),
                    number=flat[i + 2].decode(),
                    body=_decode_json(flat[i + 4].decode()),
                    receipt=make_receipt(self.shard_id, flat[i].decode()),
                    attempt=flat[i + 3],
                    shard=self.shard_id,
                    leased_at=leased_at,
                )
            )
        return leased

    async def ack(self, receipts: list[str]) -> int:
        """Acknowledge leases of this shard. A receipt whose lease expired acknowledges nothing."""
        # Sent space-separated: a lease holding whitespace names no lease (numbers and ids hold
        # none), so it is left out rather than split into pieces that might.
        leases = [lease for r in receipts if (lease := parse_receipt(r)[1]).split() == [lease]]
        if not leases:
            return 0
        acked, _ = await self._run(ACK, " ".join(leases), self.dedup_window_seconds)
        return int(acked)

    async def set_rate(
        self, epoch: int, number: str, rate: Rate, *, min_replicas: int, wait_timeout_ms: int
    ) -> None:
        wait = (min_replicas, wait_timeout_ms) if min_replicas > 0 else None
        _, replicas = await self._run(SET_RATE, epoch, number, rate.encode(), then_wait=wait)
        if wait is not None and replicas < min_replicas:
            raise DurabilityNotMet(
                f"shard {self.shard_id}: rate change reached {replicas} of {min_replicas} replicas"
            )

    async def number_state(self, number: str, default_rate: Rate) -> NumberState:
        row, _ = await self._run(NUMBER_STATUS, number, default_rate.encode())
        now_ms, depth, held, rate, source, eligible = row
        return NumberState(
            depth=int(depth),
            held_segments=int(held),
            rate=Rate.decode(rate),
            rate_source=source.decode(),
            next_eligible_ms=float(eligible),
            now_ms=int(now_ms),
        )

    async def stats(self) -> ShardStats:
        row, _ = await self._run(SHARD_STATS)
        return ShardStats(
            messages=int(row[0]),
            leased=int(row[1]),
            ready_numbers=int(row[2]),
            quarantined=int(row[3]),
        )
