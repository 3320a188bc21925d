"""Load through the real ratequeue HTTP API: producers that retry a refused enqueue with the same
id, consumers that lease, record and ack, all written to a `Ledger`.

Not for: judging the results (the ledger and the hypotheses do that).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import httpx
from pydantic import BaseModel, ConfigDict, Field

from chaos.ledger import Attempt, Delivery, Ledger
from ratequeue.numbers import normalize_number, number_type
from ratequeue.rates import DEFAULT_RATES, Rate
from ratequeue.segments import segments_for_body
from ratequeue.slots import slot_for
from ratequeue.topology import Topology


class LoadProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    numbers: int = Field(200, ge=1, le=100_000, description="size of the number pool")
    toll_free_share: float = Field(0.1, ge=0, le=1)
    short_code_share: float = Field(0.02, ge=0, le=1)
    enqueue_per_second: float = Field(100, gt=0, le=50_000)
    producers: int = Field(8, ge=1, le=512)
    consumers: int = Field(4, ge=1, le=512)
    dequeue_batch: int = Field(100, ge=1, le=1000)
    lease_seconds: float = Field(10, gt=0, le=3600)
    give_up_after: float = Field(30, gt=0, description="seconds a producer retries one message")
    in_flight: int = Field(64, ge=1, le=10_000, description="retrying messages per producer")


def lease_time(message: dict) -> float | None:
    """The dequeue answer's `leased_at` as epoch seconds (None when absent or not a time: an
    API from before it was answered)."""
    try:
        return datetime.fromisoformat(message["leased_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def number_pool(profile: LoadProfile, seed: int = 7) -> list[str]:
    """A deterministic mix of long codes, toll-free numbers and short codes."""
    rng = random.Random(seed)
    pool = []
    for index in range(profile.numbers):
        draw = rng.random()
        if draw < profile.short_code_share:
            pool.append(str(20000 + index))
        elif draw < profile.short_code_share + profile.toll_free_share:
            pool.append(f"+1800{5550000 + index:07d}")
        else:
            pool.append(f"+1415{5550000 + index:07d}")
    return [normalize_number(n) for n in pool]


def default_rates(numbers: list[str]) -> dict[str, Rate]:
    return {n: DEFAULT_RATES[number_type(n)] for n in numbers}


@dataclass
class LoadRun:
    """Producers and consumers against one API; `run()` produces for `duration` seconds, then
    keeps consuming until every acknowledged message is delivered or `drain_timeout` passes."""

    api: str
    profile: LoadProfile
    ledger: Ledger
    stop_producing: asyncio.Event | None = None

    async def run(self, duration: float, drain_timeout: float = 60.0) -> Ledger:
        numbers = number_pool(self.profile)
        # Two connection pools, the consumers' never shared with the producers'. Shared, the
        # consumers starve whenever the API holds enqueues (away, restarting, or waiting on a
        # shard's WAIT): up to `in_flight` retrying messages per producer queue for the same
        # connections, ahead of every dequeue, and a dequeue that waits 10 s for one fails as
        # PoolTimeout. Worse, those enqueues are cancelled when producing stops, and httpcore
        # 1.0.9 (encode/httpcore#1093) leaks the slot of a request cancelled after the pool gave
        # it a new connection it had not used yet: one stop under that contention can leak
        # every slot, and every later dequeue through the pool fails, although the API answers
        # again (the probable cause of staging soak run 10's 42 acknowledged undelivered, no
        # dequeue reaching the API for 150 s after its restart: the leak was reproduced
        # in-process, not caught on staging). The consumers are cancelled only when the run
        # ends, and each uses one connection at a time, so their pool never has a request
        # waiting.
        producing_limits = httpx.Limits(max_connections=self.profile.producers + 4)
        consuming_limits = httpx.Limits(max_connections=self.profile.consumers)
        async with (
            httpx.AsyncClient(base_url=self.api, timeout=10, limits=producing_limits) as http,
            httpx.AsyncClient(
                base_url=self.api, timeout=10, limits=consuming_limits
            ) as consuming_http,
        ):
            topology = Topology.model_validate((await http.get("/v1/topology")).json())
            shard_of = {n: topology.shard_for_slot(slot_for(n)).id for n in numbers}
            stop_producing = self.stop_producing or asyncio.Event()
            stop_consuming = asyncio.Event()
            interval = self.profile.producers / self.profile.enqueue_per_second
            producers = [
                asyncio.create_task(
                    self._produce(http, numbers, shard_of, interval, stop_producing)
                )
                for _ in range(self.profile.producers)
            ]
            consumers = [
                asyncio.create_task(self._consume(consuming_http, stop_consuming))
                for _ in range(self.profile.consumers)
            ]
            for consumer in consumers:
                consumer.add_done_callback(self.ledger.record_consumer_end)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_producing.wait(), timeout=duration)
                stop_producing.set()
                await asyncio.gather(*producers)
                deadline = time.monotonic() + drain_timeout
                while (
                    self.ledger.lost()
                    and time.monotonic() < deadline
                    and not all(c.done() for c in consumers)
                ):
                    await asyncio.sleep(0.2)
            finally:
                stop_producing.set()
                stop_consuming.set()
                for task in producers + consumers:
                    if not task.done():
                        task.cancel()
                await asyncio.gather(*producers, *consumers, return_exceptions=True)
        return self.ledger

    async def _produce(
        self,
        http: httpx.AsyncClient,
        numbers: list[str],
        shard_of: dict[str, str],
        interval: float,
        stop: asyncio.Event,
    ) -> None:
        # Each message is retried on its own task: a message held up by a dead shard must not
        # hold up the messages for the shards that still work (that is what availability of the
        # other shards measures). At most `in_flight` retrying messages per producer.
        rng = random.Random()
        in_flight: set[asyncio.Task] = set()
        next_at = time.monotonic() + rng.uniform(0, interval)
        try:
            while not stop.is_set():
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at += interval
                if len(in_flight) >= self.profile.in_flight:
                    continue  # the deployment is this far behind: skip a beat
                number = rng.choice(numbers)
                body = {"text": f"load {uuid.uuid4().hex[:8]}"}
                task = asyncio.create_task(
                    self._enqueue_until_acknowledged(http, number, shard_of[number], body)
                )
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
        finally:
            # Messages still retrying were never acknowledged: nothing to deliver, nothing lost.
            for task in list(in_flight):
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _enqueue_until_acknowledged(
        self, http: httpx.AsyncClient, number: str, shard: str, body: dict
    ) -> None:
        message_id = uuid.uuid4().hex
        give_up = time.monotonic() + self.profile.give_up_after
        delay = 0.05
        while time.monotonic() < give_up:
            started_wall, started = time.time(), time.monotonic()
            try:
                response = await http.post(
                    f"/v1/numbers/{number}/messages", json={"id": message_id, "body": body}
                )
                code = response.status_code
                payload = response.json()
            except (httpx.HTTPError, ValueError) as error:
                code, payload = 0, {"error": {"code": type(error).__name__}}
            except asyncio.CancelledError:
                self.ledger.unanswered_enqueues += 1
                raise
            latency = time.monotonic() - started
            if code == 201:
                outcome = "duplicate" if payload.get("duplicate") else "acknowledged"
                self.ledger.record_attempt(
                    Attempt(started_wall, number, shard, True, outcome, latency)
                )
                self.ledger.record_ack(
                    message_id,
                    number,
                    payload["shard"],
                    started_wall + latency,
                    segments_for_body(body),
                )
                return
            error_code = payload.get("error", {}).get("code", str(code))
            self.ledger.record_attempt(
                Attempt(started_wall, number, shard, False, error_code, latency)
            )
            if code not in (0, 503):
                return  # not retryable (e.g. 429 queue full): nothing was written
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 1.0)

    async def _consume(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            requested = time.time()
            messages: list[dict] = []
            try:
                response = await http.post(
                    "/v1/messages:dequeue",
                    json={
                        "max": self.profile.dequeue_batch,
                        "lease_seconds": self.profile.lease_seconds,
                    },
                )
                if response.status_code == 200:
                    messages = response.json().get("messages", [])
                else:
                    self.ledger.record_failed_dequeue(refusal_kind(response), requested)
            except (httpx.HTTPError, ValueError) as error:
                self.ledger.record_failed_dequeue(type(error).__name__, requested)
            now = time.time()
            self.ledger.slowest_dequeue = max(self.ledger.slowest_dequeue, now - requested)
            for message in messages:
                self.ledger.record_delivery(
                    Delivery(
                        now,
                        message["id"],
                        message["number"],
                        message["attempt"],
                        segments_for_body(message["body"]),
                        requested_at=requested,
                        leased_at=lease_time(message),
                    )
                )
            if messages:
                await self._ack(http, [m["receipt"] for m in messages])
            else:
                await asyncio.sleep(0.05)

    async def _ack(self, http: httpx.AsyncClient, receipts: list[str]) -> None:
        # Not retried: a lease not acknowledged expires and its message is delivered again.
        sent = time.time()
        try:
            response = await http.post("/v1/messages:ack", json={"receipts": receipts})
        except httpx.HTTPError as error:
            self.ledger.record_failed_ack(type(error).__name__, sent)
            return
        if response.status_code != 200:
            self.ledger.record_failed_ack(refusal_kind(response), sent)


def refusal_kind(response: httpx.Response) -> str:
    """An answer other than the one asked for, as "STATUS ERROR-CODE" (the API's error body's
    `code`; "no error code" when the body names none: a proxy's answer, say)."""
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = "no error code"
    return f"{response.status_code} {code}"


class BackgroundLoad:
    """A `LoadRun` on a thread of its own, for callers that inject faults while it runs:
    `start()`, then `stop_producing()` when the experiment is over, then `join()` waits for the
    drain (every acknowledged message delivered, or `drain_timeout`) and returns the ledger."""

    def __init__(
        self,
        api: str,
        profile: LoadProfile,
        *,
        max_duration: float = 3600,
        drain_timeout: float = 60.0,
    ) -> None:
        self.ledger = Ledger()
        self._run = LoadRun(api, profile, self.ledger)
        self._max_duration = max_duration
        self._drain_timeout = drain_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="background-load", daemon=True)

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._run.stop_producing = asyncio.Event()
            self._ready.set()
            await self._run.run(self._max_duration, drain_timeout=self._drain_timeout)

        try:
            asyncio.run(run())
        except BaseException as error:
            self._error = error
        finally:
            self._ready.set()

    def start(self) -> BackgroundLoad:
        self._thread.start()
        self._ready.wait(timeout=10)
        return self

    def stop_producing(self) -> None:
        if self._loop is not None and self._run.stop_producing is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._run.stop_producing.set)

    def join(self, timeout: float | None = None) -> Ledger:
        self.stop_producing()
        self._thread.join(timeout=timeout if timeout is not None else self._drain_timeout + 30)
        if self._error is not None:
            raise RuntimeError(f"load run failed: {self._error!r}") from self._error
        return self.ledger
