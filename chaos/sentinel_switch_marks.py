"""What the sentinels announce of a failover while a chaos run watches it, and when the run heard
it: each sentinel's `+promoted-slave` (the leader's, the moment the replica it promoted
confirmed its role) and `+switch-master` (each sentinel's, as it takes the new configuration),
so the run's timeline places Sentinel's promotion when the sentinels announced it, not when the
run next polled them (every 0.1 s, then a majority read).

The messages are Sentinel's published Pub/Sub events: `+switch-master <master name> <old ip>
<old port> <new ip> <new port>`, and `+promoted-slave <instance details>`, whose details are
`slave <name> <ip> <port> @ <master name> <master ip> <master port>`.

Not for: routing (the API follows Sentinel through `ratequeue.sentinel_topology`, which decides
by a majority); deciding that a promotion happened (the run's poll of a majority does: an
announcement only says when).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass

import redis

from ratequeue.sentinel_topology import SWITCH_MASTER
from ratequeue.topology import NodeRef

log = logging.getLogger(__name__)

PROMOTED = "+promoted-slave"
CHANNELS = (PROMOTED, SWITCH_MASTER)


@dataclass(frozen=True)
class Announcement:
    """A sentinel said that `master`'s primary is now the node at (`host`, `port`)."""

    at: float  # when this process received it (Unix time)
    sentinel: str  # host:port of the sentinel that published it
    event: str  # PROMOTED or SWITCH_MASTER
    master: str
    host: str
    port: int

    def names(self, node: NodeRef) -> bool:
        """Whether it names `node` (by the address Sentinel reached it on: client or peer)."""
        return self.port == node.port and self.host in (node.host, node.peer_host)


def parse_announcement(channel: str, payload: str, sentinel: str, at: float) -> Announcement | None:
    """The announcement in one message, or None for a message of another shape."""
    parts = payload.split()
    if channel == SWITCH_MASTER and len(parts) == 5 and parts[4].isdigit():
        master, _, _, host, port = parts
    elif channel == PROMOTED and len(parts) == 8 and parts[0] == "slave" and parts[4] == "@":
        _, _, host, port, _, master, _, _ = parts
        if not port.isdigit():
            return None
    else:
        return None
    return Announcement(at=at, sentinel=sentinel, event=channel, master=master, host=host,
                        port=int(port))  # fmt: skip


class SentinelAnnouncements:
    """Listens to every sentinel at `addresses` (host, port) from `start` to `close`, one thread
    each; a sentinel that does not answer is retried every `pause` seconds (what it announced
    meanwhile is not heard: the run's poll still places the promotion, later)."""

    def __init__(self, addresses: list[tuple[str, int]], *, pause: float = 0.2) -> None:
        self._addresses = addresses
        self._pause = pause
        self._heard: list[Announcement] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, subscribed_within: float = 2.0) -> SentinelAnnouncements:
        """Starts listening; returns once every sentinel confirmed the subscription, or after
        `subscribed_within` seconds (then the silent ones are listened to as they answer)."""
        ready = [threading.Event() for _ in self._addresses]
        for (host, port), subscribed in zip(self._addresses, ready, strict=True):
            thread = threading.Thread(target=self._listen, args=(host, port, subscribed),
                                      name=f"sentinel-announcements {host}:{port}",
                                      daemon=True)  # fmt: skip
            thread.start()
            self._threads.append(thread)
        deadline = time.monotonic() + subscribed_within
        for subscribed in ready:
            subscribed.wait(max(0.0, deadline - time.monotonic()))
        return self

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> SentinelAnnouncements:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def heard(self) -> list[Announcement]:
        with self._lock:
            return list(self._heard)

    def first_naming(self, master: str, node: NodeRef, since: float) -> Announcement | None:
        """The earliest announcement heard at or after `since` that `master`'s primary is
        `node`, else None."""
        found = [a for a in self.heard() if a.master == master and a.at >= since and a.names(node)]
        return min(found, key=lambda a: a.at, default=None)

    def _listen(self, host: str, port: int, subscribed: threading.Event) -> None:
        address = f"{host}:{port}"
        while not self._stop.is_set():
            connection = redis.Redis(host, port, socket_connect_timeout=1, socket_timeout=1,
                                     decode_responses=True)  # fmt: skip
            pubsub = connection.pubsub()
            try:
                pubsub.subscribe(*CHANNELS)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=self._pause)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        subscribed.set()
                    elif message["type"] == "message":
                        self._understand(message["channel"], message["data"], address)
            except (redis.RedisError, OSError) as error:
                log.debug("sentinel %s not listened to: %s", address, error)
                self._stop.wait(self._pause)
            finally:
                with contextlib.suppress(redis.RedisError, OSError):
                    pubsub.close()
                connection.close()

    def _understand(self, channel: str, payload: str, sentinel: str) -> None:
        announcement = parse_announcement(channel, payload, sentinel, time.time())
        if announcement is None:
            log.debug("sentinel %s: %s %r not understood", sentinel, channel, payload)
            return
        self.record(announcement)

    def record(self, announcement: Announcement) -> None:
        with self._lock:
            self._heard.append(announcement)
