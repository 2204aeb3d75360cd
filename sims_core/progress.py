"""Progress bars for long work (generation, extraction, fitting), on stderr through tqdm."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


@contextmanager
def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True) -> Iterator[tqdm]:
    """A tqdm bar; disabled when ``enabled`` is False or ``SIMS_PROGRESS=0`` is set."""
    if os.environ.get("SIMS_PROGRESS", "1") == "0":
        enabled = False
    bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()
