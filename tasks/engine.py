"""Where shards run: a Prefect task runner named by the config (threads, Dask, Ray), or a
deployment on a GPU work pool driven with `run_deployment`.

The three heavy phases (generations, rankings, activations) are split into ``cfg.shards`` shards,
one Prefect task run each. Every shard writes its own artifact and is skipped on resume when that
artifact is fresh, so a failed shard is retried (``engine_options.retries``) or resumed alone.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from sims_core.config import ConfigError, SimsConfig
from sims_core.errors import SimsError, UserError
from storage import Manifest, shard_phase, stable_hash
from tasks.evaluate import evaluate_policy
from tasks.extract import extract_activations
from tasks.fit import fit_steering_set
from tasks.generate import generate_answers
from tasks.phase import PhaseContext, phase_logger
from tasks.rank import rank_answers

__all__ = [
    "DEFAULT_DEPLOYMENT",
    "EngineError",
    "ShardsFailed",
    "check_engine",
    "prepare_workers",
    "run_remote",
    "run_units",
    "task_runner_for",
    "unit_task",
]

DEFAULT_DEPLOYMENT = "sims-phase/gpu"
DEFAULT_RETRIES = 1
# The units a worker can run: the three sharded phases, plus fit and eval (run remotely only with
# the deployment engine, so that the orchestrator never loads the model).
UNITS = ("generations", "rankings", "activations", "steering", "eval")


class EngineError(UserError):
    """The configured engine cannot run: missing package, unreachable scheduler, no deployment."""


class ShardsFailed(SimsError):
    """Some shards of a phase failed; the others finished and their artifacts are kept."""


def unit_task(unit: str):
    """The Prefect task that computes ``unit``."""
    table = {
        "generations": generate_answers,
        "rankings": rank_answers,
        "activations": extract_activations,
        "steering": fit_steering_set,
        "eval": evaluate_policy,
    }
    try:
        return table[unit]
    except KeyError:
        raise ValueError(f"unit must be one of {list(UNITS)}, got {unit!r}") from None


# ------------------------------------------------------------------ task runners
def _require(module: str, package: str, engine: str) -> Any:
    import importlib

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


def task_runner_for(cfg: SimsConfig) -> TaskRunner:
    """The Prefect task runner that runs the shards of ``cfg.engine``."""
    options = cfg.engine_options
    if cfg.engine in ("threads", "deployment"):
        return ThreadPoolTaskRunner(max_workers=options.get("max_workers", max(cfg.shards, 1)))
    if cfg.engine == "dask":
        prefect_dask = _require("prefect_dask", "prefect-dask", "dask")
        if "address" in options:
            return prefect_dask.DaskTaskRunner(address=options["address"])
        cluster = {
            "n_workers": options.get("n_workers", min(cfg.shards, os.cpu_count() or 1)),
            "threads_per_worker": options.get("threads_per_worker", 1),
            "processes": options.get("processes", True),
            "dashboard_address": None,
            "env": _api_env(),
        }
        return prefect_dask.DaskTaskRunner(cluster_kwargs=cluster)
    if cfg.engine == "ray":
        prefect_ray = _require("prefect_ray", "prefect-ray", "ray")
        init: dict[str, Any] = {"include_dashboard": False}
        if "num_cpus" in options:
            init["num_cpus"] = options["num_cpus"]
        env = {} if "address" in options else _api_env()
        if env:
            init["runtime_env"] = {"env_vars": env}
        return prefect_ray.RayTaskRunner(address=options.get("address"), init_kwargs=init)
    raise ConfigError(f"engine must be one of threads, dask, ray, deployment, got {cfg.engine!r}")


def prepare_workers(cfg: SimsConfig) -> None:
    """Inside a flow running on ``cfg``'s task runner: what workers need before the first shard
    (Dask: the import-path plugin of `tasks.dask_workers`, on current and future workers)."""
    if cfg.engine != "dask":
        return
    from prefect.context import FlowRunContext

    from tasks.dask_workers import SimsImportPath

    runner = FlowRunContext.get().task_runner
    runner.client.register_plugin(SimsImportPath())  # starts the cluster if it has not started


# ------------------------------------------------------------------ checks before any work
def _host_port(address: str, default_port: int) -> tuple[str, int]:
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname:
        raise ConfigError(f"engine_options.address {address!r} names no host (expected e.g. tcp://10.0.0.5:8786)")
    return parsed.hostname, parsed.port or default_port


def _check_reachable(engine: str, what: str, address: str, default_port: int, timeout: float = 5.0) -> None:
    host, port = _host_port(address, default_port)
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


def check_engine(cfg: SimsConfig, *, with_api: bool = True) -> None:
    """Raise `EngineError` when ``cfg``'s engine cannot run (missing package, unreachable scheduler
    or Ray head, missing deployment) before any work starts. Sizes (zero workers, ...) are checked
    by `SimsConfig` itself."""
    options = cfg.engine_options
    if cfg.engine == "dask":
        _require("prefect_dask", "prefect-dask", "dask")
        if "address" in options:
            _check_reachable("dask", "Dask scheduler", options["address"], 8786)
    elif cfg.engine == "ray":
        _require("prefect_ray", "prefect-ray", "ray")
        address = options.get("address")
        if address and address != "auto":
            _check_reachable("ray", "Ray cluster", address, 10001 if address.startswith("ray://") else 6379)
    elif cfg.engine == "deployment" and with_api:
        _check_deployment(options.get("deployment", DEFAULT_DEPLOYMENT))


# ------------------------------------------------------------------ running units
def _worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """A lost worker, an out-of-memory error or a flaky store may pass on a retry; a bad input
    (ValueError / TypeError: a prompt longer than the context, a malformed artifact) will not."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, (ValueError, TypeError))


def _retry_options(cfg: SimsConfig) -> dict[str, Any]:
    return {
        "retries": cfg.engine_options.get("retries", DEFAULT_RETRIES),
        "retry_delay_seconds": cfg.engine_options.get("retry_delay_seconds", 0),
        "retry_condition_fn": _worth_retrying,
    }


def run_units(ctx: PhaseContext, unit: str, calls: Sequence[dict[str, Any]]) -> list[Any]:
    """Run ``unit`` once per entry of ``calls`` (the keyword arguments of each shard, including
    ``shard``/``shards`` for sharded units) in parallel on the configured engine, and return the
    results in the order of ``calls``.

    Every call runs to its end before failures are reported, so the shards that succeed keep
    their artifacts and a rerun computes only the failed ones."""
    cfg = ctx.cfg
    log = phase_logger()
    names = [_phase_name(unit, call) for call in calls]
    if cfg.engine == "deployment":
        futures = [
            run_remote.with_options(task_run_name=f"dispatch-{name}").submit(ctx, unit, call)
            for name, call in zip(names, calls)
        ]
    else:
        base = unit_task(unit)
        futures = []
        for name, call in zip(names, calls):
            configured = base.with_options(task_run_name=f"{name}-iter-{ctx.iteration}", **_retry_options(cfg))
            futures.append(_submit(cfg, configured, ctx, call))
    results, failures = [], []
    for name, future in zip(names, futures):
        future.wait()
        state = future.state
        if state.is_completed():
            results.append(future.result())
        else:
            exc = future.result(raise_on_failure=False)
            failures.append((name, exc))
            results.append(None)
    if failures:
        detail = "; ".join(f"{name}: {type(exc).__name__}: {exc}" for name, exc in failures)
        log.error(
            "iteration %d: %d of %d %s unit(s) failed: %s", ctx.iteration, len(failures), len(calls), unit, detail
        )
        error = ShardsFailed(
            f"iteration {ctx.iteration}: {len(failures)} of {len(calls)} {unit} shard(s) failed "
            f"({detail}); the others are saved, rerun the same run id to compute only these"
        )
        first = failures[0][1]
        raise error from first if isinstance(first, BaseException) else error
    return results


def _phase_name(unit: str, call: dict[str, Any]) -> str:
    return shard_phase(unit, call.get("shard", 0), call.get("shards", 1))


def _submit(cfg: SimsConfig, configured: Any, ctx: PhaseContext, call: dict[str, Any]) -> Any:
    gpus = cfg.engine_options.get("num_gpus")
    if cfg.engine == "ray" and gpus:
        from prefect_ray.context import remote_options

        with remote_options(num_gpus=gpus):
            return configured.submit(ctx, **call)
    return configured.submit(ctx, **call)


# ------------------------------------------------------------------ the deployment engine
def idempotency_key(ctx: PhaseContext, unit: str, call: dict[str, Any], attempt: int) -> str:
    """One key per (run, iteration, phase, shard, inputs and config): a second orchestrator (or a
    retried one) attaches to the flow run already started for a shard instead of starting
    another; a changed config or input starts a new one. ``attempt`` > 0 names a retry."""
    digest = stable_hash({"config": ctx.config, "call": call, "inputs": _input_hashes(ctx, call)})[:12]
    key = f"sims/{ctx.run_id}/iter={ctx.iteration}/{_phase_name(unit, call)}/{digest}"
    return key if attempt == 0 else f"{key}/retry-{attempt}"


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


@task(name="run-on-deployment", cache_policy=NO_CACHE)
def run_remote(ctx: PhaseContext, unit: str, call: dict[str, Any]) -> Any:
    """Run one unit as a flow run of the phase-worker deployment (``engine_options.deployment``)
    and return what the unit returns (read back from the run's manifest)."""
    cfg = ctx.cfg
    name = cfg.engine_options.get("deployment", DEFAULT_DEPLOYMENT)
    timeout = cfg.engine_options.get("timeout")
    retries = cfg.engine_options.get("retries", DEFAULT_RETRIES)
    parameters = {"unit": unit, "context": dataclasses.asdict(ctx), "arguments": call}
    log = phase_logger()
    failures = 0
    attempt = 0
    while True:
        key = idempotency_key(ctx, unit, call, attempt)
        flow_run = _create_or_attach(name, parameters, key)
        state = flow_run.state
        if state is not None and state.is_final() and not state.is_completed():
            log.info(
                "%s: an earlier flow run %s with this key ended %s; starting a new attempt",
                key,
                flow_run.id,
                state.type.value,
            )
            attempt += 1
            continue
        log.info(
            "%s: flow run %s on deployment %s (%s)",
            _phase_name(unit, call),
            flow_run.id,
            name,
            state.type.value if state is not None else "new",
        )
        last_state = _wait(flow_run.id, timeout)
        if last_state.is_completed():
            break
        failures += 1
        if failures > retries:
            raise ShardsFailed(
                f"{_phase_name(unit, call)} of iteration {ctx.iteration}: flow run {flow_run.id} on "
                f"deployment {name!r} ended {last_state.type.value}: {last_state.message}"
            )
        attempt += 1
    return _outputs(ctx, unit, call)


def _create_or_attach(name: str, parameters: dict[str, Any], key: str) -> Any:
    """Create the flow run for ``key``, or get the one that already exists with that key."""
    from prefect.deployments import run_deployment

    return run_deployment(name=name, parameters=parameters, idempotency_key=key, timeout=0, as_subflow=True)


def _wait(flow_run_id: Any, timeout: float | None, poll: float = 2.0) -> Any:
    from prefect.client.orchestration import get_client

    deadline = None if timeout is None else time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_final():
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise ShardsFailed(
                    f"flow run {flow_run_id} did not finish within engine_options.timeout={timeout} s "
                    f"(is a worker polling the deployment's work pool?)"
                )
            time.sleep(poll)


def _outputs(ctx: PhaseContext, unit: str, call: dict[str, Any]) -> Any:
    """What the unit's task returns, rebuilt from the manifest its remote run completed."""
    manifest = Manifest.load(ctx.store, ctx.run_id)
    phase = _phase_name(unit, call)
    entry = manifest.entry(ctx.iteration, phase)
    if entry is None or entry.status != "completed":
        raise ShardsFailed(
            f"the remote run of {phase} (iteration {ctx.iteration}) completed but the manifest of "
            f"{ctx.run_id} in {ctx.store_url} records it as {entry.status if entry else 'missing'}: "
            f"does the worker see the same store?"
        )
    outputs = {name: manifest.output_uri(ctx.iteration, phase, name) for name in entry.outputs}
    return outputs if unit == "steering" else next(iter(outputs.values()))


def run_unit_here(unit: str, context: dict[str, Any], arguments: dict[str, Any]) -> Any:
    """What the phase-worker flow does: compute one unit in this process."""
    return unit_task(unit)(PhaseContext(**context), **arguments)
