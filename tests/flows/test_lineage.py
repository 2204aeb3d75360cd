"""Lineages through the flow: night 2 starts from night 1's steering and memory bank and draws new
prompts; the promotion gate decides (both ways) and the current pointer moves only on promotion;
the CLI shows the history and rolls back. Plus run identity: reusing a run id with another model is
refused, and skipped phases are Cached in the Prefect API."""

from __future__ import annotations

import json
import shutil

import pytest
from task_runs import executions

from flows.cli import main
from flows.self_improve import run_tag, self_improve
from sims_core.config import ConfigError
from storage import ArtifactStore, Manifest
from storage.lineage import Lineage


@pytest.fixture
def night_config(tiny_config):
    return {
        **tiny_config,
        "iterations": 1,
        "controls": False,
        "best_of_n": 0,
        "max_eval_prompts": 6,
        "eval_samples": 1,
        "lineage": "bot",
        "lineage_prompts": 40,
        "promotion": "always",
    }


def _split_ids(store: str, run_id: str) -> set[str]:
    artifacts = ArtifactStore.open(store)
    manifest = Manifest.load(artifacts, run_id)
    return set(artifacts.read_frame(manifest.output_uri(0, "prompts"), "prompts")["prompt_id"])


def test_two_nights_advance_a_lineage_through_the_gate(prefect_harness, night_config, tmp_path, capsys):
    store = night_config["store"]
    first = self_improve(config=night_config)
    lineage = Lineage(store, "bot")
    assert first["run_id"].startswith("bot-") and first["lineage"]["promoted"]
    assert first["lineage"]["comparison"]["against"] == "the base model"  # nothing was current yet
    night_1 = lineage.pointer()
    assert night_1["run_id"] == first["run_id"] and lineage.current_steering() == ArtifactStore.open(store).read_bytes(
        first["steering"]
    )

    # night 2, from a copy of the store: the gate keeps the current steering when the new one does not beat it ...
    kept_store = str(tmp_path / "kept")
    shutil.copytree(store, kept_store)
    kept = self_improve(
        config={**night_config, "store": kept_store, "promotion": "win_rate", "promotion_threshold": 1.0}
    )
    assert not kept["lineage"]["promoted"] and kept["lineage"]["reason"].startswith(
        "kept the current steering: win rate"
    )
    assert Lineage(kept_store, "bot").pointer() == night_1  # unchanged

    # ... and promotes it when it does
    second = self_improve(config={**night_config, "promotion": "win_rate", "promotion_threshold": 0.0})
    assert second["lineage"]["promoted"] and second["lineage"]["started_from"] == first["run_id"]
    assert lineage.pointer()["run_id"] == second["run_id"] != night_1["run_id"]
    artifacts = ArtifactStore.open(store)
    night_2 = Manifest.load(artifacts, second["run_id"])
    # it started from night 1's steering and memory bank, and drew prompts night 1 had not
    assert artifacts.read_bytes(night_2.output_uri(0, "lineage", "steering")) == artifacts.read_bytes(first["steering"])
    assert night_2.entry(0, "lineage").outputs.keys() == {"lineage", "steering", "buffer"}
    assert not _split_ids(store, first["run_id"]) & _split_ids(store, second["run_id"])
    assert len(_split_ids(store, second["run_id"])) == 40
    promotion = artifacts.read_frame(night_2.output_uri(1, "promotion"), "eval")
    assert set(promotion[promotion["kind"] == "comparison"]["condition"]) == {"vs_current"}

    assert main(["lineage", "status", "bot", "--store", store]) == 0
    out = capsys.readouterr().out
    assert f"current steering run {second['run_id']}" in out and out.count("PROMOTED") == 2
    assert main(["lineage", "rollback", "bot", "--store", store]) == 0
    assert f"current steering is now run {first['run_id']}'s" in capsys.readouterr().out
    assert lineage.pointer()["sha256"] == night_1["sha256"]
    assert main(["lineage", "status", "nobody", "--store", store]) == 2
    assert "lineage 'nobody' has no runs" in capsys.readouterr().err


def test_a_night_without_new_prompts_is_one_sentence(prefect_harness, night_config, tmp_path):
    prompts = tmp_path / "traffic.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me fact number {i}."}) + "\n" for i in range(60)))
    config = {**night_config, "prompts": str(prompts), "judge": "pmi", "lineage_prompts": None, "val_fraction": 0.2}
    self_improve(config=config)
    with pytest.raises(Exception, match="every prompt of .* was drawn by an earlier run; add new prompts"):
        self_improve(config=config)


def test_reusing_a_run_id_with_another_model_is_refused(prefect_harness, tiny_config, tmp_path):
    from sims_core.testing import save_tiny_model

    config = {**tiny_config, "iterations": 1, "controls": False, "best_of_n": 0}
    self_improve(run_id="reuse", config=config)
    other = str(save_tiny_model(tmp_path / "other-model", "qwen2"))
    with pytest.raises(
        ConfigError, match=r"run 'reuse' in .* was made with another config \(model: .* -> .*other-model"
    ):
        self_improve(run_id="reuse", config={**config, "model": other})
    manifest = Manifest.load(ArtifactStore.open(config["store"]), "reuse")
    assert manifest.config["model"] == tiny_config["model"]  # nothing was rewritten
    # a continuation (another judge, more iterations) is not a conflict; force makes a conflict deliberate
    self_improve(run_id="reuse", config={**config, "judge": "embedding"})
    self_improve(run_id="reuse", config={**config, "model": other}, force=True)
    assert Manifest.load(ArtifactStore.open(config["store"]), "reuse").config["model"] == other


def test_skipped_phases_are_cached_in_the_prefect_api(prefect_harness, tiny_config):
    config = {**tiny_config, "iterations": 1, "controls": False, "best_of_n": 0}
    self_improve(run_id="cached", config=config)
    before = executions("cached")
    self_improve(run_id="cached", config=config)
    assert executions("cached") == before  # nothing computed again

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterTags

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(tags=TaskRunFilterTags(all_=[run_tag("cached")])))
    states = {}
    for run in runs:
        if "-iter-" in run.name and not run.name.startswith("report"):
            states.setdefault(run.name, []).append((run.state.name, run.state.message))
    phases = {
        "prompts-iter-0",
        "baseline-iter-0",
        "prompts-iter-1",
        "generations-iter-1",
        "rankings-iter-1",
        "buffer-iter-1",
        "activations-iter-1",
        "steering-iter-1",
        "eval-iter-1",
    }
    assert set(states) == phases
    for name in phases:  # computed once, then reused: Cached with the reason
        assert sorted(s for s, _ in states[name]) == ["Cached", "Completed"], name
        message = next(m for s, m in states[name] if s == "Cached")
        assert message.startswith("skipped: up to date (completed "), message
