"""A real deployment: `prefect server start` and a process worker in the background, deploy from
prefect.yaml, run the deployment, see it complete, shut both down. Plus the structure of the
Kubernetes GPU variant (no cluster here to run it)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from cli_args import one_iteration_config
from prefect_server import PREFECT, ROOT, run_worker_once
from prefect_server import prefect_cli as _prefect

from storage import ArtifactStore, Manifest


@pytest.mark.skipif(shutil.which(PREFECT) is None and not Path(PREFECT).exists(), reason="prefect CLI not installed")
def test_deploy_from_prefect_yaml_and_run_on_a_process_worker(prefect_server, tiny_model_dir, tmp_path):
    env = prefect_server
    _prefect(env, "work-pool", "create", "sims-process", "--type", "process")
    _prefect(env, "work-pool", "create", "sims-gpu", "--type", "process")
    _prefect(env, "--no-prompt", "deploy", "--all")
    inspected = _prefect(env, "deployment", "inspect", "self-improve/nightly")
    assert "0 3 * * *" in inspected and "'timezone': 'UTC'" in inspected
    assert re.search(r"'concurrency_limit': 1\b", inspected) or "'limit': 1" in inspected
    # The one `config` parameter reaches the server as the SimsConfig model's schema (the UI's form):
    # every field with its default, and the nightly parameters as documented in prefect.yaml.
    assert "'$ref': '#/definitions/SimsConfig'" in inspected
    for field in ("'reference_column'", "'lineage_prompts'", "'promotion_threshold'", "'DeploymentOptions'"):
        assert field in inspected, field
    assert "'lineage': 'nightly'" in inspected and "'lineage_prompts': 200" in inspected

    store = str(tmp_path / "runs")
    config = one_iteration_config(tiny_model_dir, store=store)
    out = _prefect(
        env,
        "deployment",
        "run",
        "self-improve/nightly",
        "--param",
        "run_id=deployed",
        "--param",
        f"config={json.dumps(config)}",
    )
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)

    run_worker_once(env, timeout=480)
    state = _prefect(env, "flow-run", "inspect", flow_run_id)
    assert "'type': 'COMPLETED'" in state or "StateType.COMPLETED" in state, state[-2000:]

    manifest = Manifest.load(ArtifactStore.open(store), "deployed")
    assert [e.status for e in manifest.entries] == ["completed"] * 9


def test_kubernetes_gpu_variant_is_consistent():
    deployments = {
        d["name"]: d for d in yaml.safe_load((ROOT / "flows/deploy/kubernetes-gpu.yaml").read_text())["deployments"]
    }
    template = json.loads((ROOT / "flows/deploy/kubernetes-gpu-job-template.json").read_text())
    variables = set(template["variables"]["properties"])
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"])))
    assert used <= variables, f"template uses undefined variables {sorted(used - variables)}"
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    for name in ("nightly-gpu", "gpu"):  # the GPU pool's jobs fill the GPU template's variables
        assert deployments[name]["work_pool"]["name"] == "sims-gpu"
        assert set(deployments[name]["work_pool"]["job_variables"]) <= variables
        assert deployments[name]["work_pool"]["job_variables"]["gpu_count"] == 1
    assert deployments["nightly-gpu"]["entrypoint"] == "flows/self_improve.py:self_improve"
    assert deployments["nightly-gpu"]["concurrency_limit"] == 1
    assert deployments["gpu"]["entrypoint"] == "flows/phase_worker.py:sims_phase"

    orchestrated = deployments["nightly-orchestrated"]
    from sims_core.config import SimsConfig

    cfg = SimsConfig.from_dict(orchestrated["parameters"]["config"])
    assert cfg.engine == "deployment" and cfg.shards == 4 and orchestrated["work_pool"]["name"] == "sims-cpu"
    flow_name, deployment_name = cfg.engine_options.deployment.split("/")
    assert flow_name == "sims-phase" and deployment_name in deployments  # it starts the GPU deployment above
