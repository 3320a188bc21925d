"""Number → slot: Redis Cluster's key slot (CRC16-XMODEM mod 16384) of the canonical number,
computed by redis-py's `redis.crc.key_slot`, so a number lands in the slot `CLUSTER KEYSLOT`
gives it. A canonical number holds no `{`, so Redis Cluster's hash tags never apply.

Not for: which shard holds a slot (the topology says that).
"""

from __future__ import annotations

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

SLOT_COUNT = REDIS_CLUSTER_HASH_SLOTS


def slot_for(number: str) -> int:
    """Slot of a canonical number (normalize first: the slot depends on the exact string)."""
    return key_slot(number.encode(), SLOT_COUNT)
