import itertools

import pytest
from pydantic import ValidationError

from ratequeue.slots import SLOT_COUNT, crc16, slot_for
from ratequeue.topology import NodeRef, Shard, Topology, even_slot_ranges


def test_crc16_is_the_xmodem_variant_redis_cluster_uses() -> None:
    assert crc16(b"123456789") == 0x31C3


def test_slot_is_crc16_of_the_number_mod_16384() -> None:
    assert slot_for("+14155550100") == crc16(b"+14155550100") % SLOT_COUNT


def test_even_slot_ranges_cover_every_slot_once() -> None:
    ranges = even_slot_ranges(3)
    assert ranges[0][0] == 0 and ranges[-1][1] == SLOT_COUNT - 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(ranges))


def _shard(shard_id: str, slots: tuple[int, int]) -> Shard:
    node = NodeRef(name=f"{shard_id}-p", host="127.0.0.1", port=7000)
    return Shard(id=shard_id, slots=slots, epoch=1, primary=node)


def test_a_topology_with_a_slot_gap_is_refused() -> None:
    with pytest.raises(ValidationError, match="without gaps"):
        Topology(epoch=1, shards=[_shard("s0", (0, 100)), _shard("s1", (200, SLOT_COUNT - 1))])


def test_slots_route_to_the_shard_whose_range_holds_them() -> None:
    topology = Topology(epoch=1, shards=[_shard("s0", (0, 8191)), _shard("s1", (8192, 16383))])
    assert topology.shard_for_slot(8191).id == "s0"
    assert topology.shard_for_slot(8192).id == "s1"
