"""The `sims` command line: status, eval, export, and one-line errors for user mistakes."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from cli_args import TWO_BATCH_RUN, one_iteration_config, set_args

from flows.cli import main
from flows.self_improve import self_improve
from sims_core.steering import SteeringSet


@pytest.fixture(scope="module")
def finished_run(prefect_harness, tiny_model_dir, tmp_path_factory):
    store = str(tmp_path_factory.mktemp("cli") / "runs")
    config = one_iteration_config(tiny_model_dir, store=store, alphas=[2.0])
    result = self_improve(run_id="cli-run", config=config)
    return store, result


def test_status_json_lists_every_phase(finished_run, capsys):
    store, _ = finished_run
    assert main(["status", "cli-run", "--store", store, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["run_id"] == "cli-run"
    assert [(p["iteration"], p["phase"], p["status"]) for p in data["phases"]][:3] == [
        (0, "prompts", "completed"),
        (0, "baseline", "completed"),
        (1, "prompts", "completed"),
    ]
    assert len(data["phases"]) == 9


def test_run_with_shards_from_the_command_line(prefect_harness, tiny_model_dir, tmp_path, capsys):
    store = str(tmp_path / "runs")
    argv = [
        "run",
        "--run-id",
        "sharded",
        "--store",
        store,
        "--shards",
        "2",
        *set_args(model=tiny_model_dir, **TWO_BATCH_RUN),
    ]
    assert main(argv) == 0
    assert "held-out win rate" in capsys.readouterr().out
    assert main(["status", "sharded", "--store", store, "--json"]) == 0
    phases = [p["phase"] for p in json.loads(capsys.readouterr().out)["phases"]]
    assert "generations_shard_001_of_002" in phases and "activations_shard_000_of_002" in phases


def test_status_table_and_runs(finished_run, capsys):
    store, _ = finished_run
    assert main(["status", "cli-run", "--store", store]) == 0
    out = capsys.readouterr().out
    assert "generations completed" in " ".join(out.split())
    assert main(["runs", "--store", store]) == 0
    assert capsys.readouterr().out.split() == ["cli-run"]


def test_eval_summary(finished_run, capsys):
    store, result = finished_run
    assert main(["eval", "cli-run", "--store", store, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    steered = [row for row in data["summary"] if row["condition"] == "steered"][0]
    assert steered["win_rate"] == pytest.approx(result["win_rate"])


def test_export_steering_dpo_and_gguf(finished_run, tmp_path, capsys):
    store, _ = finished_run
    assert main(["export", "cli-run", "steering", "--out", str(tmp_path / "s"), "--store", store]) == 0
    steering = SteeringSet.load(tmp_path / "s")
    assert steering.learner == "mean_diff" and steering.alpha == 2.0
    assert main(["export", "cli-run", "dpo", "--out", str(tmp_path / "pairs.jsonl"), "--store", store]) == 0
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert rows and set(rows[0]) == {"prompt", "chosen", "rejected"}
    assert main(["export", "cli-run", "dpo", "--out", str(tmp_path / "pairs.parquet"), "--store", store]) == 0
    assert len(pd.read_parquet(tmp_path / "pairs.parquet")) == len(rows)
    assert main(["export", "cli-run", "gguf", "--out", str(tmp_path / "cv.gguf"), "--store", store]) == 0
    from gguf import GGUFReader

    reader = GGUFReader(str(tmp_path / "cv.gguf"))
    assert [t.name for t in reader.tensors] == [f"direction.{layer}" for layer in steering.layers]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["status", "no-such-run"], "run 'no-such-run' has no manifest"),
        (["run", "--set", "learner=magic"], "learner must be one of ['hpr', 'mean_diff', 'linear_shift'], got 'magic'"),
        (["run", "--set", "colour=blue"], "unknown config field(s) ['colour']"),
        (["run", "--set", "nonsense"], "override 'nonsense' must look like key=value"),
        (["run", "--config", "/no/such/file.yaml"], "config file '/no/such/file.yaml' does not exist"),
        (["run", "--store", "ftp://host/x"], "ftp://host/x"),
        (["run", "--set", "model=/no/such/model"], "model path '/no/such/model' does not exist"),
        (["run", "--set", "model=/no/such.gguf"], "GGUF file '/no/such.gguf' does not exist"),
        (["run", "--set", "oracle=oracle_of_delphi"], "oracle must be one of"),
        (["run", "--set", "prompts=/no/prompts.csv"], "/no/prompts.csv"),
        (["run", "--run-id", "bad id!"], "run_id 'bad id!' is not valid"),
        (["eval", "cli-run", "--iteration", "7"], "has no completed eval at iteration 7"),
        (["export", "cli-run", "dpo", "--out", "pairs.txt"], "--out for dpo must end in .parquet or .jsonl"),
        (["run", "--engine", "spark"], "engine must be one of ['threads', 'dask', 'ray', 'deployment'], got 'spark'"),
        (["run", "--shards", "0"], "shards must be a positive integer, got 0"),
        (
            ["run", "--engine", "dask", "--set", "engine_options={address: 'tcp://127.0.0.1:1'}"],
            "engine 'dask': cannot reach the Dask scheduler at tcp://127.0.0.1:1",
        ),
    ],
)
def test_user_mistakes_get_one_line_and_exit_2(finished_run, capsys, argv, message):
    store, _ = finished_run
    if argv[0] != "run":
        argv = [*argv, "--store", store]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_sims_run_on_a_local_dask_cluster_as_a_user_runs_it(tiny_model_dir, tmp_path):
    """The installed `sims` script in a fresh directory (no pytest sys.path): Dask workers put their
    scratch directory, which holds a `storage` spill folder, first on sys.path."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    sims = str(Path(sys.executable).with_name("sims"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PREFECT_API_URL")}
    argv = [
        sims,
        "run",
        "--run-id",
        "dask",
        "--store",
        str(tmp_path / "runs"),
        "--shards",
        "2",
        "--engine",
        "dask",
        "--set",
        "engine_options={n_workers: 2, retries: 0}",
        *set_args(model=tiny_model_dir, **TWO_BATCH_RUN),
    ]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "held-out win rate" in done.stdout
    assert done.stderr.count("Starting temporary server") == 1  # the workers report to the flow's server
    from storage import ArtifactStore, Manifest

    manifest = Manifest.load(ArtifactStore.open(str(tmp_path / "runs")), "dask")
    assert [e.status for e in manifest.entries if "shard" in e.phase] == ["completed"] * 6
