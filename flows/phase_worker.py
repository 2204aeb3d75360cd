"""The phase-worker flow: one unit of a SIMS iteration (a shard of generation, ranking or
activation extraction, or the fit / evaluation of an iteration), deployed on a GPU work pool.

An orchestrator whose config says ``engine: deployment`` starts one flow run of this deployment
per unit with `run_deployment` and an idempotency key per (run, iteration, phase, shard), so the
orchestrator itself never loads the model and can run anywhere (see README, "GPU work pools").
The unit reads and writes the run's store like any task: the store must be one both sides see
(s3://..., or a shared filesystem).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.engine import UNITS, run_unit_here

__all__ = ["sims_phase"]


@flow(name="sims-phase", description="One unit (a phase shard, fit or eval) of a SIMS iteration, on a GPU worker.")
def sims_phase(unit: str, context: dict[str, Any], arguments: dict[str, Any]) -> Any:
    """Compute ``unit`` (one of generations, rankings, activations, steering, eval) for the
    iteration that ``context`` names, with the task's keyword ``arguments``; skipped when its
    artifact is already fresh."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {list(UNITS)}, got {unit!r}")
    return run_unit_here(unit, context, arguments)
