"""Answer NLL under the base model, and strength selection with the fluency guard."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from sims_core.fluency import answer_nll, mean_finite
from sims_core.oracles import get_oracle
from sims_core.steering import fit_steering
from sims_core.steering.strength import select_strength, strength_candidates
from sims_core.testing import tiny_model

PROMPTS = ["What is the capital of France?", "Give three tips for sleep.", "Write a short poem about the sea."]


def test_answer_nll_equals_a_direct_computation(tiny_lm):
    answers = ["Paris is the capital.", "Sleep early", ""]
    got = answer_nll(tiny_lm, PROMPTS, answers)
    for prompt, answer, value in zip(PROMPTS[:2], answers[:2], got[:2]):
        context, tokens = tiny_lm.encode_prompt(prompt), tiny_lm.encode_response(answer)
        with torch.no_grad():
            logp = torch.log_softmax(tiny_lm.model(torch.tensor([context + tokens])).logits[0].float(), -1)
        expected = -sum(float(logp[len(context) - 1 + k, t]) for k, t in enumerate(tokens)) / len(tokens)
        assert value == pytest.approx(expected, rel=1e-4)
    assert math.isnan(got[2])
    assert mean_finite(got) == pytest.approx((got[0] + got[1]) / 2)
    with pytest.raises(ValueError, match="same length, got 3 and 1"):
        answer_nll(tiny_lm, PROMPTS, ["x"])


@pytest.fixture(scope="module")
def fitted(tiny_lm):
    g = torch.Generator().manual_seed(0)
    pos = {1: torch.randn(40, 64, generator=g) + 1.0, 2: torch.randn(40, 64, generator=g) + 0.5}
    neg = {1: torch.randn(40, 64, generator=g), 2: torch.randn(40, 64, generator=g)}
    return fit_steering("mean_diff", pos, neg, top_k=2, seed=0, model=tiny_lm, progress=False)


def test_candidates_try_each_of_the_two_best_mean_diff_layers_alone(fitted):
    best_first = sorted(fitted.layers, key=lambda l: -fitted.layer_scores[l])
    assert strength_candidates(fitted, [1.0, 2.0]) == [
        ((1, 2), 1.0),
        ((1, 2), 2.0),
        ((best_first[0],), 1.0),
        ((best_first[0],), 2.0),
        ((best_first[1],), 1.0),
        ((best_first[1],), 2.0),
    ]


def test_a_strength_that_wrecks_the_text_is_never_chosen(fitted):
    # A confident base model (sharpened output layer): its own answers have a low NLL, answers
    # pushed far off course a high one.
    lm = tiny_model("llama")
    lm.model.lm_head.weight.data *= 30
    steering = dataclasses.replace(fitted, allow_identity_mismatch=True)  # other weights: the fingerprint differs
    oracle = get_oracle("callable", function=lambda prompt, answer: float(len(set(answer))))
    wrecked = select_strength(lm, steering, PROMPTS, oracle, alphas=[2000.0], max_nll_increase=0.1, max_new_tokens=8)
    assert [row["fluent"] for row in wrecked.rows] == [True, False, False, False]
    assert wrecked.disabled and wrecked.steering.alpha == 0.0 and wrecked.rows[0]["chosen"]
    assert wrecked.rows[1]["nll"] > wrecked.rows[0]["nll"] + 0.1


def test_the_best_scoring_fluent_strength_wins(tiny_lm, fitted):
    oracle = get_oracle("callable", function=lambda prompt, answer: float(len(answer)))
    result = select_strength(
        tiny_lm, fitted, PROMPTS, oracle, alphas=[1e-6, 3.0], max_nll_increase=math.inf, max_new_tokens=8
    )
    candidates = result.rows[1:]
    best = max(candidates, key=lambda row: row["score"])
    assert sum(row["chosen"] for row in result.rows) == 1 and best["chosen"]
    assert result.steering.alpha == best["alpha"] and ",".join(map(str, result.steering.layers)) == best["layers"]
    # a negligible push gives the unsteered answers back: same score and NLL as the baseline row
    assert candidates[0]["score"] == result.rows[0]["score"] and candidates[0]["nll"] == pytest.approx(
        result.rows[0]["nll"]
    )


def test_bad_strength_arguments(tiny_lm, fitted):
    oracle = get_oracle("callable", function=lambda prompt, answer: 0.0)
    with pytest.raises(ValueError, match="alphas is empty"):
        select_strength(tiny_lm, fitted, PROMPTS, oracle, alphas=[])
    with pytest.raises(ValueError, match="max_nll_increase must be a number >= 0"):
        select_strength(tiny_lm, fitted, PROMPTS, oracle, alphas=[1.0], max_nll_increase=-1)
