"""Canonical JSON and its hash: one definition of "the same value" for configs and manifests.

``canonical_json(obj)`` is compact JSON with sorted keys (``separators=(",", ":")``, UTF-8,
non-ASCII escaped as JSON does by default); dataclasses, paths, sets, pydantic models and
numpy scalars are converted first. ``canonical_hash(obj)`` is the sha256 hex digest of it.
Config hashing, manifests and the deployment engine's idempotency keys all use this one
definition.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

__all__ = ["canonical_hash", "canonical_json", "json_default"]


def json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "model_dump"):  # pydantic
        return obj.model_dump()
    if hasattr(obj, "item"):  # numpy scalar
        return obj.item()
    raise TypeError(f"cannot hash/serialise a value of type {type(obj).__name__}")


def canonical_json(obj: Any) -> str:
    """Compact JSON with sorted keys (see the module docstring)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=json_default)


def canonical_hash(obj: Any) -> str:
    """sha256 (hex) of `canonical_json` of ``obj``: equal values hash equal across runs,
    processes and key orders."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()
