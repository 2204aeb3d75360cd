"""Splitting a phase's work into shards whose results do not depend on the number of shards.

Floating-point results of a batched forward depend on the batch's shape: a row computed in a
batch of 8 can differ in its last bits from the same row computed in a batch of 3 (the kernels
pick different blockings), and a near-tie in sampling or ranking can then flip. So sharding
must not change which items share a batch. A phase's items are first cut into *canonical
groups*: sorted by (token length, id) and chunked to the batch size, a function of the whole
item set alone; each group is one batch. Shards take whole groups round-robin (group g goes to
shard ``g mod n``), which also balances long and short items across shards. With the same seed
and batch size, 1 shard and n shards compute every batch identically, so their artifacts are
identical; seeds derive from the prompt's text and sample index, never from positions.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["canonical_groups", "shard_groups", "validate_shards"]


def validate_shards(num_shards: int) -> int:
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or num_shards < 1:
        raise ValueError(f"the number of shards must be a positive integer, got {num_shards!r}")
    return num_shards


def canonical_groups(keys: Sequence[str], lengths: Sequence[int], group_size: int) -> list[list[int]]:
    """Positions of the items, sorted by (length, key) and cut into groups of ``group_size``.

    ``keys`` identify the items (prompt or pair ids) and must be unique: the grouping is then the
    same whatever order the items come in."""
    if len(keys) != len(lengths):
        raise ValueError(f"got {len(keys)} keys but {len(lengths)} lengths")
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        for key in keys:
            if key in seen:
                raise ValueError(f"item keys must be unique to group them canonically; {key!r} appears twice")
            seen.add(key)
    order = sorted(range(len(keys)), key=lambda i: (lengths[i], keys[i]))
    return [order[start : start + group_size] for start in range(0, len(order), group_size)]


def shard_groups(groups: Sequence[list[int]], shard: int, num_shards: int) -> list[list[int]]:
    """The groups that shard ``shard`` of ``num_shards`` computes (every ``num_shards``-th)."""
    validate_shards(num_shards)
    if not isinstance(shard, int) or isinstance(shard, bool) or not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in 0..{num_shards - 1}, got {shard!r}")
    return list(groups[shard::num_shards])
