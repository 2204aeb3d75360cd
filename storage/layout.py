"""Where each artifact of a run lives, relative to the store root.

::

    {root}/{run_id}/manifest.json                  the run manifest (storage.manifest)
    {root}/{run_id}/run.lock                       the run lock (storage.lock)
    {root}/{run_id}/report.md                      run-level reports (and report PNGs)
    {root}/{run_id}/iter={t}/{phase}.parquet       one table per phase and iteration
    {root}/{run_id}/iter={t}/steering.safetensors  the steering file of iteration t
    {root}/{run_id}/iter={t}/generations_shard_002_of_004.parquet
                                                   shard 2 of 4 of a sharded phase
                                                   (an unsharded phase keeps its plain name)

Iterations are not zero-padded (``iter=10`` sorts before ``iter=2`` in a listing; the manifest
has numeric order).
"""

from __future__ import annotations

import re

from sims_core.errors import ConfigError

__all__ = [
    "PHASES",
    "PHASE_EXTENSIONS",
    "MANIFEST_NAME",
    "LOCK_NAME",
    "REPORT_NAME",
    "validate_run_id",
    "validate_phase",
    "validate_iteration",
    "artifact_relpath",
    "phase_sort_key",
    "shard_phase",
    "split_shard_phase",
]

PHASES: tuple[str, ...] = (
    "lineage",
    "prompts",
    "baseline",
    "generations",
    "rankings",
    "buffer",
    "activations",
    "steering",
    "eval",
    "promotion",
)
PHASE_EXTENSIONS: dict[str, str] = {"steering": "safetensors"}
MANIFEST_NAME = "manifest.json"
LOCK_NAME = "run.lock"
REPORT_NAME = "report.md"
_SHARD = re.compile(r"^(?P<phase>[a-z][a-z0-9_]*?)_shard_(?P<index>\d{3,})_of_(?P<count>\d{3,})$")

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PHASE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_EXT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.]{0,15}$")


def validate_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a safe directory name, else raise a `ConfigError` saying why."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id) or run_id.startswith("iter="):
        raise ConfigError(
            f"run_id {run_id!r} is not valid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if run_id == "lineages":
        raise ConfigError("run_id 'lineages' is reserved: the store keeps its lineages in that folder")
    return run_id


def validate_phase(phase: str) -> str:
    if not isinstance(phase, str) or not _PHASE.match(phase):
        raise ValueError(
            f"phase {phase!r} is not valid: use lower-case letters, digits and '_' "
            f"(the pipeline's phases are {', '.join(PHASES)})"
        )
    return phase


def validate_iteration(iteration: int) -> int:
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        raise ValueError(f"iteration must be an int >= 0, got {iteration!r}")
    return iteration


def artifact_relpath(iteration: int, phase: str, ext: str | None = None) -> str:
    """``iter={t}/{phase}.{ext}``; ``ext`` defaults to the phase's (parquet, safetensors)."""
    validate_phase(phase)
    ext = (ext or PHASE_EXTENSIONS.get(phase, "parquet")).lstrip(".")
    if not _EXT.match(ext):
        raise ValueError(f"file extension {ext!r} is not valid")
    return f"iter={validate_iteration(iteration)}/{phase}.{ext}"


def shard_phase(phase: str, shard: int, count: int) -> str:
    """The phase name of shard ``shard`` of ``count``: ``generations_shard_002_of_004``; the plain
    phase name when the phase is not split (``count == 1``), so unsharded runs keep their layout."""
    validate_phase(phase)
    if not isinstance(count, int) or count < 1 or not isinstance(shard, int) or not 0 <= shard < count:
        raise ValueError(f"shard {shard!r} of {count!r} is not valid: need 0 <= shard < count")
    return phase if count == 1 else f"{phase}_shard_{shard:03d}_of_{count:03d}"


def split_shard_phase(name: str) -> tuple[str, int, int]:
    """``(phase, shard, count)`` of a phase name; ``(name, 0, 1)`` for an unsharded phase."""
    match = _SHARD.match(name)
    if match is None:
        return name, 0, 1
    return match["phase"], int(match["index"]), int(match["count"])


def phase_sort_key(phase: str) -> tuple[int, str]:
    """Pipeline order for known phases (a shard right after its phase's position), then alphabetical."""
    base = split_shard_phase(phase)[0]
    return (PHASES.index(base) if base in PHASES else len(PHASES), phase)
