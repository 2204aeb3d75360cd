"""Canonical groups and shard plans: a function of the item set, never of order or shard count."""

from __future__ import annotations

import random

import pytest

from sims_core.sharding import canonical_groups, shard_groups, validate_shards


def test_groups_sort_by_length_then_key_and_ignore_input_order():
    keys = [f"p{i}" for i in range(10)]
    lengths = [5, 3, 5, 1, 9, 3, 2, 2, 7, 5]
    groups = canonical_groups(keys, lengths, 4)
    assert [[keys[i] for i in g] for g in groups] == [["p3", "p6", "p7", "p1"], ["p5", "p0", "p2", "p9"], ["p8", "p4"]]
    shuffled = list(range(10))
    random.Random(1).shuffle(shuffled)
    regrouped = canonical_groups([keys[i] for i in shuffled], [lengths[i] for i in shuffled], 4)
    assert [[keys[shuffled[i]] for i in g] for g in regrouped] == [[keys[i] for i in g] for g in groups]


def test_shards_take_whole_groups_round_robin_and_cover_everything_once():
    groups = canonical_groups([f"k{i}" for i in range(23)], [i % 5 for i in range(23)], 4)
    for n in (1, 2, 3, 4, 7, 9):
        plans = [shard_groups(groups, s, n) for s in range(n)]
        assert sorted(tuple(g) for plan in plans for g in plan) == sorted(tuple(g) for g in groups)
        assert plans[0][0] == groups[0] and (n == 1 or plans[1][0] == groups[1])
    assert shard_groups(groups, 8, 9) == []  # more shards than groups: some are empty


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: canonical_groups(["a", "b"], [1], 2), "got 2 keys but 1 lengths"),
        (lambda: canonical_groups(["a", "a"], [1, 2], 2), "'a' appears twice"),
        (lambda: canonical_groups(["a"], [1], 0), "group_size must be a positive integer, got 0"),
        (lambda: shard_groups([[0]], 2, 2), r"shard must be in 0..1, got 2"),
        (lambda: validate_shards(0), "must be a positive integer, got 0"),
    ],
)
def test_bad_plans_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
