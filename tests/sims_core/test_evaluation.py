"""Win rate with a confidence interval, length-controlled win rate, diversity, and the
evaluation of a steered model against its reference with controls."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from sims_core.errors import UserError
from sims_core.evaluation import (
    best_of_n,
    distinct_n,
    edit_norms,
    evaluate,
    judge_answers,
    length_controlled_interval,
    length_controlled_win_rate,
    paired_effect,
    random_direction_like,
    sample_conditions,
    summarize,
    wilson_interval,
    win_rate,
)
from sims_core.generation import SamplingParams, generate
from sims_core.oracles import OracleError, get_oracle


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


def _steering_at(tiny_lm, alpha, learner="mean_diff", data_seed=1):
    """A steering fitted at layer 1 on separable random activations, set to ``alpha``."""
    from sims_core.steering import fit_steering

    g = torch.Generator().manual_seed(data_seed)
    fitted = fit_steering(
        learner,
        {1: torch.randn(20, 64, generator=g) + 2},
        {1: torch.randn(20, 64, generator=g)},
        top_k=1,
        seed=0,
        model=tiny_lm,
        progress=False,
    )
    return dataclasses.replace(fitted, alpha=alpha)


def test_a_steering_set_is_applied_at_its_own_alpha_exactly_once(tiny_lm, monkeypatch):
    import sims_core.steering.hooks as hooks

    steering = _steering_at(tiny_lm, 3.0)
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


@pytest.mark.parametrize("learner", ["mean_diff", "hpr"])
def test_steering_switched_off_reuses_the_base_answers_which_sampling_again_reproduces(tiny_lm, learner):
    steering = _steering_at(tiny_lm, 0.0, learner, data_seed=2)
    sampling = SamplingParams(max_new_tokens=6, temperature=1.0)
    base = generate(tiny_lm, PROMPTS, num_samples=2, sampling=sampling, seed=5, progress=False)
    kwargs = dict(num_samples=2, sampling=sampling, seed=5, progress=False, controls=("random_direction",))
    sampled, _ = sample_conditions(tiny_lm, PROMPTS, steering, **kwargs)
    reused, notes = sample_conditions(tiny_lm, PROMPTS, steering, unsteered=base, **kwargs)
    texts = lambda answers: [[g.text for g in row] for row in answers]  # noqa: E731
    # the shortcut is exact: strength 0 sampled again gives the base model's answers
    assert texts(sampled["steered"]) == texts(base)
    assert texts(reused["steered"]) == texts(base) and texts(reused["random_direction"]) == texts(base)
    assert reused["steered"][0][0] is base[0][0]  # taken, not sampled
    assert any("steering is off" in note for note in notes)


def test_unsteered_answers_are_used_only_when_the_steering_is_off(tiny_lm, monkeypatch):
    import sims_core.generation as generation

    steering = _steering_at(tiny_lm, 0.0, data_seed=2)
    sampling = SamplingParams(max_new_tokens=4)
    base = generate(tiny_lm, PROMPTS[:2], sampling=sampling, seed=1, progress=False)
    calls = []
    real_generate = generation.generate

    def counting_generate(*args, **kwargs):
        calls.append(kwargs.get("sampling"))
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(generation, "generate", counting_generate)
    kwargs = dict(sampling=sampling, seed=1, progress=False, unsteered=base)
    conditions, _ = sample_conditions(tiny_lm, PROMPTS[:2], steering, **kwargs)
    assert set(conditions) == {"steered", "random_direction", "low_temperature"}
    assert [c.temperature for c in calls] == [0.4]  # only the low-temperature control is sampled
    calls.clear()
    sample_conditions(tiny_lm, PROMPTS[:2], steering, alpha=0.0, controls=(), **kwargs)
    assert calls == []
    sample_conditions(tiny_lm, PROMPTS[:2], dataclasses.replace(steering, alpha=1.0), controls=(), **kwargs)
    assert len(calls) == 1  # steering on: sampled
    with pytest.raises(UserError, match=r"unsteered must hold 1 Generation\(s\) for each of the 2 prompts, got 1"):
        sample_conditions(tiny_lm, PROMPTS[:2], steering, sampling=sampling, controls=(), unsteered=base[:1])


# -- the reusable pieces: paired effect, LC interval, judge_answers, summarize, best_of_n -----------


def _hand_bootstrap(values, groups, n_boot, seed, confidence=0.95):
    """The percentile bootstrap written out: draw whole groups with replacement (groups numbered
    in the order of their text; no groups: each value alone, in order), mean over the drawn
    items, quantiles."""
    if groups is None:
        keys, members = list(range(len(values))), {i: [v] for i, v in enumerate(values)}
    else:
        keys = sorted({str(g) for g in groups})
        members = {k: [v for v, g in zip(values, groups) if str(g) == k] for k in keys}
    picks = np.random.default_rng(seed).integers(0, len(keys), size=(n_boot, len(keys)))
    stats = []
    for row in picks:
        drawn = [v for j in row for v in members[keys[j]]]
        stats.append(sum(drawn) / len(drawn))
    tail = (1 - confidence) / 2
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail))


def test_paired_effect_matches_a_hand_computed_bootstrap():
    rng = np.random.default_rng(4)
    steered = rng.normal(0.3, 1.0, size=24)
    baseline = rng.normal(0.0, 1.0, size=24)
    diffs = list(steered - baseline)
    mean, low, high = paired_effect(steered, baseline, n_boot=500, seed=9)
    assert mean == pytest.approx(float(np.mean(diffs)))
    assert (low, high) == pytest.approx(_hand_bootstrap(diffs, None, 500, 9), abs=1e-12)
    groups = [f"prompt {i // 3}" for i in range(24)]  # 8 prompts, 3 samples each
    mean_g, low_g, high_g = paired_effect(steered, baseline, groups, n_boot=500, seed=9)
    assert mean_g == pytest.approx(mean)
    assert (low_g, high_g) == pytest.approx(_hand_bootstrap(diffs, groups, 500, 9), abs=1e-12)
    assert paired_effect(steered, baseline, groups, confidence=0.5, n_boot=500, seed=9)[1] > low_g


def test_paired_effect_without_variance_is_a_point():
    assert paired_effect([0.75] * 10, [0.5] * 10, groups=[i % 3 for i in range(10)]) == (0.25, 0.25, 0.25)
    assert paired_effect([1.0, 2.0], [1.0, 2.0]) == (0.0, 0.0, 0.0)


def test_paired_effect_refuses_bad_input():
    with pytest.raises(UserError, match="two equally long, non-empty lists of scores, got 2 and 1"):
        paired_effect([1.0, 2.0], [1.0])
    with pytest.raises(UserError, match="needs finite scores"):
        paired_effect([math.inf], [0.0])
    with pytest.raises(UserError, match="n_boot must be a positive integer"):
        paired_effect([1.0], [0.0], n_boot=0)


def test_a_misspelt_bootstrap_keyword_names_the_options():
    expected = "unexpected keyword argument 'n_boots'; the bootstrap options are confidence, n_boot, seed"
    for call in (
        lambda: paired_effect([1.0, 2.0], [0.0, 1.0], n_boots=10),
        lambda: win_rate([1, 0], method="bootstrap", n_boots=10),
        lambda: length_controlled_interval([1, 0], [3, 4], [4, 3], n_boots=10),
    ):
        with pytest.raises(TypeError, match=re.escape(expected)):
            call()
    # the defaults live in one place: omitting them equals passing the documented values
    prefs = [1, 0, 1, 1, 0.5, 1]
    assert win_rate(prefs, method="bootstrap") == win_rate(
        prefs, method="bootstrap", confidence=0.95, n_boot=2000, seed=0
    )


def test_length_controlled_interval_covers_its_estimate_and_widens_with_fewer_prompts():
    prefs, steered, ref = simulate(800, intercept=0.3, slope=1.5, mean_diff=8.0, seed=2)
    groups = np.repeat(np.arange(400), 2)
    many = length_controlled_interval(prefs, steered, ref, groups=groups, n_boot=400, seed=0)
    point = length_controlled_win_rate(prefs, steered, ref).rate
    assert many[0] < point < many[1]
    few = length_controlled_interval(prefs[:100], steered[:100], ref[:100], groups=groups[:100], n_boot=400, seed=0)
    few_point = length_controlled_win_rate(prefs[:100], steered[:100], ref[:100]).rate
    assert few[0] < few_point < few[1]
    assert (few[1] - few[0]) > 1.5 * (many[1] - many[0])


def test_length_controlled_interval_refits_each_resample_like_the_point_estimate():
    """One resample by hand: the drawn comparisons refitted with length_controlled_win_rate give
    the rate the batched refit gets for that resample (a 1-resample interval is that rate)."""
    prefs, steered, ref = simulate(60, intercept=0.2, slope=1.0, mean_diff=5.0, seed=3)
    groups = np.repeat(np.arange(30), 2)
    low, high = length_controlled_interval(prefs, steered, ref, groups=groups, n_boot=1, seed=5)
    keys = sorted({str(g) for g in groups})  # groups are numbered in the order of their text
    picks = np.random.default_rng(5).integers(0, 30, size=(1, 30))[0]
    rows = np.concatenate([np.flatnonzero(groups.astype(str) == keys[j]) for j in picks])
    refit = length_controlled_win_rate(prefs[rows], steered[rows], ref[rows]).rate
    assert low == pytest.approx(refit, abs=1e-7) and high == pytest.approx(refit, abs=1e-7)


def _rows(score, reference_score, samples_per_prompt=2, lengths=None):
    n = len(score)
    lengths = lengths if lengths is not None else [20] * n
    return pd.DataFrame(
        dict(
            prompt=[f"p{i // samples_per_prompt}" for i in range(n)],
            prompt_index=[i // samples_per_prompt for i in range(n)],
            score=score,
            reference_score=reference_score,
            preference=[0.5 if a == b else float(a > b) for a, b in zip(score, reference_score)],
            response_tokens=lengths,
            reference_tokens=[20] * n,
            response=[f"answer {i} steered" for i in range(n)],
            reference=[f"answer {i} base" for i in range(n)],
        )
    )


def test_summarize_verdicts_on_constructed_data():
    rng = np.random.default_rng(0)
    base = rng.normal(0.0, 1.0, size=200)
    win = summarize(_rows(base + 0.5 + rng.normal(0, 0.3, 200), base), seed=0)
    assert win["verdict"].startswith("steered better: paired score effect +0.4")
    assert "excludes 0" in win["verdict"] and win["verdict_basis"] == "paired_effect"
    assert win["effect_ci_low"] > 0 and win["win_rate"] > 0.8 and win["ci_low"] > 0.5
    assert (win["n"], win["prompts"], win["effect_n"]) == (200, 100, 200)
    loss = summarize(_rows(base - 0.4 + rng.normal(0, 0.3, 200), base), seed=0)
    assert loss["verdict"].startswith("steered worse: paired score effect -0.")
    assert loss["effect_ci_high"] < 0 and loss["ci_high"] < 0.5
    noise = summarize(_rows(base + rng.normal(0, 0.5, 200), base), seed=0)
    assert noise["verdict"].startswith("no measured difference: paired score effect")
    assert "includes 0" in noise["verdict"]
    assert noise["effect_ci_low"] < 0 < noise["effect_ci_high"]
    assert noise["lc_ci_low"] <= noise["lc_win_rate"] <= noise["lc_ci_high"]
    # a judge whose scores are not comparable: the verdict rests on the win rate
    relative = summarize(_rows(base + 0.5 + rng.normal(0, 0.3, 200), base), seed=0, comparable_scores=False)
    assert relative["verdict_basis"] == "win_rate"
    assert relative["verdict"].startswith("steered better: win rate 0.") and "excludes 0.5" in relative["verdict"]


def test_summarize_leaves_infinite_scores_out_of_the_effect_and_counts_them():
    rows = _rows([1.0, 2.0, math.inf, 3.0], [0.0, 1.0, 0.0, 2.0])
    line = summarize(rows, seed=0, n_boot=200)
    assert (line["effect"], line["effect_n"], line["win_rate"]) == (1.0, 3, 1.0)
    assert line["verdict"].startswith("steered better")  # no variance: the interval is the point 1.0
    with pytest.raises(UserError, match="rows lack the columns score"):
        summarize(rows.drop(columns=["score"]), seed=0)


def test_judge_answers_compares_any_two_sets_of_answers():
    judge = get_oracle("callable", function=lambda p, a: float(len(a)))
    prompts = ["q1", "q2"]
    rows = judge_answers(judge, prompts, [["long answer", "x"], ["same", "b"]], [["short", "xyz"], ["same", "a"]])
    assert rows["preference"].tolist() == [1.0, 0.0, 0.5, 0.5]
    assert rows[["prompt_index", "sample"]].values.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert rows["score"].tolist() == [11.0, 1.0, 4.0, 1.0]
    assert rows["response_tokens"].tolist() == [2, 1, 1, 1]  # strings are counted in words
    assert rows["seed"].isna().all() and "reference_answer" not in rows.columns
    # one answer per prompt is one sample
    assert judge_answers(judge, prompts, ["aa", "b"], ["a", "bb"])["preference"].tolist() == [1.0, 0.0]
    with pytest.raises(UserError, match="prompt 0 has 2 answers but 1 baseline answers"):
        judge_answers(judge, prompts, [["a", "b"], ["c"]], [["a"], ["c"]])
    with pytest.raises(UserError, match="baseline_answers has 1 entries for 2 prompts"):
        judge_answers(judge, prompts, ["a", "b"], ["a"])


def test_judge_answers_passes_references_to_a_judge_that_needs_them_and_refuses_a_consensus_judge():
    def overlap(answers, references):
        return [len(set(a.split()) & set(r.split())) / len(set(r.split())) for a, r in zip(answers, references)]

    judge = get_oracle("reference", similarity=overlap)
    rows = judge_answers(judge, ["q"], [["paris is big", "no"]], [["no idea", "paris"]], references=["paris is"])
    assert rows["score"].tolist() == [1.0, 0.0] and rows["reference_score"].tolist() == [0.0, 0.5]
    assert rows["preference"].tolist() == [1.0, 0.0] and rows["reference_answer"].tolist() == ["paris is"] * 2
    with pytest.raises(OracleError, match=r"judge 'reference\(overlap\)' needs one reference answer per prompt"):
        judge_answers(judge, ["q"], ["a"], ["b"])
    consensus = get_oracle("consensus", similarity=overlap)
    with pytest.raises(OracleError, match=r"cannot judge two answers \(its scores of a pair are symmetric"):
        judge_answers(consensus, ["q"], ["a"], ["b"])


def test_best_of_n_keeps_the_oracles_favourite(tiny_lm):
    oracle = get_oracle("callable", function=lambda p, a: float(len(set(a))))
    result = best_of_n(tiny_lm, PROMPTS, oracle, k=4, max_new_tokens=6, temperature=1.0, seed=11, progress=False)
    plain = generate(tiny_lm, PROMPTS, num_samples=4, max_new_tokens=6, temperature=1.0, seed=11, progress=False)
    assert result.candidates == plain  # K samples of the model as it is
    for row, scores, j, chosen in zip(plain, result.scores, result.index, result.chosen):
        assert scores == [float(len(set(g.text))) for g in row]
        assert j == scores.index(max(scores)) and chosen == row[j]
    flat = best_of_n(tiny_lm, PROMPTS[:1], get_oracle("callable", function=lambda p, a: 0.0), k=3, max_new_tokens=4)
    assert flat.index == [0]  # a tie keeps the first
    with pytest.raises(UserError, match="k must be an integer >= 2"):
        best_of_n(tiny_lm, PROMPTS, oracle, k=1)
    # the best-of-N line: its choices judged against the base model's answers
    line = summarize(judge_answers(oracle, PROMPTS, result.chosen, [row[0] for row in plain]), seed=0, n_boot=100)
    assert line["n"] == 3 and line["win_rate"] >= 0.5


def test_evaluate_with_cached_baseline_answers_equals_evaluate_without(tiny_lm):
    judge = get_oracle("callable", function=lambda p, a: float(len(a.split())))
    steering = {2: 8.0 * torch.randn(tiny_lm.hidden_size, generator=torch.Generator().manual_seed(0))}
    settings = dict(SETTINGS, controls=("low_temperature",), sanity=False)
    fresh = evaluate(tiny_lm, PROMPTS, steering, judge=judge, **settings)
    sampling = SamplingParams(max_new_tokens=6, temperature=1.0)
    cached = generate(tiny_lm, PROMPTS, num_samples=2, sampling=sampling, seed=5, progress=False)
    again = evaluate(tiny_lm, PROMPTS, steering, judge=judge, baseline_answers=cached, **settings)
    pd.testing.assert_frame_equal(fresh.rows, again.rows)
    pd.testing.assert_frame_equal(fresh.summary, again.summary)
    with pytest.raises(UserError, match=r"baseline_answers\[0\] has 1 answers; num_samples=2 needs 2 per prompt"):
        evaluate(tiny_lm, PROMPTS, steering, judge=judge, baseline_answers=[row[:1] for row in cached], **settings)
    with pytest.raises(UserError, match="either reference .* or baseline_answers, not both"):
        evaluate(tiny_lm, PROMPTS, steering, judge=judge, reference=steering, baseline_answers=cached, **settings)


def test_evaluate_summary_has_the_paired_effect_lc_interval_and_verdict(tiny_lm):
    def overlap(answers, references):
        return [len(set(a.split()) & set(r.split())) / max(1, len(set(r.split()))) for a, r in zip(answers, references)]

    judge = get_oracle("reference", similarity=overlap)
    refs = ["Paris is the capital.", "Sleep well and often.", "The sea is wide."]
    with pytest.raises(OracleError, match="needs one reference answer per prompt"):
        evaluate(tiny_lm, PROMPTS, None, judge=judge, **SETTINGS)  # refused before generating
    result = evaluate(tiny_lm, PROMPTS, None, judge=judge, references=refs, controls=(), n_boot=200, **SETTINGS)
    row = result.summary.iloc[0]
    assert (row["effect"], row["effect_ci_low"], row["effect_ci_high"]) == (0.0, 0.0, 0.0)  # same seeds, same text
    assert row["verdict"].startswith("no measured difference: paired score effect +0")
    assert row["verdict_basis"] == "paired_effect" and row["lc_ci_low"] <= row["lc_win_rate"] <= row["lc_ci_high"]
    assert result.rows["reference_answer"].tolist() == [r for r in refs for _ in range(2)]
    assert result.sanity is not None and result.sanity.n == 3
