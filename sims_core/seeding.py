"""Seeds and hash-derived numbers: the one place sims turns identities into random draws.

Every random choice takes a seed derived from what it is about (run seed, iteration, phase,
layer, prompt, sample index), never from a position in a list or a shard, so a resumed or
re-sharded run draws exactly what an uninterrupted one would have drawn:

- `seed_from(*parts)`: a 63-bit seed from sha256 of the parts joined by ``"\\x1f"``
  (`derive_seed`, `sims_core.steering.learners.layer_seed` and
  `sims_core.generation.sample_seed` are this with their own parts);
- `unit_from(*parts)`: a number in [0, 1) from sha256 of the parts joined by ``":"`` (prompt
  splits and samples in `sims_core.prompts`);
- `hash64`, the 64 bits both come from.
"""

from __future__ import annotations

import hashlib
from typing import Literal

__all__ = ["derive_seed", "hash64", "seed_from", "unit_from"]

_SEED_MASK = (1 << 63) - 1


def hash64(*parts: object, sep: str = "\x1f", byteorder: Literal["little", "big"] = "little") -> int:
    """The first 8 bytes of sha256 of ``sep.join(str(p) for p in parts)`` (UTF-8) as an
    unsigned integer: the same on every platform, process and run."""
    digest = hashlib.sha256(sep.join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], byteorder)


def seed_from(*parts: object) -> int:
    """A 63-bit seed (fits torch and numpy generators) derived from ``parts``."""
    return hash64(*parts) & _SEED_MASK


def unit_from(*parts: object) -> float:
    """A number in [0, 1) derived from ``parts`` (joined by ``":"``; the documented rule of
    prompt splits: ``sha256("split:<seed>:<prompt_id>")``, big-endian, over 2**64)."""
    return hash64(*parts, sep=":", byteorder="big") / 2.0**64


def derive_seed(seed: int, iteration: int, phase: str) -> int:
    """A 63-bit seed for one phase of one iteration of a run seeded with ``seed``."""
    return seed_from("sims", seed, iteration, phase)
