"""Sharded phases: 1 shard and 4 shards give identical artifacts (threads, a 2-worker Dask
LocalCluster, Ray), a failed shard is retried or resumed alone, and a bad engine is refused before
any work starts."""

from __future__ import annotations

import socket

import pytest
from sharding_helpers import assert_same_artifacts as _assert_same
from sharding_helpers import merged_artifacts as _merged
from task_runs import computed_since, executions

import tasks.generations
from flows.self_improve import self_improve
from sims_core.config import ConfigError
from storage import ArtifactStore, Manifest
from tasks.engine import EngineError, ShardsFailed


@pytest.fixture
def sharded_config(tiny_config, tmp_path):
    return {**tiny_config, "num_prompts": 8, "controls": False}


def _run(config: dict, store: str, **changes) -> dict:
    config = {**config, "store": store, **changes}
    self_improve(run_id="sharding", config=config)
    return _merged(store, "sharding")


def test_four_shards_on_threads_write_the_same_artifacts_as_one(prefect_harness, sharded_config, tmp_path):
    one = _run(sharded_config, str(tmp_path / "one"))
    four = _run(sharded_config, str(tmp_path / "four"), shards=4)
    _assert_same(one, four)

    manifest = Manifest.load(ArtifactStore.open(str(tmp_path / "four")), "sharding")
    phases = {e.phase for e in manifest.entries if e.iteration == 2}
    assert {f"generations_shard_{i:03d}_of_004" for i in range(4)} <= phases
    assert {f"activations_shard_{i:03d}_of_004" for i in range(4)} <= phases and "generations" not in phases
    shard_rows = [manifest.entry(2, f"generations_shard_{i:03d}_of_004").rows for i in range(4)]
    assert shard_rows == [6, 6, 6, 6]  # batch 8 // 3 samples = groups of 2 prompts, one group per shard


def test_a_two_worker_dask_cluster_writes_the_same_artifacts_as_one_shard(prefect_harness, sharded_config, tmp_path):
    config = {**sharded_config, "iterations": 1, "learner": "hpr", "alphas": [1.0]}
    one = _run(config, str(tmp_path / "one"))
    dask = _run(config, str(tmp_path / "dask"), shards=4, engine="dask", engine_options={"n_workers": 2})
    _assert_same(one, dask)
    token_rows = next(value[2] for key, value in dask.items() if key[1] == "activations")
    assert all(":" in pid for pid in token_rows)  # HPR's token-level rows, merged in order


def test_ray_runs_the_shards(prefect_harness, sharded_config, tmp_path):
    pytest.importorskip("prefect_ray")
    config = {**sharded_config, "iterations": 1}
    one = _run(config, str(tmp_path / "one"))
    ray = _run(config, str(tmp_path / "ray"), shards=2, engine="ray", engine_options={"num_cpus": 2})
    _assert_same(one, ray)


def _fail_prompt(monkeypatch, prompt: str, times: int) -> dict:
    """Make ``generate`` fail on the batch that holds ``prompt``, ``times`` times."""
    real = tasks.generations.generate
    seen = {"failures": 0}

    def flaky(lm, prompts, **kwargs):
        if prompt in prompts and seen["failures"] < times:
            seen["failures"] += 1
            raise RuntimeError("injected failure")
        return real(lm, prompts, **kwargs)

    monkeypatch.setattr(tasks.generations, "generate", flaky)
    return seen


def _a_prompt_of_iteration_1(store: str) -> str:
    artifacts = ArtifactStore.open(store)
    return artifacts.read_frame(Manifest.load(artifacts, "sharding").output_uri(1, "prompts"), "prompts")[
        "prompt"
    ].iloc[0]


def test_a_failed_shard_is_resumed_alone(prefect_harness, sharded_config, tmp_path, monkeypatch):
    store = str(tmp_path / "runs")
    config = {**sharded_config, "iterations": 1, "shards": 4, "engine_options": {"retries": 0}, "store": store}
    reference = _run({**config, "shards": 1}, str(tmp_path / "reference"))
    _fail_prompt(monkeypatch, _a_prompt_of_iteration_1(str(tmp_path / "reference")), times=1)
    with pytest.raises(
        ShardsFailed,
        match="1 of 4 generations shard\\(s\\) failed.*generations_shard_00\\d_of_004: RuntimeError: injected",
    ):
        self_improve(run_id="sharding", config=config)
    manifest = Manifest.load(ArtifactStore.open(store), "sharding")
    statuses = [manifest.entry(1, f"generations_shard_{i:03d}_of_004").status for i in range(4)]
    assert sorted(statuses) == ["completed"] * 3 + ["failed"]
    failed = f"generations_shard_{statuses.index('failed'):03d}_of_004"
    assert manifest.entry(1, "rankings_shard_000_of_004") is None  # nothing after the failed phase started

    before = executions("sharding")
    self_improve(run_id="sharding", config=config)
    ran = {k[1] for k in computed_since("sharding", before) if k[0] == 1}
    assert {p for p in ran if p.startswith("generations")} == {failed}
    _assert_same(reference, _merged(store, "sharding"))


def test_a_failed_shard_is_retried(prefect_harness, sharded_config, tmp_path, monkeypatch):
    _run({**sharded_config, "iterations": 1}, str(tmp_path / "reference"))
    seen = _fail_prompt(monkeypatch, _a_prompt_of_iteration_1(str(tmp_path / "reference")), times=1)
    before = executions("sharding")
    store = str(tmp_path / "runs")
    result = self_improve(run_id="sharding", config={**sharded_config, "iterations": 1, "shards": 4, "store": store})
    assert seen["failures"] == 1 and result["win_rate"] is not None  # the default retry (1) recovered
    twice = [k[1] for k, v in computed_since("sharding", before).items() if v == 2]
    assert len(twice) == 1 and twice[0].startswith("generations_shard_")
    manifest = Manifest.load(ArtifactStore.open(store), "sharding")
    assert manifest.entry(1, twice[0]).status == "completed" and manifest.entry(1, twice[0]).attempts == 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_dask_scheduler_is_refused_before_any_work(prefect_harness, sharded_config, tmp_path):
    store = str(tmp_path / "runs")
    address = f"tcp://127.0.0.1:{_closed_port()}"
    with pytest.raises(EngineError, match=f"cannot reach the Dask scheduler at {address}"):
        self_improve(
            run_id="sharding",
            config={**sharded_config, "store": store, "engine": "dask", "engine_options": {"address": address}},
        )
    assert not (tmp_path / "runs" / "sharding").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_workers": 0}, "engine_options.n_workers must be a positive integer, got 0"),
        ({"num_cpus": 2}, "engine_options.num_cpus is not an option of engine 'dask'"),
        ({"address": "tcp://10.0.0.1:8786", "n_workers": 2}, "cannot be combined with address"),
    ],
)
def test_bad_engine_options_are_refused_before_any_work(prefect_harness, sharded_config, tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        self_improve(
            run_id="sharding",
            config={**sharded_config, "store": str(tmp_path / "runs"), "engine": "dask", "engine_options": options},
        )
    assert not (tmp_path / "runs").exists()


def test_a_missing_phase_deployment_is_refused_before_any_work(prefect_harness, sharded_config, tmp_path):
    with pytest.raises(EngineError, match="no deployment 'sims-phase/nowhere'"):
        self_improve(
            run_id="sharding",
            config={
                **sharded_config,
                "store": str(tmp_path / "runs"),
                "engine": "deployment",
                "engine_options": {"deployment": "sims-phase/nowhere"},
            },
        )
    assert not (tmp_path / "runs").exists()


def test_a_bad_input_is_not_retried(prefect_harness, sharded_config, tmp_path, monkeypatch):
    calls = {"n": 0}

    def refuse(lm, prompts, **kwargs):
        calls["n"] += 1
        raise ValueError("prompt 0 has 999 tokens: too long")

    monkeypatch.setattr(tasks.generations, "generate", refuse)
    with pytest.raises(
        ShardsFailed, match="1 of 1 generations shard\\(s\\) failed \\(generations: ValueError: prompt 0 has 999"
    ):
        self_improve(run_id="sharding", config={**sharded_config, "iterations": 1, "store": str(tmp_path / "runs")})
    assert calls["n"] == 1  # the default retry is for lost workers and flaky stores, not for bad input
