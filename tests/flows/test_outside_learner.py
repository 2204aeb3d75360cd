"""A learner from outside sims: a package that declares it under the entry-point group
`sims.learners` works from the config, the CLI and `sims export` with no edit to sims."""

from __future__ import annotations

import importlib
import json

import pandas as pd
import pytest
import torch
from cli_args import one_iteration_config

import sims_core.steering.learners as learners
from flows.cli import main
from sims_core.steering import SteeringSet

PACKAGE = '''
"""A user's own steering learner: half the mean difference, with its own default strengths."""
from dataclasses import dataclass
from typing import ClassVar

from sims_core.steering.learners import Learner
from sims_core.steering.mean_diff import MeanDiffFunction
from sims_core.steering.selection import mean_diff_accuracy


@dataclass(frozen=True)
class HalfConfig:
    scale: float = 0.5


class HalfMeanDiff(Learner):
    name: ClassVar[str] = "half_mean_diff"
    paired: ClassVar[bool] = False
    token_level: ClassVar[bool] = False
    default_alphas: ClassVar[tuple] = (3.0,)
    vector_export: ClassVar[bool] = True
    default_positions: ClassVar[str] = "all"
    operation: ClassVar[str] = "add"
    function_type: ClassVar[type] = MeanDiffFunction
    Config: ClassVar[type] = HalfConfig

    def fit_layer(self, pos, neg, *, seed, init, on_step):
        on_step(1)
        return MeanDiffFunction(self.config.scale * (pos.mean(0) - neg.mean(0)))

    def score(self, pos_train, neg_train, pos_test, neg_test):
        return mean_diff_accuracy(pos_train, neg_train, pos_test, neg_test)
'''


@pytest.fixture
def outside_learner(tmp_path, monkeypatch):
    """`outside_steer` installed the way pip leaves a package: the module and a dist-info whose
    entry_points.txt declares the learner (no import of it anywhere in sims or in this test)."""
    site = tmp_path / "site"
    (site / "outside_steer").mkdir(parents=True)
    (site / "outside_steer" / "__init__.py").write_text(PACKAGE)
    info = site / "outside_steer-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: outside-steer\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sims.learners]\nhalf_mean_diff = outside_steer:HalfMeanDiff\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setattr(learners, "_plugins_loaded", False)  # this process looked before the package existed
    yield
    learners._REGISTRY.pop("half_mean_diff", None)


def test_an_entry_point_learner_runs_from_the_cli_and_exports(
    outside_learner, prefect_harness, tiny_model_dir, tmp_path, capsys
):
    store = str(tmp_path / "runs")
    settings = one_iteration_config(tiny_model_dir, learner="half_mean_diff", best_of_n=0)
    argv = ["run", "--run-id", "outside", "--store", store]
    for key, value in settings.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    assert main(argv) == 0
    capsys.readouterr()

    out = tmp_path / "steering.safetensors"
    assert main(["export", "outside", "steering", "--out", str(out), "--store", store]) == 0
    steering = SteeringSet.load(out)
    assert steering.learner == "half_mean_diff"
    assert steering.alpha in (0.0, 3.0)  # the learner's own grid (0: the fluency guard turned it off)
    selection = pd.read_parquet(tmp_path / "runs" / "outside" / "iter=1" / "selection.parquet")
    assert sorted(set(selection["alpha"]) - {0.0}) == [3.0]

    assert main(["export", "outside", "gguf", "--out", str(tmp_path / "cv.gguf"), "--store", store]) == 0
    from gguf import GGUFReader

    reader = GGUFReader(str(tmp_path / "cv.gguf"))
    tensors = {t.name: torch.from_numpy(t.data.copy()) for t in reader.tensors}
    assert sorted(tensors) == sorted(f"direction.{layer}" for layer in steering.layers)
    for layer in steering.layers:
        expected = steering.alpha * steering[layer].vector.float().flatten()
        torch.testing.assert_close(tensors[f"direction.{layer}"].flatten(), expected)
    assert "wrote" in capsys.readouterr().out


def test_without_the_package_the_learner_is_refused_naming_the_known_ones(prefect_harness, tmp_path, capsys):
    assert main(["run", "--store", str(tmp_path / "runs"), "--set", "learner=half_mean_diff"]) == 2
    err = capsys.readouterr().err
    assert "learner must be one of ['hpr', 'mean_diff', 'linear_shift'], got 'half_mean_diff'" in err
    assert not (tmp_path / "runs").exists()
