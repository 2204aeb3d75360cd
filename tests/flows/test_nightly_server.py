"""Nightly runs on a real `prefect server` and process worker: a schedule fires and a worker
completes the run (a lineage night whose run id derives from the flow run); a run started with no
run id, killed with SIGKILL in iteration 2 and retried with `prefect flow-run retry`, resumes the
SAME run, recomputes nothing that finished and ends with the steering of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import torch
import yaml
from prefect_server import PREFECT, ROOT, prefect_cli, run_worker_once, stop

from flows.self_improve import self_improve
from sims_core.steering import SteeringSet
from storage import ArtifactStore, Manifest
from storage.lineage import Lineage


def _deploy(env: dict[str, str], tmp_path: Path, name: str, config: dict, schedule: dict | None = None) -> None:
    deployment = {
        "name": name,
        "entrypoint": "flows/self_improve.py:self_improve",
        "work_pool": {"name": "sims-process", "work_queue_name": "default"},
        "parameters": {"config": config},
        "schedules": [schedule] if schedule else [],
    }
    spec = {"name": "sims-test", "prefect-version": "3.8.8", "build": None, "push": None, "deployments": [deployment]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    prefect_cli(env, "--no-prompt", "deploy", "--prefect-file", str(path), "--name", name)


def _flow_runs(env: dict[str, str], deployment: str) -> list[dict]:
    code = f"""
import json
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
with get_client(sync_client=True) as client:
    runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[{deployment!r}])))
    print(json.dumps([{{"id": str(r.id), "state": r.state.type.value if r.state else None,
                       "auto": r.auto_scheduled}} for r in runs]))
"""
    done = subprocess.run(
        [str(Path(PREFECT).with_name("python")), "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _wait(predicate, timeout: float, what: str, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _config(tiny_config: dict, store: str, **changes) -> dict:
    return {**tiny_config, "store": store, "controls": False, "best_of_n": 0, "max_eval_prompts": 4, **changes}


def test_a_schedule_fires_and_a_worker_completes_the_night(prefect_server, tiny_config, tmp_path):
    env = prefect_server
    prefect_cli(env, "work-pool", "create", "sims-process", "--type", "process")
    store = str(tmp_path / "runs")
    config = _config(tiny_config, store, iterations=1, lineage="sched", lineage_prompts=40, promotion="always")
    _deploy(env, tmp_path, "every-10s", config, schedule={"interval": 10, "active": True})
    runs = _wait(
        lambda: [r for r in _flow_runs(env, "every-10s") if r["auto"] and r["state"] == "SCHEDULED"],
        timeout=90,
        what="the scheduler to create a flow run",
    )
    assert runs
    run_worker_once(env, timeout=600)
    completed = [r for r in _flow_runs(env, "every-10s") if r["state"] == "COMPLETED"]
    assert completed, _flow_runs(env, "every-10s")
    lineage = Lineage(store, "sched")
    [night] = lineage.nights()
    assert re.fullmatch(r"sched-\d{8}-\d{6}", night["run_id"]) and night["promoted"]  # run id from the scheduled time
    assert lineage.pointer()["run_id"] == night["run_id"]


def _flow_run_pid(flow_run_id: str) -> int | None:
    """The process running ``flow_run_id`` (the worker sets PREFECT__FLOW_RUN_ID in its environment)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode() in environ:
            return int(entry.name)
    return None


def _state(env: dict[str, str], flow_run_id: str) -> str:
    out = prefect_cli(env, "flow-run", "inspect", flow_run_id)
    match = re.search(r"'type': '?(?:StateType\.)?([A-Z]+)", out) or re.search(r"StateType\.([A-Z]+)", out)
    return match.group(1) if match else "?"


def test_a_killed_run_without_run_id_is_resumed_by_prefect_retry(
    prefect_server, prefect_harness, tiny_config, tmp_path
):
    env = {**prefect_server, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    prefect_cli(env, "work-pool", "create", "sims-process", "--type", "process")
    store = str(tmp_path / "runs")
    config = _config(tiny_config, store, iterations=2)
    _deploy(env, tmp_path, "retryable", config)
    out = prefect_cli(env, "deployment", "run", "self-improve/retryable")
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", "sims-process"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        artifacts = ArtifactStore.open(store)

        def in_iteration_2():
            runs = artifacts.list_runs()
            if not runs:
                return None
            entry = Manifest.load(artifacts, runs[0]).entry(2, "generations")
            return runs[0] if entry is not None else None

        run_id = _wait(in_iteration_2, timeout=300, what="the flow run to reach iteration 2", poll=0.2)
        pid = _wait(lambda: _flow_run_pid(flow_run_id), timeout=30, what="the flow run's process")
        os.kill(pid, signal.SIGKILL)
        assert _wait(lambda: _state(env, flow_run_id) in ("CRASHED", "FAILED"), 120, "the worker to report the crash")
        finished_before = {
            (e.iteration, e.phase) for e in Manifest.load(artifacts, run_id).entries if e.status == "completed"
        }
        assert (1, "eval") in finished_before and (2, "eval") not in finished_before

        prefect_cli(env, "flow-run", "retry", flow_run_id)
        assert _wait(lambda: _state(env, flow_run_id) == "COMPLETED", 420, "the retried flow run to complete")
    finally:
        stop(worker)
        log.close()
    assert artifacts.list_runs() == [run_id]  # the same run, no second run id
    manifest = Manifest.load(artifacts, run_id)
    assert all(e.status == "completed" for e in manifest.entries) and (2, "eval") in {
        (e.iteration, e.phase) for e in manifest.entries
    }
    for iteration, phase in finished_before:  # phases that finished before the kill were not computed again
        assert manifest.entry(iteration, phase).attempts == 1, (iteration, phase)

    reference = str(tmp_path / "uninterrupted")
    self_improve(run_id=run_id, config={**config, "store": reference})
    ours = SteeringSet.from_bytes(artifacts.read_bytes(manifest.output_uri(2, "steering")))
    theirs_store = ArtifactStore.open(reference)
    theirs = SteeringSet.from_bytes(
        theirs_store.read_bytes(Manifest.load(theirs_store, run_id).output_uri(2, "steering"))
    )
    assert ours.layers == theirs.layers and ours.alpha == theirs.alpha
    for layer in ours.layers:
        assert torch.equal(ours[layer].state()["vector"], theirs[layer].state()["vector"])
