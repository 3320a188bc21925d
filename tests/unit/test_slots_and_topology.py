import itertools

import pytest
from pydantic import ValidationError

from ratequeue.cli import initial_topology, parse_shard_spec
from ratequeue.slots import SLOT_COUNT, slot_for
from ratequeue.topology import NodeRef, Shard, Topology, even_slot_ranges


def test_slot_is_the_crc16_xmodem_redis_cluster_uses_mod_16384() -> None:
    # CRC16-XMODEM's check value (the Redis Cluster specification's test vector), and slots
    # Redis documents for `CLUSTER KEYSLOT`.
    assert slot_for("123456789") == 0x31C3 % SLOT_COUNT == 12739
    assert slot_for("foo") == 12182
    assert slot_for("bar") == 5061
    assert slot_for("hello") == 866


def test_numbers_keep_the_slots_they_had() -> None:
    # Computed by the hand-written CRC16 this module used before: a number must never move.
    assert slot_for("+14155550100") == 2256
    assert slot_for("+15005550006") == 5118
    assert slot_for("+447700900123") == 10257


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


def test_a_new_deployment_records_each_shards_replica_count_as_its_target() -> None:
    specs = [parse_shard_spec("s0=10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379"),
             parse_shard_spec("s1=10.0.0.4:6379")]  # fmt: skip

    topology = initial_topology(specs, peer_host=None)

    assert [s.replica_target for s in topology.shards] == [2, 0]
