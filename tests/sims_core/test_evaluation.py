"""Win rate with a confidence interval, length-controlled win rate, diversity, and the
evaluation of a steered model against its reference with controls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sims_core.evaluation import (
    distinct_n,
    edit_norms,
    evaluate,
    length_controlled_win_rate,
    random_direction_like,
    wilson_interval,
    win_rate,
)
from sims_core.oracles import get_oracle


def test_wilson_interval_matches_the_textbook_value():
    rate, low, high = win_rate([1] * 7 + [0] * 3)
    assert (rate, round(low, 4), round(high, 4)) == (0.7, 0.3968, 0.8922)
    assert wilson_interval(0.0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)


def test_ties_count_half():
    assert win_rate([1, 0, 0.5, 0.5])[0] == 0.5


def test_wilson_interval_covers_the_true_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    truth, covered = 0.6, 0
    for _ in range(400):
        outcomes = rng.choice([1.0, 0.5, 0.0], size=200, p=[0.5, 0.2, 0.3])  # mean 0.6
        _, low, high = win_rate(outcomes)
        covered += low <= truth <= high
    assert 0.92 <= covered / 400 <= 0.985


def test_bootstrap_by_prompt_is_wider_when_samples_of_a_prompt_agree():
    rng = np.random.default_rng(1)
    per_prompt = rng.integers(0, 2, size=30).astype(float)
    prefs = np.repeat(per_prompt, 4)  # 4 identical samples per prompt: really 30 observations
    groups = np.repeat(np.arange(30), 4)
    rate, low, high = win_rate(prefs, method="bootstrap", groups=groups, seed=0)
    _, flat_low, flat_high = win_rate(prefs, method="bootstrap", seed=0)
    assert rate == pytest.approx(per_prompt.mean())
    assert (high - low) > 1.6 * (flat_high - flat_low)
    assert low < rate < high
    assert win_rate(prefs, method="bootstrap", groups=groups, seed=0) == (rate, low, high)  # seeded


def test_bad_preferences_are_errors():
    with pytest.raises(ValueError, match="non-empty"):
        win_rate([])
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        win_rate([1, 2])
    with pytest.raises(ValueError, match="method must be"):
        win_rate([1], method="exact")


def simulate(n, intercept, slope, mean_diff, seed):
    rng = np.random.default_rng(seed)
    diff = rng.normal(mean_diff, 20.0, size=n)
    ref = rng.integers(40, 80, size=n).astype(float)
    steered = ref + diff
    scale = (steered - ref).std()
    p = 1 / (1 + np.exp(-(intercept + slope * np.tanh((steered - ref) / scale))))
    return (rng.random(n) < p).astype(float), steered, ref


def test_length_controlled_rate_recovers_the_rate_at_zero_length_difference():
    prefs, steered, ref = simulate(6000, intercept=0.4, slope=2.0, mean_diff=10.0, seed=0)
    lc = length_controlled_win_rate(prefs, steered, ref)
    assert lc.rate == pytest.approx(1 / (1 + np.exp(-0.4)), abs=0.025)
    assert lc.length_coef == pytest.approx(2.0, abs=0.2)
    assert lc.raw_rate > lc.rate + 0.05  # the steered side was longer and the judge likes length
    assert float(lc) == lc.rate


def test_a_gain_bought_with_length_only_is_not_a_gain():
    prefs, steered, ref = simulate(6000, intercept=0.0, slope=3.0, mean_diff=15.0, seed=1)
    lc = length_controlled_win_rate(prefs, steered, ref)
    assert win_rate(prefs)[0] > 0.65
    assert lc.rate == pytest.approx(0.5, abs=0.03)


def test_length_controlled_rate_without_length_differences_is_the_plain_rate():
    lc = length_controlled_win_rate([1, 1, 1, 0], [10] * 4, [10] * 4)
    assert lc.rate == pytest.approx(0.75, abs=1e-3) and lc.length_coef == 0.0
    always = length_controlled_win_rate([1.0] * 20, range(20), [5] * 20)
    assert 0.99 < always.rate <= 1.0  # finite despite perfect separation


def test_distinct_n_counts_unique_ngrams():
    assert distinct_n(["a b a b", "a b"], 1) == pytest.approx(2 / 6)
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)
    assert np.isnan(distinct_n(["one"], 2))


def test_random_direction_control_has_the_same_norm_per_layer(tiny_lm):
    vectors = {1: torch.ones(tiny_lm.hidden_size), 3: 2 * torch.ones(tiny_lm.hidden_size)}
    random = random_direction_like(vectors, tiny_lm, alpha=0.5, seed=3)
    assert sorted(random) == [1, 3]
    for layer in vectors:
        assert float(random[layer].norm()) == pytest.approx(0.5 * float(vectors[layer].norm()), rel=1e-5)
        cosine = torch.nn.functional.cosine_similarity(random[layer], vectors[layer], dim=0)
        assert abs(float(cosine)) < 0.6
    assert random_direction_like({1: lambda h: h}, tiny_lm, 1.0) is None


def test_random_direction_for_callable_steering_matches_its_measured_push(tiny_lm):
    shift = torch.zeros(tiny_lm.hidden_size)
    shift[0] = 3.0
    steering = {2: lambda h: h + shift.to(h.dtype)}
    assert edit_norms(tiny_lm, steering, 1.0, ["hi", "What is the capital of France?"]) == {
        2: pytest.approx(3.0, rel=1e-4)
    }
    assert edit_norms(tiny_lm, {2: lambda h: h}, 1.0, ["hi"]) == {2: 0.0}
    random = random_direction_like(steering, tiny_lm, 1.0, seed=1, prompts=["hi"])
    assert sorted(random) == [2] and float(random[2].norm()) == pytest.approx(3.0, rel=1e-4)


PROMPTS = ["What is the capital of France?", "Give three tips for sleep.", "Write a short poem about the sea."]
SETTINGS = dict(num_samples=2, max_new_tokens=6, temperature=1.0, seed=5, progress=False)


def test_unsteered_against_itself_ties_everywhere_because_seeds_are_shared(tiny_lm):
    judge = get_oracle("callable", function=lambda p, a: float(len(a)))
    result = evaluate(tiny_lm, PROMPTS, None, judge=judge, controls=(), **SETTINGS)
    assert (result.rows["response"] == result.rows["reference"]).all()
    row = result.summary.iloc[0]
    assert (row["condition"], row["n"], row["prompts"], row["win_rate"], row["ties"]) == ("steered", 6, 3, 0.5, 6)


def test_evaluate_reports_steered_and_controls_side_by_side(tiny_lm, tmp_path):
    judge = get_oracle("callable", function=lambda p, a: float(len(a.split())))
    steering = {2: 8.0 * torch.randn(tiny_lm.hidden_size, generator=torch.Generator().manual_seed(0))}
    result = evaluate(tiny_lm, PROMPTS, steering, judge=judge, ci="wilson", **SETTINGS)
    summary, rows = result.summary, result.rows
    assert list(summary["condition"]) == ["steered", "random_direction", "low_temperature"]
    assert (summary["n"] == 6).all() and len(rows) == 18
    assert {
        "win_rate",
        "ci_low",
        "ci_high",
        "lc_win_rate",
        "mean_score",
        "mean_length",
        "distinct_2",
        "judge_matched_rate",
        "judge_order_agreement",
    } <= set(summary.columns)
    # Each preference agrees with the judge's scores; the summary is their mean.
    expect = np.where(
        rows["score"] > rows["reference_score"], 1.0, np.where(rows["score"] < rows["reference_score"], 0.0, 0.5)
    )
    assert rows["preference"].tolist() == expect.tolist()
    for condition, part in rows.groupby("condition"):
        line = summary[summary["condition"] == condition].iloc[0]
        assert line["win_rate"] == pytest.approx(part["preference"].mean())
        assert line["ci_low"] <= line["win_rate"] <= line["ci_high"]
        assert line["mean_length"] == pytest.approx(part["response_tokens"].mean())
    # The reference answers are shared by every condition, sample by sample.
    refs = rows.pivot_table(index=["prompt_index", "sample"], columns="condition", values="reference", aggfunc="first")
    assert (refs.nunique(axis=1) == 1).all()
    assert result.sanity is not None and result.sanity.n == 3
    assert any("temperature 0.5" in note for note in result.notes)
    rows.to_parquet(tmp_path / "rows.parquet")
    summary.to_parquet(tmp_path / "summary.parquet")


def test_steering_object_without_vectors_gets_a_random_control_of_its_measured_size(tiny_lm):
    class Rotation:
        default_positions = "all"
        alpha = 1.0

        def steering_edits(self, lm, alpha):
            return {1: lambda h: h * 1.01}

    judge = get_oracle("callable", function=lambda p, a: 0.0)
    result = evaluate(tiny_lm, PROMPTS[:2], Rotation(), judge=judge, sanity=False, **SETTINGS)
    assert list(result.summary["condition"]) == ["steered", "random_direction", "low_temperature"]
    assert not any("random_direction control skipped" in note for note in result.notes)


def test_unknown_control_is_an_error(tiny_lm):
    with pytest.raises(ValueError, match="unknown controls"):
        evaluate(tiny_lm, PROMPTS, None, judge=get_oracle("callable", function=lambda p, a: 0.0), controls=("shuffle",))


def test_a_steering_set_is_applied_at_its_own_alpha_exactly_once(tiny_lm, monkeypatch):
    import dataclasses

    import sims_core.steering.hooks as hooks
    from sims_core.steering import fit_steering

    g = torch.Generator().manual_seed(1)
    fitted = fit_steering(
        "mean_diff",
        {1: torch.randn(20, 64, generator=g) + 2},
        {1: torch.randn(20, 64, generator=g)},
        top_k=1,
        seed=0,
        model=tiny_lm,
        progress=False,
    )
    steering = dataclasses.replace(fitted, alpha=3.0)
    strengths = []
    real_steer = hooks.steer

    def recording_steer(lm, spec, *, alpha=1.0, positions=None):
        if spec is steering:
            strengths.append(alpha * spec.alpha)
        return real_steer(lm, spec, alpha=alpha, positions=positions)

    monkeypatch.setattr(hooks, "steer", recording_steer)
    judge = get_oracle("callable", function=lambda p, a: float(len(a)))
    evaluate(tiny_lm, PROMPTS[:2], steering, judge=judge, controls=("random_direction",), sanity=False, **SETTINGS)
    assert strengths and set(strengths) == {3.0}
