"""A real deployment: `prefect server start` and a process worker in the background, deploy from
prefect.yaml, run the deployment, see it complete, shut both down. Plus the structure of the
Kubernetes GPU variant (no cluster here to run it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from storage import ArtifactStore, Manifest

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    done = subprocess.run([PREFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def prefect_server(tmp_path):
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false", "SIMS_PROGRESS": "0",
           "PREFECT_CLI_WRAP_LINES": "false", "COLUMNS": "200"}
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"prefect server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield env
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.mark.skipif(shutil.which(PREFECT) is None and not Path(PREFECT).exists(), reason="prefect CLI not installed")
def test_deploy_from_prefect_yaml_and_run_on_a_process_worker(prefect_server, tiny_model_dir, tmp_path):
    env = prefect_server
    _prefect(env, "work-pool", "create", "sims-process", "--type", "process")
    _prefect(env, "--no-prompt", "deploy", "--all")
    inspected = _prefect(env, "deployment", "inspect", "self-improve/nightly")
    assert "0 3 * * *" in inspected and "'timezone': 'UTC'" in inspected
    assert re.search(r"'concurrency_limit': 1\b", inspected) or "'limit': 1" in inspected

    store = str(tmp_path / "runs")
    config = {"num_prompts": 4, "num_samples": 2, "max_new_tokens": 6, "max_eval_prompts": 3, "max_val_prompts": 2,
              "eval_samples": 1, "controls": False}
    out = _prefect(env, "deployment", "run", "self-improve/nightly", "--param", "run_id=deployed",
                   "--param", f"model={tiny_model_dir}", "--param", f"store={store}", "--param", "iterations=1",
                   "--param", f"config={json.dumps(config)}")
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)

    worker = subprocess.run([PREFECT, "worker", "start", "--pool", "sims-process", "--run-once"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=480)
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    state = _prefect(env, "flow-run", "inspect", flow_run_id)
    assert "'type': 'COMPLETED'" in state or "StateType.COMPLETED" in state, state[-2000:]

    manifest = Manifest.load(ArtifactStore.open(store), "deployed")
    assert [e.status for e in manifest.entries] == ["completed"] * 8


def test_kubernetes_gpu_variant_is_consistent():
    deployment = yaml.safe_load((ROOT / "flows/deploy/kubernetes-gpu.yaml").read_text())["deployments"][0]
    template = json.loads((ROOT / "flows/deploy/kubernetes-gpu-job-template.json").read_text())
    variables = set(template["variables"]["properties"])
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"])))
    assert used <= variables, f"template uses undefined variables {sorted(used - variables)}"
    assert set(deployment["work_pool"]["job_variables"]) <= variables
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert deployment["entrypoint"] == "flows/self_improve.py:self_improve" and deployment["concurrency_limit"] == 1
