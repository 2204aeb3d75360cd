"""Cheap checks of a run's configuration before any flow starts, so that a user mistake (a
missing model file, an unknown oracle, an unreadable prompt file, a bad store URL, an unreachable
Dask scheduler) is one clear
sentence instead of a failed flow run."""

from __future__ import annotations

from pathlib import Path

from sims_core.config import ConfigError, SimsConfig
from sims_core.models import EMBEDDED_MODEL, ModelLoadError, embedded_gguf_path
from storage import ArtifactStore, load_prompt_table, validate_run_id

__all__ = ["preflight"]


def _check_model(source: str) -> None:
    if source == EMBEDDED_MODEL:
        embedded_gguf_path()
        return
    path = Path(source)
    if source.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {source!r} does not exist")
        return
    if path.exists() and not (path / "config.json").is_file():
        raise ModelLoadError(f"model directory {source!r} has no config.json")
    if not path.exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise ModelLoadError(f"model path {source!r} does not exist (a hub id looks like 'org/name')")


def preflight(cfg: SimsConfig, run_id: str | None = None) -> None:
    """Raise a clear error for a configuration that cannot run; return None when it can."""
    if run_id is not None:
        try:
            validate_run_id(run_id)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    ArtifactStore.open(cfg.store)
    _check_model(cfg.model)
    load_prompt_table(cfg.prompts, column=cfg.prompt_column, split=cfg.prompt_split)
    from tasks.engine import check_engine

    check_engine(cfg, with_api=False)  # the flow checks a deployment engine's deployment on its API
