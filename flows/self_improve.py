"""The `self_improve` flow: T resumable SIMS iterations.

    prompts (split once) -> baseline (base answers to held-out prompts, once) -> for t in 1..T:
        prompts (sample) -> generations (pi_{t-1}) -> rankings (oracle) -> buffer (pairs + memory
        bank) -> activations (base model) -> steering (fit + strength selection) -> eval (judge)
    -> report

Generation, ranking and activation extraction run as ``shards`` parallel task runs on the engine
the config names (threads, a Dask or Ray cluster, or a GPU deployment; see `tasks.engine`): the
iterations run in a subflow whose task runner is that engine's.

Every phase persists its artifacts under ``{store}/{run_id}/iter=<t>/`` and is skipped when they
are fresh (its task run ends ``Cached``), so running the flow again on the same run id resumes
where it stopped, and asking a finished run for more iterations continues from its last one.
"""

from __future__ import annotations

import contextlib
import secrets
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prefect import flow, tags
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

import sims_core
from flows.preflight import check_iterations, preflight
from sims_core.config import SimsConfig
from sims_core.errors import ConfigError
from sims_core.evaluation import COMPARISON_NUMBERS, CONTROLS
from storage import ArtifactStore, Manifest, RunLock, validate_run_id
from tasks.buffer import buffer_phase
from tasks.engine import UNITS, check_engine, prepare_workers, run_units, task_runner_for
from tasks.lineage import lineage_phase, promotion_phase, publish_night
from tasks.phase import PhaseContext, phase_logger
from tasks.prompts import prompts_phase
from tasks.report import write_report
from tasks.runtime import runtime

__all__ = ["new_run_id", "run_lock", "run_tag", "self_improve"]


def new_run_id() -> str:
    """A sortable run name: ``run-YYYYmmdd-HHMMSS-xxxx`` (UTC)."""
    return f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def default_run_id(config: SimsConfig) -> str:
    """The run id of a flow run given none: derived from the Prefect flow run, so that
    ``prefect flow-run retry`` (the same flow run, scheduled again) resumes the same run from its
    artifacts. ``<lineage>-<scheduled time>`` for a lineage run (one run per scheduled night),
    ``run-<scheduled time>-<flow run id>`` otherwise; outside a flow run, a new name."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    flow_run = context.flow_run if context is not None else None
    if flow_run is None:
        return new_run_id() if config.lineage is None else f"{config.lineage}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    when = (flow_run.expected_start_time or flow_run.created or datetime.now(UTC)).astimezone(UTC)
    if config.lineage is not None:
        return f"{config.lineage}-{when:%Y%m%d-%H%M%S}"
    return f"run-{when:%Y%m%d-%H%M%S}-{flow_run.id.hex[:8]}"


def _crash_stale_subflows(run_id: str) -> None:
    """An earlier attempt of this run that was killed left its iterations subflow RUNNING in
    Prefect (nothing reports a killed process's subflows): mark them Crashed. The caller holds the
    run lock, so no live attempt can own them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.context import FlowRunContext
    from prefect.states import Crashed

    me = FlowRunContext.get()
    mine = me.flow_run.id if me is not None and me.flow_run is not None else None
    try:
        with get_client(sync_client=True) as client:
            stale = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[run_tag(run_id)]),
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING, StateType.SCHEDULED])
                    ),
                )
            )
            for run in stale:
                if run.id != mine and run.parent_task_run_id is not None:
                    client.set_flow_run_state(
                        run.id, Crashed(message=f"superseded: a new attempt of sims run {run_id} started"), force=True
                    )
    except Exception as exc:  # noqa: BLE001 - bookkeeping of the UI must not stop a run
        phase_logger().warning("could not mark stale subflow runs of %s as crashed: %s", run_id, exc)


def run_tag(run_id: str) -> str:
    """The Prefect tag on every task run of a sims run (find them in the UI or the API)."""
    return f"sims-run:{run_id}"


@contextlib.contextmanager
def run_lock(store: ArtifactStore, run_id: str, holder: str) -> Iterator[RunLock]:
    """Hold the run's lock (`storage.RunLock`), re-entrantly within this process: the CLI takes
    it before it starts the flow (so that a second writer is refused before any work, and the
    lock is released on Ctrl-C), and the flow's own acquisition then reuses it."""
    held, key = runtime().held_locks, (store.url, run_id)
    if key in held:
        yield held[key]
        return
    lock = store.lock(run_id, holder=holder)  # the lock records pid, host and time itself
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lock.acquire()
    for warning in caught:  # a stale lock taken over: say so in the run's log
        phase_logger().warning("%s", warning.message)
    held[key] = lock
    try:
        yield lock
    finally:
        held.pop(key, None)
        lock.release()


def _artifact_key(run_id: str, suffix: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    clean = "".join(c if c.isalnum() else "-" for c in run_id.lower()).strip("-")
    return f"sims-{clean}-{suffix}"[:120]


@flow(
    name="self-improve", description="Self-Improving Model Steering: T resumable iterations.", validate_parameters=False
)
def self_improve(config: SimsConfig = SimsConfig(), run_id: str | None = None, force: bool = False) -> dict[str, Any]:
    """Run (or resume) a SIMS run with ``config`` (see README, "Configuration"); ``run_id`` names
    the run (default: a new sortable name). Running an existing run id again resumes it; with a
    config that differs in what it trained (model, prompts, oracle, learner, ...) it is refused
    unless ``force`` says the recomputation is deliberate."""
    config = SimsConfig.from_dict(config if config is not None else {})
    run_id = validate_run_id(run_id or default_run_id(config))
    runtime().clear_stop()
    check_engine(config)  # with the API: a deployment engine's phase deployment exists (the CLI cannot see it)
    preflight(config, run_id)  # a no-op when the CLI has just checked the same run (deployments get it here)
    log = phase_logger()
    artifact_store = ArtifactStore.open(config.store)
    with run_lock(artifact_store, run_id, holder="self-improve flow"):
        for leftover in artifact_store.sweep(run_id):  # temporaries of a writer killed mid-write
            log.info("removed %s, left by an interrupted write", leftover)
        if artifact_store.exists(artifact_store.manifest_uri(run_id)):  # an existing run: continue it, never rewrite it
            existing = Manifest.load(artifact_store, run_id)
            check_iterations(existing, config.iterations)
            _refuse_incompatible_reuse(existing, config, force)
        _crash_stale_subflows(run_id)
        Manifest.load_or_create(artifact_store, run_id, config=config.to_dict(), sims_version=sims_core.__version__)
        log.info(
            "run %s in %s: %d iteration(s), model %s, learner %s, oracle %s, judge %s; %d shard(s) on engine %s",
            run_id,
            artifact_store.url,
            config.iterations,
            config.model,
            config.learner,
            config.oracle,
            config.judge,
            config.shards,
            config.engine,
        )
        # Flow.with_options types task_runner as TaskRunner[PrefectFuture] (invariant): any runner is accepted
        runner = run_iterations.with_options(task_runner=task_runner_for(config))  # type: ignore[arg-type]
        with tags(run_tag(run_id)):
            report, steering, night = runner(
                PhaseContext(store_url=artifact_store.url, run_id=run_id, iteration=0, config=config)
            )
    final = report["table"][-1] if report["table"] else {}
    numbers = (*COMPARISON_NUMBERS, "verdict")

    def condition(prefix: str) -> dict[str, Any] | None:
        if final.get(f"{prefix}win_rate") is None:
            return None
        return {key: final.get(f"{prefix}{key}") for key in numbers}

    return {
        "run_id": run_id,
        "store": artifact_store.url,
        "report": report["report"],
        "steering": steering,
        **{key: final.get(key) for key in ("judge", *numbers, "lc_win_rate", "lc_ci_low", "lc_ci_high")},
        "previous_iteration": condition("previous_iteration_"),
        "best_of_n": condition("best_of_n_"),
        "controls": {name: final[f"{name}_win_rate"] for name in CONTROLS if final.get(f"{name}_win_rate") is not None},
        "lineage": night,
    }


def _refuse_incompatible_reuse(manifest: Manifest, config: SimsConfig, force: bool) -> None:
    """An existing run with a config that would recompute what it trained: refused (or, with
    ``force``, logged), so a run is never overwritten by accident."""
    run_id, store = manifest.run_id, manifest.store
    changes = config.changes_from(manifest.config)
    if not changes:
        return
    if force:
        phase_logger().warning("run %s: recomputing with a changed config (force): %s", run_id, "; ".join(changes))
        return
    raise ConfigError(
        f"run {run_id!r} in {store.url} was made with another config ({'; '.join(changes)}); running it again "
        f"would recompute and overwrite its artifacts: use a new run id, or force the recomputation "
        f"(sims run/resume --force)"
    )


def _named(task: Any, phase: str, iteration: int) -> Any:
    """Run ``task`` in this flow under the run name ``<phase>-iter-<t>`` and return its value
    (a skipped phase ends Cached with the value as its data)."""
    named = task.with_options(task_run_name=f"{phase}-iter-{iteration}")
    return lambda *args, **kwargs: named(*args, return_state=True, **kwargs).result()


@flow(name="self-improve-iterations", description="The iterations of one SIMS run, on the engine its config names.")
def run_iterations(run: PhaseContext) -> tuple[dict[str, Any], str | None, dict[str, Any] | None]:
    """Iterations 1..T of a run whose manifest exists and whose lock the caller holds; returns
    the report, the last steering artifact's URI and, for a lineage run, its lineage record."""
    config = run.config

    def sharded(ctx: PhaseContext, unit: str, calls: list[dict[str, Any]]) -> list[str]:
        return run_units(ctx, unit, [{**call, "shard": i, "shards": config.shards} for i, call in enumerate(calls)])

    def single(ctx: PhaseContext, unit: str, call: dict[str, Any]) -> Any:
        """The steering fit and the eval: in this process, or on the GPU pool with the deployment
        engine (so that the orchestrator never loads the model)."""
        if config.engine == "deployment":
            return run_units(ctx, unit, [call])[0]
        return _named(UNITS[unit], unit, ctx.iteration)(ctx, **call)

    prepare_workers(config)
    progress_id = create_progress_artifact(
        progress=0.0, key=_artifact_key(run.run_id, "progress"), description=f"SIMS run {run.run_id}: iterations done"
    )
    snapshot = _named(lineage_phase, "lineage", 0)(run) if config.lineage else {}
    split_uri = _named(prompts_phase, "prompts", 0)(run, lineage_uri=snapshot.get("lineage"))
    baseline_uri = single(run, "baseline", {"split_uri": split_uri})
    # a lineage run starts from the lineage's current steering and memory bank (pi_0 and the bank)
    previous_buffer: str | None = snapshot.get("buffer")
    previous_steering: str | None = snapshot.get("steering")
    previous_eval: str | None = None
    report: dict[str, Any] = {}
    for t in range(1, config.iterations + 1):
        ctx = run.at(t)
        prompts_uri = _named(prompts_phase, "prompts", t)(ctx, split_uri)
        generations = sharded(
            ctx, "generations", [{"prompts_uri": prompts_uri, "steering_uri": previous_steering}] * config.shards
        )
        rankings = sharded(
            ctx, "rankings", [{"generations_uri": uri, "prompts_uri": prompts_uri} for uri in generations]
        )
        buffer_uri = _named(buffer_phase, "buffer", t)(ctx, generations, rankings, previous_buffer)
        activations = sharded(ctx, "activations", [{"buffer_uri": buffer_uri}] * config.shards)
        fitted = single(
            ctx,
            "steering",
            {"activations_uris": activations, "split_uri": split_uri, "previous_steering_uri": previous_steering},
        )
        previous_eval = single(
            ctx,
            "eval",
            {
                "steering_uri": fitted["steering"],
                "split_uri": split_uri,
                "baseline_uri": baseline_uri,
                "previous_eval_uri": previous_eval,
                "with_controls": config.controls and t == config.iterations,
            },
        )
        previous_buffer, previous_steering = buffer_uri, fitted["steering"]
        report = _named(write_report, "report", t)(ctx, t)
        if report["table"]:
            create_table_artifact(
                table=report["table"],
                key=_artifact_key(run.run_id, "iterations"),
                description=f"SIMS run {run.run_id}: one row per iteration",
            )
        # sync_compatible typing: called from a sync flow, create_progress_artifact returned the UUID
        update_progress_artifact(progress_id, progress=100.0 * t / config.iterations)  # type: ignore[arg-type]
    night = None
    if config.lineage:
        last = run.at(config.iterations)
        promotion_uri = _named(promotion_phase, "promotion", config.iterations)(
            last, previous_steering, previous_eval, split_uri, snapshot.get("steering")
        )
        night = _named(publish_night, "publish", config.iterations)(
            last, promotion_uri, previous_steering, previous_buffer, split_uri, snapshot
        )
    create_markdown_artifact(
        markdown=report["markdown"],
        key=_artifact_key(run.run_id, "report"),
        description=f"SIMS run {run.run_id} report",
    )
    return report, previous_steering, night
