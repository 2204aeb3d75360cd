"""How many times each phase of a sims run was computed, read from Prefect's task runs: a phase
that computed ends Completed (or Failed), one that was skipped ends Cached; a retried task run
counts every attempt."""

from __future__ import annotations

import time
from collections import Counter

from flows.self_improve import run_tag


def executions(run_id: str) -> Counter[tuple[int, str]]:
    """(iteration, phase) -> attempts that computed, over every flow run of ``run_id`` so far."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterTags

    for _ in range(20):  # states are recorded asynchronously: wait until every task run is final
        runs = []
        with get_client(sync_client=True) as client:
            while True:
                page = client.read_task_runs(
                    task_run_filter=TaskRunFilter(tags=TaskRunFilterTags(all_=[run_tag(run_id)])),
                    offset=len(runs),
                    limit=200,
                )
                runs += page
                if len(page) < 200:
                    break
        if all(r.state is not None and r.state.is_final() for r in runs if "-iter-" in r.name):
            break
        time.sleep(0.5)
    counts: Counter[tuple[int, str]] = Counter()
    for run in runs:
        name, _, iteration = run.name.rpartition("-iter-")
        if not name or name.startswith("dispatch-") or name in ("report", "publish") or run.state.name == "Cached":
            continue
        counts[(int(iteration), name)] += max(run.run_count, 1)
    return counts


def computed_since(run_id: str, before: Counter[tuple[int, str]]) -> Counter[tuple[int, str]]:
    """The executions added since ``before`` (an earlier `executions` of the same run)."""
    now = executions(run_id)
    return Counter({key: now[key] - before.get(key, 0) for key in now if now[key] > before.get(key, 0)})
