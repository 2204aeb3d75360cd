"""Splitting work into shards by identity, not position.

A prompt (or a preference pair) belongs to shard ``sha256(key) mod n``: the same prompt lands in
the same shard whatever else is in the run, its order, or which worker runs the shard. Seeds
derive from the prompt's text and sample index (see `sims_core.generation`), and batching does
not change results, so a phase split into 1 or n shards writes the same rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = ["shard_of", "shard_indices", "shard_sizes", "validate_shards"]


def validate_shards(num_shards: int) -> int:
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or num_shards < 1:
        raise ValueError(f"the number of shards must be a positive integer, got {num_shards!r}")
    return num_shards


def shard_of(key: str, num_shards: int) -> int:
    """The shard (0..num_shards-1) that ``key`` belongs to."""
    validate_shards(num_shards)
    if not isinstance(key, str):
        raise TypeError(f"a shard key must be a string, got {type(key).__name__}")
    if num_shards == 1:
        return 0
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % num_shards


def shard_indices(keys: Iterable[str], shard: int, num_shards: int) -> list[int]:
    """Positions of the keys that belong to ``shard``, in their original order."""
    validate_shards(num_shards)
    if not isinstance(shard, int) or not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in 0..{num_shards - 1}, got {shard!r}")
    return [i for i, key in enumerate(keys) if shard_of(key, num_shards) == shard]


def shard_sizes(keys: Sequence[str], num_shards: int) -> list[int]:
    """How many keys each shard gets."""
    sizes = [0] * validate_shards(num_shards)
    for key in keys:
        sizes[shard_of(key, num_shards)] += 1
    return sizes
