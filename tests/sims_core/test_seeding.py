"""One seed derivation and one canonical hash: the values every earlier release produced."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from sims_core.generation import sample_seed
from sims_core.hashing import canonical_hash, canonical_json
from sims_core.prompts import _unit
from sims_core.seeding import derive_seed, hash64, seed_from, unit_from
from sims_core.steering.learners import layer_seed


def _old_seed(text: str) -> int:
    """The derivation every seed helper used before they shared `seed_from`."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def test_the_four_seed_helpers_keep_their_values():
    for seed in (0, 7, 2**40 + 3):
        for i in (0, 3):
            assert derive_seed(seed, i, "generate") == _old_seed(f"sims\x1f{seed}\x1f{i}\x1fgenerate")
            assert layer_seed(seed, i, "holdout") == _old_seed(f"{seed}\x1f{i}\x1fholdout")
            assert sample_seed(seed, "Qu'est-ce que c'est ?", i) == _old_seed(f"{seed}\x1f{i}\x1fQu'est-ce que c'est ?")
            digest = hashlib.sha256(f"split:{seed}:abc:{i}".encode()).digest()
            assert _unit("split", seed, "abc", i) == int.from_bytes(digest[:8], "big") / 2.0**64


def test_seed_from_fits_63_bits_and_unit_from_is_in_the_unit_interval():
    seeds = [seed_from("x", i) for i in range(200)]
    assert all(0 <= s < 2**63 for s in seeds) and len(set(seeds)) == 200
    units = [unit_from("x", i) for i in range(200)]
    assert all(0.0 <= u < 1.0 for u in units)
    assert 0.35 < float(np.mean(units)) < 0.65
    assert hash64("a", "b") == hash64("a", "b") != hash64("a", "b", sep=":")


@dataclasses.dataclass
class _Point:
    x: int
    tags: frozenset


def test_canonical_hash_is_sorted_compact_json_sha256():
    obj = {"b": [1, 2.5, None], "a": {"z": "é", "y": True}}
    text = '{"a":{"y":true,"z":"\\u00e9"},"b":[1,2.5,null]}'
    assert canonical_json(obj) == text
    assert canonical_hash(obj) == hashlib.sha256(text.encode()).hexdigest()
    assert canonical_hash({"a": {"y": True, "z": "é"}, "b": [1, 2.5, None]}) == canonical_hash(obj)  # key order
    # the conversions storage's stable_hash applies: dataclasses, paths, sets, numpy scalars
    value = {"p": _Point(1, frozenset({"b", "a"})), "path": Path("/tmp/x"), "n": np.int64(3)}
    assert json.loads(canonical_json(value)) == {"p": {"x": 1, "tags": ["a", "b"]}, "path": "/tmp/x", "n": 3}
