"""Files shipped inside installed wheels (the embedded model, the offline embedding model),
found through package metadata without importing the package: their own declared dependencies
are not needed."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

__all__ = ["packaged_path"]


def packaged_path(distribution: str, relative: str) -> Path | None:
    """Where ``relative`` lies inside the installed ``distribution``; None when the
    distribution is not installed (the caller says how to install it)."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(str(dist.locate_file(relative)))
