"""The `self_improve` flow: T resumable SIMS iterations.

    prompts (split once) -> for t in 1..T:
        sample prompts -> generate (pi_{t-1}) -> rank (oracle) -> buffer (pairs + memory bank)
        -> activations (base model) -> steering (fit + alpha selection) -> eval (judge vs base)
    -> report

Generation, ranking and activation extraction run as ``shards`` parallel task runs on the engine
the config names (threads, a Dask or Ray cluster, or a GPU deployment; see `tasks.engine`): the
iterations run in a subflow whose task runner is that engine's.

Every phase persists its artifacts under ``{store}/{run_id}/iter=<t>/`` and is skipped when they
are fresh, so running the flow again on the same run id resumes where it stopped, and asking a
finished run for more iterations continues from its last one.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

import sims_core
from sims_core.config import SimsConfig
from storage import ArtifactStore, Manifest, validate_run_id
from tasks.buffer import build_buffer
from tasks.engine import check_engine, prepare_workers, run_units, task_runner_for
from tasks.evaluate import evaluate_policy
from tasks.fit import fit_steering_set
from tasks.phase import PhaseContext, phase_logger
from tasks.prompts import sample_iteration_prompts, split_prompt_set
from tasks.report import write_report

__all__ = ["new_run_id", "self_improve", "build_config"]


def new_run_id() -> str:
    """A sortable run name: ``run-YYYYmmdd-HHMMSS-xxxx`` (UTC)."""
    return f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def build_config(config: dict[str, Any] | None, **explicit: Any) -> SimsConfig:
    """The run's config: ``config`` overridden by the explicit flow parameters that are set."""
    values = dict(config or {})
    values.update({key: value for key, value in explicit.items() if value is not None})
    return SimsConfig.from_dict(values)


def _artifact_key(run_id: str, suffix: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    clean = "".join(c if c.isalnum() else "-" for c in run_id.lower()).strip("-")
    return f"sims-{clean}-{suffix}"[:120]


@flow(name="self-improve", description="Self-Improving Model Steering: T resumable iterations.")
def self_improve(
    run_id: str | None = None,
    model: str | None = None,
    prompts: str | None = None,
    oracle: str | None = None,
    judge: str | None = None,
    learner: str | None = None,
    layers: list[int] | None = None,
    num_prompts: int | None = None,
    num_samples: int | None = None,
    iterations: int | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    store: str | None = None,
    seed: int | None = None,
    shards: int | None = None,
    engine: str | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a SIMS run. Parameters left as None take their value from ``config``, then
    from the defaults of `SimsConfig` (see README, "Configuration")."""
    explicit = {name: value for name, value in locals().items() if name not in ("run_id", "config")}
    cfg = build_config(config, **explicit)
    run_id = validate_run_id(run_id or new_run_id())
    check_engine(cfg)
    log = phase_logger()
    artifact_store = ArtifactStore.open(cfg.store)
    holder = f"self-improve flow (pid {os.getpid()} on {socket.gethostname()})"
    with artifact_store.lock(run_id, holder=holder):
        Manifest.load_or_create(artifact_store, run_id, config=cfg.to_dict(), sims_version=sims_core.__version__)
        log.info(
            "run %s in %s: %d iteration(s), model %s, learner %s, oracle %s, judge %s; %d shard(s) on engine %s",
            run_id,
            artifact_store.url,
            cfg.iterations,
            cfg.model,
            cfg.learner,
            cfg.oracle,
            cfg.judge,
            cfg.shards,
            cfg.engine,
        )
        runner = run_iterations.with_options(task_runner=task_runner_for(cfg))
        report, steering = runner(artifact_store.url, run_id, cfg.to_dict())
    final = report["table"][-1] if report["table"] else {}
    return {
        "run_id": run_id,
        "store": artifact_store.url,
        "report": report["report"],
        "steering": steering,
        "win_rate": final.get("win_rate"),
        "ci_low": final.get("ci_low"),
        "ci_high": final.get("ci_high"),
        "lc_win_rate": final.get("lc_win_rate"),
        "controls": {
            k[: -len("_win_rate")]: v
            for k, v in final.items()
            if k.endswith("_win_rate") and k not in ("win_rate", "lc_win_rate")
        },
    }


@flow(name="self-improve-iterations", description="The iterations of one SIMS run, on the engine its config names.")
def run_iterations(store_url: str, run_id: str, config: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Iterations 1..T of a run whose manifest exists and whose lock the caller holds; returns
    the report and the last steering artifact's URI."""
    cfg = SimsConfig.from_dict(config)
    remote = cfg.engine == "deployment"

    def context(t: int) -> PhaseContext:
        return PhaseContext(store_url=store_url, run_id=run_id, iteration=t, config=config)

    def sharded(ctx: PhaseContext, unit: str, **arguments: Any) -> list[str]:
        return run_units(ctx, unit, [{**arguments, "shard": i, "shards": cfg.shards} for i in range(cfg.shards)])

    prepare_workers(cfg)
    progress_id = create_progress_artifact(
        progress=0.0, key=_artifact_key(run_id, "progress"), description=f"SIMS run {run_id}: iterations done"
    )
    split_uri = split_prompt_set(context(0))
    previous_buffer: str | None = None
    previous_steering: str | None = None
    for t in range(1, cfg.iterations + 1):
        ctx = context(t)
        prompts_uri = sample_iteration_prompts(ctx, split_uri)
        generations = sharded(ctx, "generations", prompts_uri=prompts_uri, steering_uri=previous_steering)
        rankings = run_units(
            ctx,
            "rankings",
            [
                {"generations_uri": uri, "prompts_uri": prompts_uri, "shard": i, "shards": cfg.shards}
                for i, uri in enumerate(generations)
            ],
        )
        buffer_uri = build_buffer(ctx, generations, rankings, previous_buffer)
        activations = sharded(ctx, "activations", buffer_uri=buffer_uri)
        fit_call = {"activations_uris": activations, "split_uri": split_uri, "previous_steering_uri": previous_steering}
        fitted = run_units(ctx, "steering", [fit_call])[0] if remote else fit_steering_set(ctx, **fit_call)
        eval_call = {
            "steering_uri": fitted["steering"],
            "split_uri": split_uri,
            "with_controls": cfg.controls and t == cfg.iterations,
        }
        run_units(ctx, "eval", [eval_call]) if remote else evaluate_policy(ctx, **eval_call)
        previous_buffer, previous_steering = buffer_uri, fitted["steering"]
        report = write_report(ctx, t)
        if report["table"]:
            create_table_artifact(
                table=report["table"],
                key=_artifact_key(run_id, "iterations"),
                description=f"SIMS run {run_id}: one row per iteration",
            )
        update_progress_artifact(progress_id, progress=100.0 * t / cfg.iterations)
    create_markdown_artifact(
        markdown=report["markdown"], key=_artifact_key(run_id, "report"), description=f"SIMS run {run_id} report"
    )
    return report, previous_steering
