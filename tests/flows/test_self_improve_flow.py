"""The self_improve flow end to end on a tiny model, resume after a failure, and an S3 store."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from task_runs import computed_since, executions

from flows.self_improve import self_improve
from sims_core import load_model
from sims_core.steering import SteeringSet
from storage import ArtifactStore, Manifest

PHASES = ["prompts", "generations", "rankings", "buffer", "activations", "steering", "eval"]


def _table(store: ArtifactStore, manifest: Manifest, iteration: int, phase: str, schema: str) -> pd.DataFrame:
    return store.read_frame(manifest.output_uri(iteration, phase), schema)


def test_flow_runs_every_phase_and_writes_readable_artifacts(prefect_harness, tiny_config, tiny_model_dir):
    result = self_improve(run_id="e2e", config=tiny_config)
    store = ArtifactStore.open(tiny_config["store"])
    manifest = Manifest.load(store, "e2e")
    assert [(e.iteration, e.phase, e.status) for e in manifest.entries] == [
        (0, "prompts", "completed"),
        (0, "baseline", "completed"),
    ] + [(t, phase, "completed") for t in (1, 2) for phase in PHASES]
    split = _table(store, manifest, 0, "prompts", "prompts")
    assert set(split["split"]) == {"train", "val", "eval"} and len(split) == 600
    generations = _table(store, manifest, 2, "generations", "generations")
    assert len(generations) == 4 * 3 and sorted(generations["sample_index"].unique()) == [0, 1, 2]
    rankings = _table(store, manifest, 2, "rankings", "rankings")
    assert sorted(rankings.groupby("prompt_id")["rank"].apply(sorted).iloc[0]) == [0, 1, 2]
    buffer = _table(store, manifest, 2, "buffer", "buffer")
    assert set(buffer["source_iteration"]) <= {1, 2} and (buffer["margin"] > 0).all()
    assert len(buffer) >= len(_table(store, manifest, 1, "buffer", "buffer"))  # memory bank carries pairs over

    lm = load_model(tiny_model_dir)
    steering = SteeringSet.from_bytes(store.read_bytes(result["steering"]), model=lm)
    assert steering.learner == "mean_diff" and steering.alpha in (0.0, 1.0, 4.0)
    selection = store.read_frame(manifest.output_uri(2, "steering", "selection"), "selection")
    assert selection["chosen"].sum() == 1 and selection.iloc[0]["alpha"] == 0.0  # the unsteered baseline row
    assert list(selection["alpha"].iloc[1:]) == [1.0, 4.0] and selection["nll"].notna().all()
    fluent = selection.iloc[1:][selection["fluent"].iloc[1:]]
    chosen = selection[selection["chosen"]].iloc[0]
    if len(fluent):  # the best-scoring fluent strength wins; with none fluent, steering is off
        assert chosen["value"] == fluent["value"].max() and chosen["alpha"] == steering.alpha
    else:
        assert chosen["alpha"] == 0.0 == steering.alpha

    evaluation = _table(store, manifest, 2, "eval", "eval")
    comparisons = evaluation[evaluation["kind"] == "comparison"]
    # iteration over iteration, the controls and the best-of-N line on the last iteration
    assert set(comparisons["condition"]) == {
        "steered",
        "previous_iteration",
        "random_direction",
        "low_temperature",
        "best_of_n",
    }
    assert len(comparisons[comparisons["condition"] == "steered"]) == 3 * 2
    assert 0.0 <= result["win_rate"] <= 1.0 and result["ci_low"] <= result["win_rate"] <= result["ci_high"]
    assert set(result["controls"]) == {"random_direction", "low_temperature"}

    report = store.read_bytes(result["report"]).decode()
    assert f"{result['win_rate']:.1%}" in report and "![oracle score and win rate per iteration](report.png)" in report
    assert store.read_bytes(store.report_uri("e2e", "report.png"))[:8] == b"\x89PNG\r\n\x1a\n"


def _artifact_bytes(store: ArtifactStore, run_id: str) -> dict[tuple[int, str], bytes]:
    manifest = Manifest.load(store, run_id)
    return {
        (e.iteration, e.phase): store.read_bytes(manifest.output_uri(e.iteration, e.phase)) for e in manifest.entries
    }


def test_resume_after_a_failure_skips_finished_phases_and_matches_an_uninterrupted_run(
    prefect_harness, tiny_config, tmp_path, monkeypatch
):
    reference_config = {**tiny_config, "store": str(tmp_path / "uninterrupted")}
    self_improve(run_id="ref", config=reference_config)

    import tasks.steering

    real_fit = tasks.steering.fit_steering

    def failing_fit(*args, **kwargs):
        if kwargs.get("metadata", {}).get("iteration") == 2:
            raise RuntimeError("injected failure in iteration 2")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(tasks.steering, "fit_steering", failing_fit)
    with pytest.raises(RuntimeError, match="injected failure in iteration 2"):
        self_improve(run_id="resumed", config=tiny_config)
    store = ArtifactStore.open(tiny_config["store"])
    failed = Manifest.load(store, "resumed").entry(2, "steering")
    assert failed.status == "failed" and "injected failure" in failed.error

    monkeypatch.setattr(tasks.steering, "fit_steering", real_fit)
    before = executions("resumed")
    self_improve(run_id="resumed", config=tiny_config)
    ran_again = computed_since("resumed", before)
    assert {key for key, count in ran_again.items() if count} == {(2, "steering"), (2, "eval")}

    # The resumed run ends with exactly the artifacts of the uninterrupted one.
    ours = _artifact_bytes(store, "resumed")
    theirs = _artifact_bytes(ArtifactStore.open(reference_config["store"]), "ref")
    assert ours.keys() == theirs.keys()
    for key in ours:
        if key[1] in ("steering",):
            a = SteeringSet.from_bytes(ours[key])
            b = SteeringSet.from_bytes(theirs[key])
            assert a.layers == b.layers and a.alpha == b.alpha
            for layer in a.layers:
                assert torch.equal(a[layer].state()["vector"], b[layer].state()["vector"])
        elif key[1] != "eval":
            assert ours[key] == theirs[key], key


def test_more_iterations_continue_a_finished_run(prefect_harness, tiny_config):
    self_improve(run_id="grow", config={**tiny_config, "iterations": 1})
    before = executions("grow")
    self_improve(run_id="grow", config={**tiny_config, "iterations": 2})
    new = set(executions("grow")) - set(before)
    assert new == {(2, phase) for phase in PHASES}
    manifest = Manifest.load(ArtifactStore.open(tiny_config["store"]), "grow")
    assert manifest.iterations() == [0, 1, 2]


def test_changed_config_recomputes_only_what_depends_on_it(prefect_harness, tiny_config, caplog):
    self_improve(run_id="cfg", config={**tiny_config, "iterations": 1})
    before = executions("cfg")
    self_improve(run_id="cfg", config={**tiny_config, "iterations": 1, "judge": "embedding"})
    ran = set(computed_since("cfg", before))
    assert ran == {(1, "eval")}


def test_flow_on_an_s3_store(prefect_harness, tiny_config, s3_bucket):
    config = {**tiny_config, "store": f"s3://{s3_bucket}/sims", "iterations": 1}
    result = self_improve(run_id="s3run", config=config)
    assert result["steering"].startswith(f"s3://{s3_bucket}/sims/s3run/iter=1/")
    store = ArtifactStore.open(config["store"])
    manifest = Manifest.load(store, "s3run")
    assert [e.status for e in manifest.entries] == ["completed"] * 9
    assert len(store.read_frame(manifest.output_uri(1, "generations"), "generations")) == 12
    assert "Held-out win rate" in store.read_bytes(result["report"]).decode()
    assert store.list_runs() == ["s3run"]


@pytest.mark.parametrize("learner", ["hpr", "linear_shift"])
def test_token_level_learners_run_through_the_flow(prefect_harness, tiny_config, tiny_model_dir, learner):
    config = {**tiny_config, "iterations": 1, "learner": learner, "alphas": None, "controls": True}
    result = self_improve(run_id=f"learner-{learner}", config=config)
    store = ArtifactStore.open(config["store"])
    manifest = Manifest.load(store, f"learner-{learner}")
    with store.activation_reader(manifest.output_uri(1, "activations")) as reader:
        batch = reader.load_layer(reader.layers[0])
    assert all(":" in pid for pid in batch.pair_ids) and set(batch.token_counts.tolist()) == {1}  # token-aligned rows
    steering = SteeringSet.from_bytes(store.read_bytes(result["steering"]), model=load_model(tiny_model_dir))
    assert steering.learner == learner and steering.alpha in (0.0, 0.5, 1.0)
    summary = store.read_frame(manifest.output_uri(1, "eval"), "eval")
    assert {"steered", "random_direction", "low_temperature"} <= set(summary["condition"].dropna())
