"""Running one phase of one iteration: skip it when its artifacts are fresh, else compute it and
record it in the run manifest.

A phase's key is (run, iteration, phase, config hash, input artifacts' hashes): a brand-new flow
run on the same run id skips every finished phase, even with an empty Prefect database, and
recomputes only what is missing or stale, saying why. A skipped phase ends its Prefect task run
in the ``Cached`` state with the reason as the state's message, so the UI shows what was reused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prefect.states import Completed
from pydantic import BaseModel, ConfigDict

from sims_core.config import SimsConfig
from sims_core.hashing import canonical_hash
from storage import ArtifactStore, Manifest, WrittenArtifact

__all__ = ["PhaseContext", "PhaseResult", "phase_key", "phase_logger", "run_phase", "shard_inputs"]


def phase_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow/task run, the module logger elsewhere."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("sims")


def shard_inputs(name: str, uris: list[str]) -> dict[str, str]:
    """Input names of a phase that reads every shard of an earlier one: the plain name for one
    artifact (so unsharded runs keep their keys), ``name_shard_002`` for each of several."""
    if isinstance(uris, str) or not uris:
        raise ValueError(f"{name}: expected a non-empty list of artifact URIs, got {uris!r}")
    if len(uris) == 1:
        return {name: uris[0]}
    return {f"{name}_shard_{index:03d}": uri for index, uri in enumerate(uris)}


class PhaseContext(BaseModel):
    """What every task receives: where the run lives, which iteration, and the run's config."""

    model_config = ConfigDict(frozen=True)

    store_url: str
    run_id: str
    iteration: int
    config: SimsConfig

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore.open(self.store_url)

    def manifest(self) -> Manifest:
        return Manifest.load(self.store, self.run_id)

    def uri(self, phase: str, ext: str | None = None, iteration: int | None = None) -> str:
        return self.store.uri(self.run_id, self.iteration if iteration is None else iteration, phase, ext)

    def at(self, iteration: int) -> PhaseContext:
        return self.model_copy(update={"iteration": iteration})


@dataclass(frozen=True)
class PhaseResult:
    """URIs of a phase's outputs and whether this call computed them."""

    outputs: dict[str, str]
    computed: bool
    reason: str

    @property
    def uri(self) -> str:
        return next(iter(self.outputs.values()))

    def state(self, value: Any) -> Any:
        """What the phase's task returns: ``value``, or for a skipped phase a ``Cached`` state
        carrying it (Prefect then shows the task run as Cached, with the reason)."""
        if self.computed:
            return value
        return Completed(name="Cached", message=self.reason, data=value)


def phase_key(ctx: PhaseContext, depends_on: Iterable[str], extra_key: Mapping[str, Any] | None = None) -> str:
    """The config hash `run_phase` records for a phase (see its arguments)."""
    config_hash = ctx.config.hash_of(depends_on)
    if extra_key:
        config_hash = canonical_hash({"config": config_hash, **dict(extra_key)})[:16]
    return config_hash


def run_phase(
    ctx: PhaseContext,
    phase: str,
    *,
    depends_on: Iterable[str],
    inputs: Mapping[str, str],
    compute: Callable[[], Mapping[str, WrittenArtifact | str]],
    extra_key: Mapping[str, Any] | None = None,
) -> PhaseResult:
    """Skip or compute (ctx.iteration, phase).

    Args:
        depends_on: the config fields this phase's output depends on (they form its config hash).
        inputs: name -> URI of the artifacts it reads (their content hashes join its key).
        compute: does the work and returns name -> written artifact.
        extra_key: anything else the output depends on (e.g. whether controls run).
    """
    log = phase_logger()
    store = ctx.store
    manifest = ctx.manifest()
    config_hash = phase_key(ctx, depends_on, extra_key)
    input_hashes = {name: store.content_hash(uri) for name, uri in sorted(inputs.items())}
    manifest.verify_inputs(inputs.values())
    fresh, reason = manifest.is_fresh(ctx.iteration, phase, config_hash, input_hashes)
    if fresh:
        entry = manifest.entry(ctx.iteration, phase)
        assert entry is not None  # is_fresh found it
        outputs = {name: manifest.output_uri(ctx.iteration, phase, name) for name in entry.outputs}
        log.info("iteration %d %s: skipped, %s", ctx.iteration, phase, reason)
        return PhaseResult(outputs=outputs, computed=False, reason=f"skipped: {reason}")
    log.info("iteration %d %s: computing (%s)", ctx.iteration, phase, reason)
    manifest.start(ctx.iteration, phase, config_hash=config_hash, input_hashes=input_hashes)
    started = time.perf_counter()
    try:
        written = dict(compute())
    except BaseException as exc:
        manifest.fail(ctx.iteration, phase, exc)
        raise
    entry = manifest.complete(ctx.iteration, phase, written, config_hash=config_hash, input_hashes=input_hashes)
    outputs = {name: manifest.output_uri(ctx.iteration, phase, name) for name in entry.outputs}
    log.info(
        "iteration %d %s: done in %.1fs (%s rows)",
        ctx.iteration,
        phase,
        time.perf_counter() - started,
        entry.rows if entry.rows is not None else "-",
    )
    return PhaseResult(outputs=outputs, computed=True, reason=reason)
