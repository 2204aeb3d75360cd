"""One canonical-JSON hash for everything sims keys on (config subsets, inputs, idempotency keys)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

__all__ = ["canonical_hash", "canonical_json"]


def _default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "model_dump"):  # pydantic
        return obj.model_dump(mode="json")
    if hasattr(obj, "item"):  # numpy scalar
        return obj.item()
    raise TypeError(f"cannot hash/serialise a value of type {type(obj).__name__}")


def canonical_json(obj: Any) -> str:
    """Compact JSON with sorted keys: equal values give equal text on every platform."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_default)


def canonical_hash(obj: Any) -> str:
    """sha256 (hex) of `canonical_json`."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()
