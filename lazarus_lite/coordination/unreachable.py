"""What each backend raises when its store is away (not that it answered something wrong, nor
a bug of ours): only these make a node act as if the store were away (the shard watch reports
it, the workflow engine gives up a best-effort clean-up and lets the lease lapse instead).

Not for: the interface itself (`interface`, which names no backend) or the wider set the API
answers with a 503 (each backend's `unavailable`, which also holds errors a store answered).
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.errors import EtcdUnreachable

STORE_UNREACHABLE: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,  # TimeoutError too: a read that outlived `store_timeout`
    EtcdUnreachable,
)
