"""The phase-worker flow: one unit of a SIMS iteration (a shard of generation, ranking or
activation extraction, or the steering fit / evaluation of an iteration), deployed on a GPU pool.

An orchestrator whose config says ``engine: deployment`` starts one flow run of this deployment
per unit with `run_deployment` and an idempotency key per (run, iteration, phase, shard), so the
orchestrator itself never loads the model and can run anywhere (see README, "GPU work pools").
The unit reads and writes the run's store like any task: the store must be one both sides see
(s3://..., or a shared filesystem). Its return value (the artifacts' URIs) goes back to the
orchestrator through Prefect's result persistence: on several hosts, point both sides at shared
result storage (``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK``).
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from tasks.engine import UNITS
from tasks.phase import PhaseContext

__all__ = ["sims_phase"]


@flow(
    name="sims-phase",
    description="One unit (a phase shard, the steering fit or the eval) of a SIMS iteration, on a GPU worker.",
    retries=1,
    retry_delay_seconds=10,
    persist_result=True,
)
def sims_phase(
    unit: Literal["baseline", "generations", "rankings", "activations", "steering", "eval"],
    context: PhaseContext,
    arguments: dict[str, Any],
) -> Any:
    """Compute ``unit`` for the iteration that ``context`` names, with the task's keyword
    ``arguments``; skipped (its task run Cached) when its artifact is already fresh. A failure is
    retried once in place (Prefect flow retries: a lost GPU, a flaky store)."""
    return UNITS[unit](context, **arguments)
