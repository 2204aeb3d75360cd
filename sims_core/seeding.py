"""Seeds derived from (run seed, iteration, phase), so a resumed run draws exactly what an
uninterrupted one would have drawn."""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed"]


def derive_seed(seed: int, iteration: int, phase: str) -> int:
    """A 63-bit seed for one phase of one iteration of a run seeded with ``seed``."""
    digest = hashlib.sha256(f"sims\x1f{seed}\x1f{iteration}\x1f{phase}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
