"""A small typed async client for etcd's v3 API over its gRPC-JSON gateway (HTTP/1.1 + JSON,
served by every etcd member on its client port; unary calls through aiohttp on kept-alive
connections, see `_GatewayCalls`, watches through httpx), with what a coordination-store backend
needs: get and get by prefix, put (with a lease), delete, transactions (compare on value, version,
create or mod revision; success and failure operations), leases (grant, keep alive, revoke) and
watches that survive a member's death. Why our own client and aiohttp: docs/etcd-client.md.

Every call has a bounded deadline (`EtcdClientSettings.call_timeout`) and fails over between the
members: a call goes to the member that last answered, and on a refused connection, a member
without a leader ("hasleader" metadata, so a cut-off member refuses at once rather than wait) or a
timeout, moves on to the next. Reads are retried on the next member until the deadline; a write
is retried only when it certainly was not applied (connection refused, no leader), otherwise
`EtcdOutcomeUnknown` says so and the caller reads before it writes again.

Not for: what the keys mean (the coordination store's etcd backend), TLS (https endpoints are
refused by name) or auth (the testbed's etcd is on loopback), or starting etcd
(`common.etcd_processes`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import aiohttp
import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from common.errors import (
    EtcdBadRequest,
    EtcdCompareFailed,
    EtcdError,
    EtcdHistoryCompacted,
    EtcdLeaseNotFound,
    EtcdOutcomeUnknown,
    EtcdUnreachable,
    InvalidSetting,
)

# Sent with every request: a member that has lost its leader answers "no leader" at once (gRPC
# code 14) instead of holding the request until its own request timeout, and drops watch streams
# after three election timeouts without one.
_REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}
_UNARY_HEADERS = {"Content-Type": "application/json", **_REQUIRE_LEADER}
# gRPC status codes the gateway passes on in its error bodies.
_UNAVAILABLE, _DEADLINE_EXCEEDED, _NOT_FOUND, _OUT_OF_RANGE = 14, 4, 5, 11


class EtcdClientSettings(BaseModel):
    """Timeouts of one client. Defaults suit a testbed on loopback whose election timeout is
    half a second (`common.etcd_processes.EtcdTimings`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoints: list[str] = Field(min_length=1)
    """Client URLs of the members, e.g. `http://127.0.0.1:2379`."""
    call_timeout: float = Field(default=3.0, gt=0)
    """The most one call takes, all members tried, before EtcdUnreachable."""
    attempt_timeout: float = Field(default=1.0, gt=0)
    """The most one member is given to answer before the next is tried: above an election
    timeout, so a read on a follower that waits for a new leader is not given up on early."""
    connect_timeout: float = Field(default=0.25, gt=0)
    watch_idle_timeout: float = Field(default=3.0, gt=0)
    """A watch stream silent this long has its member probed; a member that does not answer
    with a leader is left for another (the members send progress every 2 s)."""

    @field_validator("endpoints")
    @classmethod
    def _http_urls(cls, endpoints: list[str]) -> list[str]:
        for url in endpoints:
            parsed = httpx.URL(url)
            if parsed.scheme == "https":
                raise ValueError(
                    f"endpoint {url!r}: https is not supported (no TLS settings here; the "
                    "testbed's etcd serves plain http on loopback), use http://host:port"
                )
            if parsed.scheme != "http" or not parsed.host or not parsed.port:
                raise ValueError(f"endpoint {url!r} is not an http://host:port URL")
        return [url.rstrip("/") for url in endpoints]


def endpoints_setting(endpoints: str | None, setting: str = "etcd_endpoints") -> list[str]:
    """A service's etcd endpoints setting (comma-separated client URLs) as a list, or
    InvalidSetting naming `setting` when it is missing or a URL is not http://host:port."""
    listed = [url.strip() for url in (endpoints or "").split(",") if url.strip()]
    if not listed:
        raise InvalidSetting(
            f"{setting}: required with an etcd backend "
            "(comma-separated client URLs, e.g. http://127.0.0.1:2379,http://127.0.0.1:2381)"
        )
    try:
        return EtcdClientSettings(endpoints=listed).endpoints
    except ValidationError as error:
        problem = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in error.errors())
        raise InvalidSetting(f"{setting}: {problem}") from None


class KeyValue(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


class RangeResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    kvs: list[KeyValue]
    revision: int
    """The store's revision when the read was served."""


class DeleteResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    deleted: int
    revision: int


class WriteResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    revision: int
    """The store's revision after the write (the written key's mod_revision)."""


Target = Literal["value", "version", "create_revision", "mod_revision"]
_TARGETS: dict[Target, tuple[str, str]] = {
    "value": ("VALUE", "value"),
    "version": ("VERSION", "version"),
    "create_revision": ("CREATE", "create_revision"),
    "mod_revision": ("MOD", "mod_revision"),
}
_RESULTS = {"==": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}


class Compare(BaseModel):
    """One condition of a transaction. A key that does not exist has version, create_revision
    and mod_revision 0: `Compare(key=k, target="version", op="==", operand=0)` is "k is absent"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(min_length=1)
    target: Target
    op: Literal["==", "!=", "<", ">"]
    operand: bytes | int

    @model_validator(mode="after")
    def _operand_fits_target(self) -> Compare:
        if self.target == "value" and not isinstance(self.operand, bytes):
            raise ValueError("operand: a value compare takes bytes")
        if self.target != "value" and (isinstance(self.operand, bytes) or self.operand < 0):
            raise ValueError(f"operand: a {self.target} compare takes an integer >= 0")
        return self

    def to_json(self) -> dict[str, Any]:
        target, field = _TARGETS[self.target]
        operand = _b64(self.operand) if self.target == "value" else str(self.operand)
        return {
            "key": _b64(self.key),
            "target": target,
            "result": _RESULTS[self.op],
            field: operand,
        }


class Put(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(min_length=1)
    value: bytes
    lease: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"request_put": _put_body(self.key, self.value, self.lease)}


class Delete(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(min_length=1)
    prefix: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"request_delete_range": _range_body(self.key, self.prefix)}


class Get(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(min_length=1)
    prefix: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"request_range": _range_body(self.key, self.prefix)}


Operation = Put | Delete | Get


class TxnResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    succeeded: bool
    revision: int
    responses: list[RangeResult | DeleteResult | WriteResult]
    """One per operation of the branch that ran, in order."""


class Lease(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    ttl: int
    """Seconds granted (etcd may grant more than asked, never less)."""


class WatchEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: Literal["put", "delete"]
    kv: KeyValue
    """For a delete: the key and the revision of the delete (value empty)."""

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


class EtcdClient:
    """An async etcd v3 client over the JSON gateway of several members. Use as
    `async with EtcdClient(settings) as client:`; one per event loop."""

    def __init__(self, settings: EtcdClientSettings) -> None:
        self.settings = settings
        self._preferred = 0
        self._gateway = _GatewayCalls()

    @classmethod
    def from_setting(cls, endpoints: str | None, setting: str = "etcd_endpoints") -> EtcdClient:
        """A client of a service's endpoints setting (comma-separated client URLs); an
        InvalidSetting naming `setting` when it is missing or malformed (`endpoints_setting`)."""
        return cls(EtcdClientSettings(endpoints=endpoints_setting(endpoints, setting)))

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._gateway.aclose()

    # --- keys ---------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        """The key now (a linearizable read), or None if it does not exist."""
        found = await self.get_range(key)
        return found.kvs[0] if found.kvs else None

    async def get_prefix(self, prefix: str) -> RangeResult:
        """Every key under `prefix`, sorted by key, and the revision they were read at."""
        return await self.get_range(prefix, prefix=True)

    async def get_range(self, key: str, *, prefix: bool = False) -> RangeResult:
        body = _range_body(key, prefix)
        if prefix:
            body |= {"sort_order": "ASCEND", "sort_target": "KEY"}
        answer = await self._call("/v3/kv/range", body, write=False)
        return _range_result(answer)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> WriteResult:
        answer = await self._call("/v3/kv/put", _put_body(key, value, lease), write=True)
        return WriteResult(revision=_revision(answer))

    async def delete(self, key: str, *, prefix: bool = False) -> DeleteResult:
        answer = await self._call("/v3/kv/deleterange", _range_body(key, prefix), write=True)
        return DeleteResult(deleted=int(answer.get("deleted", 0)), revision=_revision(answer))

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[Operation] = (),
        failure: Sequence[Operation] = (),
        *,
        check: bool = True,
    ) -> TxnResult:
        """If every compare holds, apply `success`, else `failure`, atomically. With `check`
        (the default) a failed compare raises EtcdCompareFailed carrying the result."""
        body = {
            "compare": [c.to_json() for c in compare],
            "success": [op.to_json() for op in success],
            "failure": [op.to_json() for op in failure],
        }
        # Only reads (Get) in both branches: a read, safe to send to another member again.
        writes = any(not isinstance(op, Get) for op in (*success, *failure))
        answer = await self._call("/v3/kv/txn", body, write=writes)
        result = TxnResult(
            succeeded=bool(answer.get("succeeded", False)),
            revision=_revision(answer),
            responses=[_op_result(r) for r in answer.get("responses", [])],
        )
        if check and not result.succeeded:
            raise EtcdCompareFailed(
                "compare failed: " + ", ".join(f"{c.key} {c.target} {c.op}" for c in compare),
                result,
            )
        return result

    # --- leases -------------------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> Lease:
        if ttl < 1:
            raise EtcdBadRequest(f"ttl: a lease lives at least 1 second, not {ttl}")
        # A retried grant at worst leaves an unused lease behind, which expires by itself.
        answer = await self._call("/v3/lease/grant", {"TTL": str(ttl)}, write=False)
        if answer.get("error"):
            raise EtcdBadRequest(f"lease grant refused: {answer['error']}")
        return Lease(id=int(answer["ID"]), ttl=int(answer["TTL"]))

    async def keep_alive_once(self, lease_id: int) -> int:
        """Refresh the lease; return its new TTL. EtcdLeaseNotFound once it has expired."""
        answer = await self._call("/v3/lease/keepalive", {"ID": str(lease_id)}, write=False)
        ttl = int(answer.get("result", {}).get("TTL", 0))
        if ttl <= 0:
            raise EtcdLeaseNotFound(f"lease {lease_id} has expired or was revoked")
        return ttl

    async def revoke_lease(self, lease_id: int) -> None:
        """Revoke the lease and delete its keys; a lease already gone is not an error."""
        with contextlib.suppress(EtcdLeaseNotFound):
            await self._call("/v3/lease/revoke", {"ID": str(lease_id)}, write=False)

    async def lease_ttl(self, lease_id: int) -> int:
        """Seconds the lease has left; -1 if it does not exist."""
        answer = await self._call("/v3/lease/timetolive", {"ID": str(lease_id)}, write=False)
        return int(answer.get("TTL", -1))

    @contextlib.asynccontextmanager
    async def kept_alive(self, lease: Lease) -> AsyncIterator[asyncio.Event]:
        """Keep `lease` alive (a refresh every third of its TTL) while the block runs; yields
        an event that is set once the lease may be lost (expired, or no member answered for a
        whole TTL), so a lock holder knows to stop acting. The lease is not revoked on exit."""
        lost = asyncio.Event()

        async def refresh() -> None:
            last_ok = time.monotonic()
            while True:
                await asyncio.sleep(lease.ttl / 3)
                try:
                    await self.keep_alive_once(lease.id)
                    last_ok = time.monotonic()
                except EtcdLeaseNotFound:
                    lost.set()
                    return
                except EtcdUnreachable:
                    if time.monotonic() - last_ok >= lease.ttl:
                        lost.set()
                        return

        task = asyncio.create_task(refresh(), name=f"etcd-lease-{lease.id}")
        try:
            yield lost
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- watches ------------------------------------------------------------------------------

    async def watch(
        self, key: str, *, prefix: bool = False, start_revision: int | None = None
    ) -> AsyncIterator[WatchEvent]:
        """Every change to `key` (or under it, with `prefix`) from `start_revision` (default:
        changes after now), in revision order, each once. When the member streaming them dies,
        is paused or loses its leader, the watch moves to another member and resumes after the
        last revision it yielded. It never ends by itself: it raises EtcdUnreachable when no
        member has streamed for `call_timeout` plus `watch_idle_timeout`, and
        EtcdHistoryCompacted when the revisions to resume from were compacted away."""
        body = _range_body(key, prefix) | {"progress_notify": True}
        next_revision = start_revision
        unreachable_since: float | None = None
        while True:
            index = self._preferred
            url = self.settings.endpoints[index]
            request = (
                body if next_revision is None else body | {"start_revision": str(next_revision)}
            )
            stream = _WatchStream(url, request, self.settings)
            try:
                async for kind, payload in stream.messages():
                    unreachable_since = None
                    if kind == "created":
                        # A watch "from now" resumes after the revision it started at; one
                        # from a given revision is sent the history after this message.
                        if next_revision is None:
                            next_revision = payload + 1
                        continue
                    if kind == "progress":
                        # Every change up to `payload` has been sent.
                        next_revision = max(next_revision or 0, payload + 1)
                        continue
                    # One response holds every event of a revision (etcd never splits one),
                    # several keys of a transaction or a prefix delete among them: the resume
                    # point moves past a revision only once all its events are out.
                    events: list[WatchEvent] = payload
                    floor = next_revision or 0
                    for event in events:
                        if event.revision >= floor:  # else yielded before the stream moved
                            yield event
                    next_revision = max(floor, events[-1].revision + 1)
            except _StreamBroken:
                pass
            finally:
                await stream.aclose()
            now = time.monotonic()
            unreachable_since = unreachable_since or now
            if now - unreachable_since > self.settings.call_timeout:
                raise EtcdUnreachable(
                    f"watch on {key!r}: no member of {self.settings.endpoints} streams changes"
                )
            self._move_past(index)
            await asyncio.sleep(0.05)

    # --- the one way out ----------------------------------------------------------------------

    async def _call(self, path: str, body: dict[str, Any], *, write: bool) -> dict[str, Any]:
        """POST `body` to `path` on the preferred member, moving on to the others until the
        call's deadline (see the module docstring for when a write moves on)."""
        deadline = time.monotonic() + self.settings.call_timeout
        tried: list[str] = []
        while True:
            index = self._preferred
            url = self.settings.endpoints[index]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EtcdUnreachable(
                    f"{path}: no etcd member answered within {self.settings.call_timeout:.1f}s "
                    f"({'; '.join(tried)})"
                )
            try:
                status, text = await self._gateway.post(
                    url + path,
                    json.dumps(body).encode(),
                    connect_timeout=min(self.settings.connect_timeout, remaining),
                    timeout=min(self.settings.attempt_timeout, remaining),
                )
            except _NotSent as error:
                tried.append(f"{url}: {error}")  # never reached it: safe to retry
            except _NoAnswer as error:
                if write:
                    self._move_past(index)
                    raise EtcdOutcomeUnknown(
                        f"{path} sent to {url}, no answer ({error}); it may have been applied"
                    ) from error
                tried.append(f"{url}: {error}")
            else:
                payload = _json_payload(status, text)
                if status == 200 and "code" not in payload:
                    return payload
                code = int(payload.get("code", 0))
                message = str(payload.get("message") or payload.get("error") or text[:200])
                if code == _NOT_FOUND and "lease not found" in message:
                    raise EtcdLeaseNotFound(f"{path}: {message}")
                if code == _OUT_OF_RANGE and "compacted" in message:
                    raise EtcdHistoryCompacted(f"{path}: {message}")
                if code not in (_UNAVAILABLE, _DEADLINE_EXCEEDED) and status < 500:
                    raise EtcdBadRequest(f"{path}: etcd refused the request: {message}")
                if write and "no leader" not in message:
                    # "request timed out", "leader changed": proposed, outcome not known.
                    self._move_past(index)
                    raise EtcdOutcomeUnknown(
                        f"{path} on {url}: {message}; it may have been applied"
                    )
                tried.append(f"{url}: {message}")
            self._move_past(index)
            await asyncio.sleep(0.02 if len(tried) % len(self.settings.endpoints) else 0.1)

    def _move_past(self, index: int) -> None:
        """The next call starts at the member after `index` (unless another call moved on)."""
        if self._preferred == index:
            self._preferred = (index + 1) % len(self.settings.endpoints)


# Idle kept-alive connections per member (as many as calls ran at once, up to this).
_CONNECTIONS_PER_MEMBER = 8


class _NotSent(Exception):
    """The request never reached the member (no connection): safe to send elsewhere."""


class _NoAnswer(Exception):
    """The request was sent, no whole answer came back: it may have been applied."""


class _GatewayCalls:
    """The unary calls (a POST with a JSON body) to every member's JSON gateway, through one
    aiohttp session with kept-alive connections. Why aiohttp and not httpx here: httpx's client
    and httpcore's pool cost ~1.5 ms of CPU per call on this machine (a range read took
    1.8-2.4 ms through httpx, 0.78-0.97 ms through aiohttp), and a failover makes dozens of calls
    one after another while the members share the cores (docs/etcd-client.md). The watch
    streams, few and long-lived, keep httpx.

    aiohttp drops a connection whose answer was not read whole (a cancelled or timed-out call)
    and one the member closed, and never resends a POST on its own, so a write is sent once."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def post(
        self, url: str, body: bytes, *, connect_timeout: float, timeout: float
    ) -> tuple[int, str]:
        # The total bound only starts to count once connected, so a connect that times out is
        # always the connect timeout's (not sent), never the total's (may have been applied).
        bounds = aiohttp.ClientTimeout(total=connect_timeout + timeout, connect=connect_timeout)
        try:
            async with self._open_session().post(
                url, data=body, headers=_UNARY_HEADERS, timeout=bounds
            ) as answer:
                return answer.status, await answer.text()
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            raise _NotSent(f"{type(error).__name__}: {error}") from error
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError) as error:
            raise _NoAnswer(f"{type(error).__name__}: {error}") from error

    def _open_session(self) -> aiohttp.ClientSession:
        # Made on the first call: aiohttp needs the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=_CONNECTIONS_PER_MEMBER),
                auto_decompress=False,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _StreamBroken(Exception):
    """The watch stream on one member ended, failed or went silent: move to another."""


class _WatchStream:
    """One watch stream on one member: messages as ("created", revision), ("progress",
    revision) and ("events", the WatchEvents of one response, in revision order)."""

    def __init__(self, url: str, request: dict[str, Any], settings: EtcdClientSettings) -> None:
        self.url = url
        self.request = request
        self.settings = settings
        # A client of its own: a stream holds its connection for as long as it lives.
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=settings.connect_timeout),
            headers=_REQUIRE_LEADER,
        )
        self.lines: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        self.reader: asyncio.Task | None = None

    async def messages(self) -> AsyncIterator[tuple[str, Any]]:
        self.reader = asyncio.create_task(self._read())
        while True:
            try:
                line = await asyncio.wait_for(
                    self.lines.get(), timeout=self.settings.watch_idle_timeout
                )
            except TimeoutError:
                if await self._member_healthy():
                    continue
                raise _StreamBroken from None
            if line is None or isinstance(line, BaseException):
                raise _StreamBroken
            message = json.loads(line)
            if "error" in message:
                raise _StreamBroken
            result = message.get("result", {})
            if result.get("compact_revision", "0") != "0":
                raise EtcdHistoryCompacted(
                    f"watch: revisions before {result['compact_revision']} were compacted"
                )
            if result.get("canceled"):
                raise _StreamBroken  # e.g. the member lost its leader ("hasleader")
            events = [
                WatchEvent(
                    type="delete" if event.get("type") == "DELETE" else "put",
                    kv=_key_value(event["kv"]),
                )
                for event in result.get("events", [])
            ]
            if events:
                yield "events", events
            if result.get("created"):
                yield "created", _revision(result)
            elif not result.get("events"):
                yield "progress", _revision(result)

    async def _read(self) -> None:
        try:
            async with self.http.stream(
                "POST", self.url + "/v3/watch", json={"create_request": self.request}
            ) as answer:
                if answer.status_code != 200:
                    await self.lines.put(None)
                    return
                async for line in answer.aiter_lines():
                    if line.strip():
                        await self.lines.put(line)
            await self.lines.put(None)
        except (httpx.HTTPError, OSError) as error:
            await self.lines.put(error)

    async def _member_healthy(self) -> bool:
        try:
            answer = await self.http.post(
                self.url + "/v3/maintenance/status",
                json={},
                timeout=self.settings.attempt_timeout,
            )
            return answer.status_code == 200 and _json_of(answer).get("leader", "0") != "0"
        except httpx.HTTPError:
            return False

    async def aclose(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader
        await self.http.aclose()


# --- the gateway's JSON: keys and values in base64, 64-bit integers as strings ---------------


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _prefix_end(prefix: str) -> bytes:
    """The first key after every key that starts with `prefix` (etcd's range_end)."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"  # every key


def _range_body(key: str, prefix: bool) -> dict[str, Any]:
    if not key:
        raise EtcdBadRequest("key: must not be empty")
    body: dict[str, Any] = {"key": _b64(key)}
    if prefix:
        body["range_end"] = _b64(_prefix_end(key))
    return body


def _put_body(key: str, value: bytes, lease: int) -> dict[str, Any]:
    if not key:
        raise EtcdBadRequest("key: must not be empty")
    if not isinstance(value, bytes):
        raise EtcdBadRequest(f"value: must be bytes, not {type(value).__name__}")
    body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = str(lease)
    return body


def _json_of(answer: httpx.Response) -> dict[str, Any]:
    return _json_payload(answer.status_code, answer.text)


def _json_payload(status: int, text: str) -> dict[str, Any]:
    try:
        payload = json.loads(text)
    except ValueError as error:
        raise EtcdError(f"etcd answered {status} without JSON: {text[:200]}") from error
    if not isinstance(payload, dict):
        raise EtcdError(f"etcd answered {status} with {type(payload).__name__}")
    return payload


def _revision(answer: dict[str, Any]) -> int:
    return int(answer.get("header", {}).get("revision", 0))


def _key_value(kv: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(kv["key"]).decode(),
        value=base64.b64decode(kv.get("value", "")),
        create_revision=int(kv.get("create_revision", 0)),
        mod_revision=int(kv.get("mod_revision", 0)),
        version=int(kv.get("version", 0)),
        lease=int(kv.get("lease", 0)),
    )


def _range_result(answer: dict[str, Any]) -> RangeResult:
    return RangeResult(
        kvs=[_key_value(kv) for kv in answer.get("kvs", [])], revision=_revision(answer)
    )


def _op_result(response: dict[str, Any]) -> RangeResult | DeleteResult | WriteResult:
    if "response_range" in response:
        return _range_result(response["response_range"])
    if "response_delete_range" in response:
        deleted = response["response_delete_range"]
        return DeleteResult(deleted=int(deleted.get("deleted", 0)), revision=_revision(deleted))
    return WriteResult(revision=_revision(response.get("response_put", {})))


__all__ = [
    "Compare",
    "Delete",
    "DeleteResult",
    "EtcdClient",
    "EtcdClientSettings",
    "Get",
    "KeyValue",
    "Lease",
    "Put",
    "RangeResult",
    "TxnResult",
    "WatchEvent",
    "WriteResult",
    "endpoints_setting",
]
