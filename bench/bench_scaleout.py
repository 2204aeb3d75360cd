"""Scale-out benchmark, measured side by side in one command.

    python bench/bench_scaleout.py            # ~3 min on 2 cores

throughput: the generation phase (the heaviest sharded phase) of one iteration, 4 shards, on a
tiny Llama (hidden 256, 4 layers), with a 2-worker Dask LocalCluster against a 1-worker one (each
worker one process, one torch thread), and against the default threads engine (one process, torch
on every core, shards one after another on the shared model). Each engine first runs the phase
once to start its workers and load the model, then the timed repetitions alternate engines.
Reports answers/s and the 2-worker / 1-worker ratio.

overhead: 16 shards of almost no work (one prompt, two 1-token answers each) through each engine
against the same 16 shard computations called directly in this process: (engine - direct) / 16 is
the engine's cost per shard (task run bookkeeping, scheduling, artifact and manifest writes are on
both sides).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SIMS_PROGRESS", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def _prepare(cfg, store: str, run_id: str):
    """A run with its prompt split and iteration-1 prompts written; returns (ctx, prompts uri)."""
    from storage import ArtifactStore, Manifest
    from tasks.phase import PhaseContext
    from tasks.prompts import prompts_phase

    Manifest.load_or_create(ArtifactStore.open(store), run_id, config=cfg.to_dict())
    run = PhaseContext(store_url=store, run_id=run_id, iteration=0, config=cfg)
    split = prompts_phase.fn(run)
    ctx = run.at(1)
    return ctx, prompts_phase.fn(ctx, split)


def _calls(cfg, prompts_uri: str) -> list[dict]:
    return [
        {"prompts_uri": prompts_uri, "steering_uri": None, "shard": i, "shards": cfg.shards} for i in range(cfg.shards)
    ]


def engine_times(cfg, store: str, label: str, reps: int) -> list[float]:
    """Seconds per generation phase on ``cfg``'s engine (after one warm-up phase)."""
    from prefect import flow

    from tasks.engine import run_units, task_runner_for

    @flow(name=f"bench-{label}")
    def timed() -> list[float]:
        times = []
        for rep in range(reps + 1):
            ctx, prompts_uri = _prepare(cfg, store, f"{label}-{rep}")
            start = time.perf_counter()
            run_units(ctx, "generations", _calls(cfg, prompts_uri))
            times.append(time.perf_counter() - start)
        return times[1:]  # the first started the workers and loaded the model

    return timed.with_options(task_runner=task_runner_for(cfg))()


def direct_time(cfg, store: str) -> float:
    """The same shard computations called in this process, no task runner."""
    from tasks.generations import generations_phase

    ctx, prompts_uri = _prepare(cfg, store, "direct-warm")
    for call in _calls(cfg, prompts_uri):
        generations_phase.fn(ctx, **call)
    ctx, prompts_uri = _prepare(cfg, store, "direct")
    start = time.perf_counter()
    for call in _calls(cfg, prompts_uri):
        generations_phase.fn(ctx, **call)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from sims_core.config import SimsConfig
    from sims_core.testing import save_tiny_model

    work = Path(tempfile.mkdtemp(prefix="sims-bench-scaleout-"))
    model = str(save_tiny_model(work / "model", "llama", hidden=256, layers=4, heads=4))
    heavy = SimsConfig(
        model=model,
        num_prompts=32,
        num_samples=4,
        max_new_tokens=32,
        batch_size=16,
        shards=4,
        engine_options={"retries": 0},
    )
    engines = {
        "dask-1-worker": heavy.replace(engine="dask", engine_options={"n_workers": 1, "retries": 0}),
        "dask-2-workers": heavy.replace(engine="dask", engine_options={"n_workers": 2, "retries": 0}),
        "threads": heavy,
    }
    answers = heavy.num_prompts * heavy.num_samples
    with prefect_test_harness(server_startup_timeout=120):
        results: dict[str, list[float]] = {name: [] for name in engines}
        for round_ in range(2):  # alternate engines: noise on a shared machine hits all of them
            for name, cfg in engines.items():
                results[name] += engine_times(cfg, str(work / f"store-{name}-{round_}"), f"{name}-{round_}", args.reps)
        print(
            f"throughput: generation phase, {answers} answers x {heavy.max_new_tokens} tokens, "
            f"{heavy.shards} shards, tiny llama d=256 (median of {2 * args.reps})"
        )
        medians = {name: statistics.median(times) for name, times in results.items()}
        for name, seconds in medians.items():
            print(
                f"  {name:15s} {seconds:6.2f} s  {answers / seconds:7.1f} answers/s   runs: "
                + ", ".join(f"{t:.2f}" for t in results[name])
            )
        print(
            f"  2 workers / 1 worker throughput: {medians['dask-1-worker'] / medians['dask-2-workers']:.2f}x; "
            f"2 workers / threads engine: {medians['threads'] / medians['dask-2-workers']:.2f}x"
        )

        light = heavy.replace(num_prompts=16, num_samples=2, max_new_tokens=1, batch_size=2, shards=16)
        direct = direct_time(light, str(work / "store-direct"))
        print(
            f"overhead: {light.shards} shards of one prompt, two 1-token answers; direct calls {direct:.2f} s "
            f"({1000 * direct / light.shards:.0f} ms per shard)"
        )
        for name, cfg in (
            ("threads", light),
            ("dask-2-workers", light.replace(engine="dask", engine_options={"n_workers": 2, "retries": 0})),
        ):
            seconds = statistics.median(
                engine_times(cfg, str(work / f"store-light-{name}"), f"light-{name}", args.reps)
            )
            print(
                f"  {name:15s} {seconds:6.2f} s: {1000 * (seconds - direct) / light.shards:+.0f} ms per shard over direct calls"
            )


if __name__ == "__main__":
    main()
