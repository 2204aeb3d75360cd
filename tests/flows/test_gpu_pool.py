"""The deployment engine: a light orchestrator starts one flow run of the `sims-phase/gpu`
deployment per unit (phase shard, fit, eval) on a work pool served by a real worker, with an
idempotency key per run/iteration/phase/shard. Plus the retry rules of `run_remote`."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
from prefect_server import PREFECT, ROOT, prefect_cli, stop
from sharding_helpers import assert_same_artifacts, merged_artifacts

import tasks.engine as engine
from flows.self_improve import self_improve
from tasks.engine import ShardsFailed, idempotency_key
from tasks.phase import PhaseContext

ORCHESTRATE = """
import json, sys
from flows.self_improve import self_improve
from tasks.runtime import runtime
result = self_improve(run_id="remote", config=json.loads(sys.argv[1]))
print("RESULT " + json.dumps({"win_rate": result["win_rate"], "models_loaded": runtime().models_loaded}))
"""

COUNT_RUNS = """
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
with get_client(sync_client=True) as client:
    deployment = client.read_deployment_by_name("sims-phase/gpu")
    runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
    print("RUNS " + str(sorted((r.idempotency_key.split("/")[3], r.state.type.value) for r in runs)))
"""


def _python(env: dict[str, str], code: str, *args: str, timeout: float = 400) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout


def _line(output: str, tag: str) -> str:
    return next(line[len(tag) + 1 :] for line in output.splitlines() if line.startswith(tag + " "))


def test_an_orchestrator_runs_every_unit_on_the_gpu_pool(prefect_server, prefect_harness, tiny_config, tmp_path):
    env = {**prefect_server, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    prefect_cli(env, "work-pool", "create", "sims-process", "--type", "process")
    prefect_cli(env, "work-pool", "create", "sims-gpu", "--type", "process")
    prefect_cli(env, "--no-prompt", "deploy", "--all")
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", "sims-gpu", "--limit", "2"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    config = {**tiny_config, "iterations": 1, "num_prompts": 8, "controls": False, "store": str(tmp_path / "remote")}
    try:
        remote = {**config, "shards": 2, "engine": "deployment", "engine_options": {"retries": 0, "timeout": 300}}
        first = json.loads(_line(_python(env, ORCHESTRATE, json.dumps(remote)), "RESULT"))
        assert first["models_loaded"] == 0 and first["win_rate"] is not None  # the orchestrator never loaded it
        runs = _line(_python(env, COUNT_RUNS), "RUNS")
        expected = sorted(
            [
                (f"{p}_shard_{i:03d}_of_002", "COMPLETED")
                for p in ("generations", "rankings", "activations")
                for i in range(2)
            ]
            + [("steering", "COMPLETED"), ("eval", "COMPLETED")]
        )
        assert runs == str(expected)

        again = json.loads(_line(_python(env, ORCHESTRATE, json.dumps(remote)), "RESULT"))
        assert again["win_rate"] == first["win_rate"]
        assert _line(_python(env, COUNT_RUNS), "RUNS") == runs  # same keys: attached, no new flow run
    finally:
        stop(worker)
        log.close()

    self_improve(run_id="remote", config={**config, "store": str(tmp_path / "local")})
    assert_same_artifacts(
        merged_artifacts(str(tmp_path / "local"), "remote"), merged_artifacts(str(tmp_path / "remote"), "remote")
    )


def _state(kind: str):
    return SimpleNamespace(
        is_final=lambda: kind != "SCHEDULED",
        is_completed=lambda: kind == "COMPLETED",
        type=SimpleNamespace(value=kind),
        message=f"{kind.lower()} on purpose",
        result=lambda: "uri-of-activations",
    )


@pytest.fixture
def fake_deployment(monkeypatch, tmp_path):
    """`run_deployment`, the reschedule and the wait replaced: ``ends[key]`` lists how each wait on
    the key's flow run ends; ``existing[key]`` is the state a flow run already has."""
    created: list[str] = []
    rescheduled: list[str] = []
    ends: dict[str, list[str]] = {}
    existing: dict[str, str] = {}

    def create_or_attach(name, parameters, key):
        created.append(key)
        return SimpleNamespace(id=key, state=_state(existing.get(key, "SCHEDULED")))

    monkeypatch.setattr(engine, "_create_or_attach", create_or_attach)
    monkeypatch.setattr(engine, "_reschedule", lambda flow_run_id, reason: rescheduled.append(flow_run_id))
    monkeypatch.setattr(
        engine, "_wait", lambda flow_run_id, timeout: SimpleNamespace(state=_state(ends[flow_run_id].pop(0)))
    )
    ctx = PhaseContext(
        store_url=str(tmp_path / "runs"),
        run_id="r",
        iteration=3,
        config={"engine": "deployment", "engine_options": {"retries": 1}},
    )
    return SimpleNamespace(created=created, rescheduled=rescheduled, ends=ends, existing=existing, ctx=ctx)


CALL = {"buffer_uri": "not-stored", "shard": 1, "shards": 2}


def test_idempotency_keys_name_run_iteration_phase_and_shard(fake_deployment):
    key = idempotency_key(fake_deployment.ctx, "activations", CALL)
    assert key.startswith("sims/r/iter=3/activations_shard_001_of_002/")
    assert idempotency_key(fake_deployment.ctx, "activations", CALL) == key  # a second orchestrator attaches
    changed = PhaseContext(**{**fake_deployment.ctx.__dict__, "config": {"engine": "deployment", "seed": 1}})
    assert idempotency_key(changed, "activations", CALL) != key  # another config: another flow run


def test_an_earlier_failed_run_is_rescheduled_not_replaced(fake_deployment):
    fake = fake_deployment
    key = idempotency_key(fake.ctx, "activations", CALL)
    fake.existing[key] = "FAILED"  # left by an earlier orchestrator, after its own flow retries
    fake.ends[key] = ["COMPLETED"]
    assert engine.run_remote.fn(fake.ctx, "activations", CALL) == "uri-of-activations"
    assert fake.created == [key] and fake.rescheduled == [key]  # the same flow run, no new key


def test_a_crash_is_rescheduled_up_to_the_retries_then_names_the_shard_and_the_state(fake_deployment):
    fake = fake_deployment
    key = idempotency_key(fake.ctx, "activations", CALL)
    fake.ends[key] = ["CRASHED", "CRASHED"]
    with pytest.raises(
        ShardsFailed, match="activations_shard_001_of_002 of iteration 3: flow run .* ended CRASHED: crashed on purpose"
    ):
        engine.run_remote.fn(fake.ctx, "activations", CALL)
    assert fake.created == [key] and fake.rescheduled == [key]  # retries=1: one reschedule, then the error
