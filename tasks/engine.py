"""Where shards run: a Prefect task runner named by the config (threads, Dask, Ray), or a
deployment on a GPU work pool driven with `run_deployment`.

The three heavy phases (generations, rankings, activations) are split into ``config.shards``
shards, one Prefect task run each. Every shard writes its own artifact and is skipped on resume
when that artifact is fresh, so a failed shard is retried (``engine_options.retries``, when its
error says a retry may help: `sims_core.errors.is_retryable`) or resumed alone.
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from sims_core.config import DaskOptions, DeploymentOptions, RayOptions, SimsConfig
from sims_core.errors import ConfigError, SimsError, UserError, is_retryable, is_user_error
from sims_core.hashing import canonical_hash
from storage import shard_phase
from tasks.activations import activations_phase
from tasks.baseline import baseline_phase
from tasks.eval import eval_phase
from tasks.generations import generations_phase
from tasks.phase import PhaseContext, phase_logger
from tasks.rankings import rankings_phase
from tasks.runtime import runtime
from tasks.steering import steering_phase

__all__ = [
    "UNITS",
    "EngineError",
    "ShardsFailed",
    "check_engine",
    "idempotency_key",
    "prepare_workers",
    "run_remote",
    "run_units",
    "task_runner_for",
]

# The units a worker can run: the three sharded phases, plus the baseline answers, the steering fit
# and the eval (remote only with the deployment engine, so that the orchestrator never loads the model).
UNITS: dict[str, Task[..., Any]] = {
    "baseline": baseline_phase,
    "generations": generations_phase,
    "rankings": rankings_phase,
    "activations": activations_phase,
    "steering": steering_phase,
    "eval": eval_phase,
}


class EngineError(UserError):
    """The configured engine cannot run: missing package, unreachable scheduler, no deployment."""


class ShardsFailed(SimsError):
    """Some shards of a phase failed; the others finished and their artifacts are kept. A user
    error when every failure was one (a bad input fails the same way on every shard)."""

    def __init__(self, message: str, errors: Sequence[BaseException] = ()) -> None:
        super().__init__(message)
        self.errors = list(errors)

    @property
    def user_error(self) -> bool:  # type: ignore[override]
        return bool(self.errors) and all(is_user_error(e) for e in self.errors)


# ------------------------------------------------------------------ task runners
def _require(module: str, package: str, engine: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EngineError(
            f"engine {engine!r} needs the package {package}: pip install '{package}' "
            f"(or `pip install -e '.[{engine}]'`); import failed: {exc}"
        ) from None


def _api_env() -> dict[str, str]:
    """Worker processes of a local cluster report to the API this flow reports to; without it
    (Prefect's ephemeral server, no PREFECT_API_URL), each would start a server of its own."""
    if os.environ.get("PREFECT_API_URL"):
        return {}  # inherited by the worker processes
    try:
        from prefect.client.orchestration import get_client

        url = str(get_client().api_url)
    except Exception:  # noqa: BLE001 - no API: workers fall back to their own ephemeral servers
        return {}
    return {"PREFECT_API_URL": url.rstrip("/")} if url.startswith("http") else {}


def task_runner_for(config: SimsConfig) -> TaskRunner:
    """The Prefect task runner that runs the shards of ``config.engine``."""
    options = config.engine_options
    if not isinstance(options, (DaskOptions, RayOptions)):  # threads, deployment
        return ThreadPoolTaskRunner(max_workers=options.max_workers or max(config.shards, 1))
    if isinstance(options, DaskOptions):
        prefect_dask = _require("prefect_dask", "prefect-dask", "dask")
        if options.address is not None:
            return prefect_dask.DaskTaskRunner(address=options.address)
        cluster = {
            "n_workers": options.n_workers or min(config.shards, os.cpu_count() or 1),
            "threads_per_worker": options.threads_per_worker or 1,
            "processes": True if options.processes is None else options.processes,
            "dashboard_address": None,
            "env": _api_env(),
        }
        return prefect_dask.DaskTaskRunner(cluster_kwargs=cluster)
    prefect_ray = _require("prefect_ray", "prefect-ray", "ray")
    init: dict[str, Any] = {"include_dashboard": False}
    if options.num_cpus is not None:
        init["num_cpus"] = options.num_cpus
    env = {} if options.address is not None else _api_env()
    if env:
        init["runtime_env"] = {"env_vars": env}
    return prefect_ray.RayTaskRunner(address=options.address, init_kwargs=init)


def prepare_workers(config: SimsConfig) -> None:
    """Inside a flow running on ``config``'s task runner: what workers need before the first shard
    (Dask: the import-path plugin of `tasks.dask_workers`, on current and future workers)."""
    if config.engine != "dask":
        return
    from prefect.context import FlowRunContext

    from tasks.dask_workers import SimsImportPath

    context = FlowRunContext.get()
    if context is None:
        raise RuntimeError("prepare_workers runs inside a flow")
    runner: Any = context.task_runner  # prefect_dask's DaskTaskRunner, whose client starts the cluster
    runner.client.register_plugin(SimsImportPath())  # starts the cluster if it has not started


# ------------------------------------------------------------------ checks before any work
def _check_reachable(engine: str, what: str, address: str, default_port: int, timeout: float = 5.0) -> None:
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname:
        raise ConfigError(f"engine_options.address {address!r} names no host (expected e.g. tcp://10.0.0.5:8786)")
    host, port = parsed.hostname, parsed.port or default_port
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise EngineError(
            f"engine {engine!r}: cannot reach the {what} at {address} ({host}:{port}): {exc}; "
            f"start it or fix engine_options.address"
        ) from None


def _check_deployment(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(name)
    except ObjectNotFound:
        raise EngineError(
            f"engine 'deployment': the Prefect API has no deployment {name!r}; deploy the phase "
            f"worker first (`prefect deploy --name gpu` from prefect.yaml) or set "
            f"engine_options.deployment"
        ) from None


def check_engine(config: SimsConfig, *, with_api: bool = True) -> None:
    """Raise `EngineError` when ``config``'s engine cannot run (missing package, unreachable
    scheduler or Ray head, missing deployment) before any work starts. Sizes (zero workers, ...)
    are checked by `SimsConfig` itself."""
    options = config.engine_options
    if isinstance(options, DaskOptions):
        _require("prefect_dask", "prefect-dask", "dask")
        if options.address is not None:
            _check_reachable("dask", "Dask scheduler", options.address, 8786)
    elif isinstance(options, RayOptions):
        _require("prefect_ray", "prefect-ray", "ray")
        if options.address and options.address != "auto":
            address = options.address
            _check_reachable("ray", "Ray cluster", address, 10001 if address.startswith("ray://") else 6379)
    elif isinstance(options, DeploymentOptions) and with_api:
        _check_deployment(options.deployment)


# ------------------------------------------------------------------ running units
def _worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """A lost worker, an out-of-memory error or a flaky store may pass on a retry; a bad input
    (a prompt longer than the context, a malformed artifact) or a bug will not."""
    return is_retryable(state.result(raise_on_failure=False))


def _phase_name(unit: str, call: dict[str, Any]) -> str:
    return shard_phase(unit, call.get("shard", 0), call.get("shards", 1))


def run_units(ctx: PhaseContext, unit: str, calls: Sequence[dict[str, Any]]) -> list[Any]:
    """Run ``unit`` once per entry of ``calls`` (the keyword arguments of each shard, including
    ``shard``/``shards`` for sharded units) in parallel on the configured engine, and return the
    results in the order of ``calls``.

    Every call runs to its end before failures are reported, so the shards that succeed keep
    their artifacts and a rerun computes only the failed ones."""
    config = ctx.config
    names = [_phase_name(unit, call) for call in calls]
    futures = []
    for name, call in zip(names, calls):
        run_name = f"{name}-iter-{ctx.iteration}"
        if config.engine == "deployment":
            futures.append(run_remote.with_options(task_run_name=f"dispatch-{run_name}").submit(ctx, unit, call))
            continue
        configured = UNITS[unit].with_options(
            task_run_name=run_name,
            retries=config.engine_options.retries,
            retry_delay_seconds=config.engine_options.retry_delay_seconds,
            retry_condition_fn=_worth_retrying,
        )
        futures.append(_submit(config, configured, ctx, call))
    try:
        wait(futures)  # every unit to its end (a lost Ray or Dask worker: a Crashed state)
        results = [future.result(raise_on_failure=False) for future in futures]  # a failure's value: its exception
    except BaseException as exc:
        if not isinstance(exc, Exception):  # Ctrl-C or SIGTERM while shards compute: stop them at their next forward
            runtime().request_stop()
        raise
    failures = [(name, value) for name, value, f in zip(names, results, futures) if not f.state.is_completed()]
    if failures:
        detail = "; ".join(f"{name}: {type(exc).__name__}: {exc}" for name, exc in failures)
        phase_logger().error(
            "iteration %d: %d of %d %s unit(s) failed: %s", ctx.iteration, len(failures), len(calls), unit, detail
        )
        errors = [exc for _, exc in failures if isinstance(exc, BaseException)]
        raise ShardsFailed(
            f"iteration {ctx.iteration}: {len(failures)} of {len(calls)} {unit} shard(s) failed "
            f"({detail}); the others are saved, rerun the same run id to compute only these",
            errors,
        ) from (errors[0] if errors else None)
    return results


def _submit(config: SimsConfig, configured: Any, ctx: PhaseContext, call: dict[str, Any]) -> Any:
    gpus = getattr(config.engine_options, "num_gpus", None)
    if config.engine == "ray" and gpus:
        from prefect_ray.context import remote_options

        with remote_options(num_gpus=gpus):
            return configured.submit(ctx, **call)
    return configured.submit(ctx, **call)


# ------------------------------------------------------------------ the deployment engine
def idempotency_key(ctx: PhaseContext, unit: str, call: dict[str, Any]) -> str:
    """One key per (run, iteration, phase, shard, inputs and config): a second orchestrator (or a
    retried one) attaches to the flow run already started for a unit instead of starting
    another; a changed config or input starts a new one."""
    digest = canonical_hash({"config": ctx.config.to_dict(), "call": call, "inputs": _input_hashes(ctx, call)})[:12]
    return f"sims/{ctx.run_id}/iter={ctx.iteration}/{_phase_name(unit, call)}/{digest}"


def _input_hashes(ctx: PhaseContext, call: dict[str, Any]) -> dict[str, Any]:
    """Content hashes of the artifacts a call reads: an input recomputed under the same URI
    changes the key."""
    store = ctx.store
    out: dict[str, Any] = {}
    for name, value in sorted(call.items()):
        uris = value if isinstance(value, list) else [value]
        if uris and all(isinstance(u, str) for u in uris):
            out[name] = [store.content_hash(u) if store.exists(u) else None for u in uris]
    return out


def _create_or_attach(name: str, parameters: dict[str, Any], key: str) -> Any:
    """Create the flow run for ``key``, or get the one that already exists with that key."""
    from prefect.deployments import run_deployment

    return run_deployment(name=name, parameters=parameters, idempotency_key=key, timeout=0, as_subflow=True)


def _reschedule(flow_run_id: Any, reason: str) -> None:
    """What `prefect flow-run retry` does: the same flow run goes back to Scheduled."""
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Scheduled(message=reason), force=True)


def _wait(flow_run_id: Any, timeout: float | None) -> Any:
    """Prefect's waiter: the flow run once it is final."""
    from prefect.flow_runs import FlowRunWaitTimeout, wait_for_flow_run
    from prefect.utilities.asyncutils import run_coro_as_sync

    try:
        return run_coro_as_sync(
            wait_for_flow_run(flow_run_id, timeout=int(timeout) if timeout else None, poll_interval=1)
        )
    except FlowRunWaitTimeout:
        raise ShardsFailed(
            f"flow run {flow_run_id} did not finish within engine_options.timeout={timeout:g} s "
            f"(is a worker polling the deployment's work pool?)"
        ) from None


@task(name="dispatch", cache_policy=NO_CACHE)
def run_remote(ctx: PhaseContext, unit: str, call: dict[str, Any]) -> Any:
    """Run one unit as a flow run of the phase-worker deployment (``engine_options.deployment``)
    and return what the unit returns, through Prefect's result persistence.

    The phase flow retries itself (``@flow(retries=...)``); a flow run that still ended FAILED or
    CRASHED (an earlier orchestrator's, or this one's) is rescheduled, as `prefect flow-run retry`
    would, up to ``engine_options.retries`` times: the same flow run, the same idempotency key."""
    options = ctx.config.engine_options
    if not isinstance(options, DeploymentOptions):
        raise EngineError(f"run_remote dispatches units of engine 'deployment', not {ctx.config.engine!r}")
    parameters = {"unit": unit, "context": ctx.model_dump(mode="json"), "arguments": call}
    log = phase_logger()
    flow_run = _create_or_attach(options.deployment, parameters, idempotency_key(ctx, unit, call))
    name = _phase_name(unit, call)
    reschedules = 0
    state = flow_run.state
    while True:
        if state is not None and state.is_final() and not state.is_completed():
            if reschedules >= options.retries:
                raise ShardsFailed(
                    f"{name} of iteration {ctx.iteration}: flow run {flow_run.id} on deployment "
                    f"{options.deployment!r} ended {state.type.value}: {state.message}"
                )
            reschedules += 1
            log.info("%s: flow run %s ended %s; rescheduling it", name, flow_run.id, state.type.value)
            _reschedule(flow_run.id, f"rescheduled by the sims orchestrator after {state.type.value}")
        elif state is not None and state.is_completed():
            return state.result()
        else:
            log.info("%s: waiting for flow run %s on deployment %s", name, flow_run.id, options.deployment)
        state = _wait(flow_run.id, options.timeout).state
