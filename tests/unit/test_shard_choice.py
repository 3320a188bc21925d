"""Which shard a run is about: the one a step names outright, else one picked at random."""

from __future__ import annotations

import random

import pytest

from chaos.errors import TargetError
from chaos.targets import ShardChoice


def test_a_shard_a_step_names_is_the_runs_shard() -> None:
    for seed in range(20):
        assert ShardChoice(["s0", "s1", "s2"], random.Random(seed), named="s2").chosen == "s2"


def test_a_named_shard_the_topology_does_not_have_is_not_chosen() -> None:
    choice = ShardChoice(["s0", "s1"], random.Random(0), named="s9")
    assert choice.chosen in {"s0", "s1"}


def test_a_step_naming_a_shard_the_topology_lacks_is_refused_naming_the_shards_there() -> None:
    choice = ShardChoice(["s0", "s1"], random.Random(0))
    with pytest.raises(
        TargetError, match=r"no shard 's9' in this deployment \(its shards: s0, s1\)"
    ):
        choice.resolve("s9")
