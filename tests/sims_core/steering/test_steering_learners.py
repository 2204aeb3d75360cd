"""The learners' behaviour: mean difference, HPR and the learned shift on synthetic pairs; the
registry, layer selection, warm start, determinism and the progress bar."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

import sims_core.steering.fit as fit_module
from sims_core.steering import (
    Learner,
    MeanDiffFunction,
    SteeringSet,
    fit_steering,
    get_learner,
    known_learners,
    register_learner,
)
from sims_core.steering.learners import _REGISTRY


def test_mean_diff_is_difference_of_means_and_adds_alpha_v(make_pairs):
    pos, neg, _ = make_pairs(n=60, d=16)
    neg = neg[:45]  # unpaired counts are fine for mean_diff
    s = fit_steering("mean_diff", {2: pos}, {2: neg}, top_k=1)
    expected = pos.mean(0) - neg.mean(0)
    torch.testing.assert_close(s[2].vector, expected)
    h = torch.randn(3, 5, 16)
    torch.testing.assert_close(s[2](h, alpha=2.5), h + 2.5 * expected)
    assert s.default_positions == "all"


def test_fitted_hpr_moves_held_out_negatives_to_the_positive_side(make_pairs):
    pos, neg, _ = make_pairs(n=600, d=32, seed=3)
    train, test = slice(0, 500), slice(500, 600)
    s = fit_steering("hpr", {1: pos[train]}, {1: neg[train]}, top_k=1, seed=0, epochs=10)
    fn = s[1]
    held_pos, held_neg = pos[test], neg[test]
    w = fn.probe_weight
    before = held_neg @ w
    steered = fn(held_neg)
    after = steered @ w
    assert (before < 0).float().mean() > 0.9  # the probe learnt the contrast
    assert after.mean() > before.mean()
    assert (after > 0).float().mean() > 0.8  # most negatives now on the positive side
    assert bool((after >= before - 1e-4).all())
    torch.testing.assert_close(steered.norm(dim=-1), held_neg.norm(dim=-1), rtol=1e-5, atol=1e-4)
    # positives the probe accepts are left exactly as they were
    accepted = (held_pos @ w) > 0
    assert torch.equal(fn(held_pos)[accepted], held_pos[accepted])
    # the angle network predicts small angles for positives, larger for negatives
    assert fn.angle(held_pos).mean() < fn.angle(held_neg).mean()
    assert s.default_positions == "last"


def test_linear_shift_maps_negatives_towards_positives(make_pairs):
    pos, neg, _ = make_pairs(n=400, d=24, seed=5)
    s = fit_steering("linear_shift", {0: pos[:300]}, {0: neg[:300]}, top_k=1, epochs=20, lr=1e-2)
    before = (neg[300:] - pos[300:]).pow(2).mean()
    after = (s[0](neg[300:]) - pos[300:]).pow(2).mean()
    assert after < 0.2 * before
    torch.testing.assert_close(s[0](neg[300:], alpha=0.0), neg[300:])


@pytest.mark.parametrize("learner", ["hpr", "linear_shift", "mean_diff"])
def test_fitting_twice_gives_bit_identical_tensors(make_pairs, learner):
    pos, neg, _ = make_pairs(n=80, d=16)
    data = ({0: pos, 1: pos * 0.5}, {0: neg, 1: neg * 0.5})
    a = fit_steering(learner, *data, top_k=2, seed=7)
    b = fit_steering(learner, *data, top_k=2, seed=7)
    assert a.layer_scores == b.layer_scores
    for layer in a.layers:
        for name, tensor in a[layer].state().items():
            assert torch.equal(tensor, b[layer].state()[name]), (layer, name)
    if learner != "mean_diff":
        c = fit_steering(learner, *data, top_k=2, seed=8)
        assert not all(torch.equal(t, c[0].state()[k]) for k, t in a[0].state().items())


@pytest.mark.parametrize("learner", ["hpr", "linear_shift"])
def test_warm_start_begins_from_the_previous_set(make_pairs, learner):
    pos, neg, _ = make_pairs(n=64, d=16)
    first = fit_steering(learner, {0: pos, 3: pos}, {0: neg, 3: neg}, top_k=2, seed=1)
    # with a vanishing learning rate the warm-started fit stays where it started
    again = fit_steering(learner, {0: pos}, {0: neg}, top_k=1, seed=2, warm_start=first, lr=1e-12)
    for name, tensor in first[0].state().items():
        torch.testing.assert_close(again[0].state()[name], tensor, rtol=1e-6, atol=1e-6)
    cold = fit_steering(learner, {0: pos}, {0: neg}, top_k=1, seed=2, lr=1e-12)
    assert not torch.allclose(
        cold[0].state()["down" if learner == "linear_shift" else "probe_weight"],
        first[0].state()["down" if learner == "linear_shift" else "probe_weight"],
    )
    assert again.selection["warm_start"] is True


def test_warm_start_from_another_learner_is_an_error(make_pairs):
    pos, neg, _ = make_pairs(n=30, d=8)
    md = fit_steering("mean_diff", {0: pos}, {0: neg}, top_k=1)
    with pytest.raises(ValueError, match="cannot warm-start learner 'hpr' from a 'mean_diff'"):
        fit_steering("hpr", {0: pos}, {0: neg}, warm_start=md)


def test_layer_selection_keeps_the_informative_layers_and_records_scores(make_pairs):
    pos, neg, _ = make_pairs(n=200, d=16, shift=2.0)
    g = torch.Generator().manual_seed(0)
    noise_p, noise_n = torch.randn(200, 16, generator=g), torch.randn(200, 16, generator=g)
    P = {0: noise_p, 1: pos, 2: noise_p * 2, 3: pos * 0.5}
    N = {0: noise_n, 1: neg, 2: noise_n * 2, 3: neg * 0.5}
    for learner in ("hpr", "mean_diff", "linear_shift"):
        s = (
            fit_steering(learner, P, N, top_k=2, epochs=1)
            if learner != "mean_diff"
            else fit_steering(learner, P, N, top_k=2)
        )
        assert s.layers == [1, 3], learner
        assert sorted(s.layer_scores) == [0, 1, 2, 3]
        assert min(s.layer_scores[1], s.layer_scores[3]) > 0.9 > max(s.layer_scores[0], s.layer_scores[2])
    s = fit_steering("mean_diff", P, N, top_k=None, min_score=0.9)
    assert s.layers == [1, 3]
    s = fit_steering("mean_diff", P, N, layers=[0, 1, 2], top_k=1)
    assert s.layers == [1] and sorted(s.layer_scores) == [0, 1, 2]
    with pytest.raises(ValueError, match="no layer reaches min_score=1.5"):
        fit_steering("mean_diff", P, N, min_score=1.5)


def test_unknown_learner_lists_known_ones(make_pairs):
    pos, neg, _ = make_pairs(n=10, d=4)
    with pytest.raises(
        ValueError, match=r"unknown steering learner 'pca'; known learners: hpr, linear_shift, mean_diff"
    ):
        fit_steering("pca", {0: pos}, {0: neg})
    with pytest.raises(ValueError, match="unknown option.*'learning_rate'.*allowed options: lr, epochs"):
        fit_steering("hpr", {0: pos}, {0: neg}, learning_rate=0.1)
    with pytest.raises(ValueError, match="option epochs must be a positive integer"):
        fit_steering("hpr", {0: pos}, {0: neg}, epochs=0)


def test_a_new_learner_is_one_registered_class(make_pairs):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Config:
        scale: float = 2.0

    @register_learner
    class Doubled(Learner):
        name: ClassVar[str] = "doubled_mean_diff"
        paired: ClassVar[bool] = False
        default_positions: ClassVar[str] = "all"
        operation: ClassVar[str] = "add"
        function_type: ClassVar[type] = MeanDiffFunction

        def fit_layer(self, pos, neg, *, seed, init, on_step):
            on_step(1)
            return MeanDiffFunction(self.config.scale * (pos.mean(0) - neg.mean(0)))

        def score(self, pos_train, neg_train, pos_test, neg_test):
            return 1.0

    Doubled.Config = Config
    try:
        assert "doubled_mean_diff" in known_learners() and get_learner("doubled_mean_diff") is Doubled
        pos, neg, _ = make_pairs(n=20, d=4)
        s = fit_steering("doubled_mean_diff", {0: pos}, {0: neg}, scale=3.0)
        torch.testing.assert_close(s[0].vector, 3.0 * (pos.mean(0) - neg.mean(0)))
        assert isinstance(s, SteeringSet) and s.options == {"scale": 3.0}
    finally:
        _REGISTRY.pop("doubled_mean_diff", None)


def test_fitting_reports_progress(make_pairs, monkeypatch):
    seen = {}
    real = fit_module.progress_bar

    def spy(total, desc, unit="it", enabled=True):
        seen["total"], seen["desc"] = total, desc
        bar = real(total, desc, unit, enabled=False)
        return bar

    monkeypatch.setattr(fit_module, "progress_bar", spy)
    pos, neg, _ = make_pairs(n=40, d=8)
    fit_steering("hpr", {0: pos, 1: pos}, {0: neg, 1: neg}, top_k=2, epochs=2, batch_size=16)
    assert seen["total"] == 2 * 2 * 3 and "hpr" in seen["desc"]  # layers x epochs x ceil(40/16)
