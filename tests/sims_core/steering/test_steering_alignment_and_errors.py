"""Token alignment of response pairs, and the one clear error each kind of bad input gets."""

from __future__ import annotations

import math

import pytest
import torch

from sims_core.steering import align_pairs, fit_steering


def test_align_pairs_aligns_positions_up_to_the_shorter_response():
    g = torch.Generator().manual_seed(0)
    p1, n1 = torch.randn(5, 8, generator=g), torch.randn(3, 8, generator=g)
    p2, n2 = torch.randn(2, 8, generator=g), torch.randn(4, 8, generator=g)
    pos, neg, stats = align_pairs([p1, p2], [n1, n2], return_stats=True)
    assert torch.equal(pos, torch.cat([p1[:3], p2[:2]])) and torch.equal(neg, torch.cat([n1, n2[:2]]))
    assert (stats.responses, stats.positions, stats.kept, stats.skipped_identical, stats.unpaired_tokens) == (
        2,
        5,
        5,
        0,
        4,
    )


def test_align_pairs_skips_nearly_identical_positions():
    g = torch.Generator().manual_seed(1)
    p = torch.randn(4, 20, generator=g)
    n = torch.randn(4, 20, generator=g)
    n[0] = p[0]  # identical (shared prefix token)
    n[1, :16] = p[1, :16]  # 80% equal -> skipped at the default 75%
    n[2, :10] = p[2, :10]  # 50% equal -> kept
    pos, neg, stats = align_pairs([p], [n], return_stats=True)
    assert torch.equal(pos, p[2:]) and torch.equal(neg, n[2:])
    assert stats.skipped_identical == 2
    pos, _ = align_pairs([p], [n], ident_threshold=0.9)
    assert torch.equal(pos, p[1:])


def test_align_pairs_on_layer_dicts():
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    pos, neg = align_pairs({2: [a], 5: [a]}, {2: [b], 5: [b]})
    assert sorted(pos) == [2, 5] and torch.equal(pos[5], a) and torch.equal(neg[2], b)


@pytest.mark.parametrize(
    ("pos", "neg", "message"),
    [
        ([torch.zeros(2, 4)], [], "pos_tokens has 1 responses but neg_tokens has 0"),
        ([torch.zeros(2, 4)], [torch.zeros(2, 5)], r"neg_tokens\[0\] has hidden size 5, expected 4"),
        ([torch.full((2, 4), math.nan)], [torch.zeros(2, 4)], r"pos_tokens\[0\] contains NaN"),
        ([torch.ones(2, 4)], [torch.ones(2, 4)], "no aligned pairs left"),
        ([torch.zeros(4)], [torch.zeros(4)], r"must be a tensor \[tokens, hidden\]"),
    ],
)
def test_align_pairs_errors(pos, neg, message):
    with pytest.raises(ValueError, match=message):
        align_pairs(pos, neg)


def _ok(n=10, d=4):
    return torch.randn(n, d), torch.randn(n, d)


@pytest.mark.parametrize(
    ("learner", "pos", "neg", "kwargs", "message"),
    [
        ("hpr", {0: torch.randn(10, 4)}, {0: torch.randn(9, 4)}, {}, r"pos\[0\] has 10 rows and neg\[0\] has 9"),
        (
            "hpr",
            {0: torch.randn(10, 4)},
            {0: torch.randn(10, 5)},
            {},
            r"neg\[0\] has hidden size 5, but other activations have 4",
        ),
        (
            "mean_diff",
            {0: torch.randn(10, 4), 1: torch.randn(10, 4)},
            {0: torch.randn(10, 4)},
            {},
            r"layer\(s\) \[1\] are in pos but missing from neg",
        ),
        (
            "hpr",
            {0: torch.randn(10, 4)},
            {0: torch.randn(10, 4)},
            {"layers": [0, 3]},
            r"layer\(s\) \[3\] were asked for but are missing",
        ),
        (
            "hpr",
            {0: torch.randn(10, 4)},
            {0: torch.randn(10, 4)},
            {"top_k": 0},
            "top_k must be a positive integer or None, got 0",
        ),
        ("nope", {0: torch.randn(10, 4)}, {0: torch.randn(10, 4)}, {}, "unknown steering learner 'nope'"),
        (
            "hpr",
            {0: torch.randn(10, 4)},
            {0: torch.tensor([[math.nan] * 4] * 10)},
            {},
            r"neg\[0\] contains NaN or infinite values",
        ),
        (
            "mean_diff",
            {0: torch.randn(10, 4)},
            {0: torch.randn(10, 4).to(torch.int64)},
            {},
            r"neg\[0\] must be floating point",
        ),
        ("hpr", [torch.randn(10, 4)], {0: torch.randn(10, 4)}, {}, r"pos must be a non-empty dict"),
    ],
)
def test_fit_steering_bad_input_gets_one_clear_error(learner, pos, neg, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        fit_steering(learner, pos, neg, **kwargs)


def test_fit_steering_checks_the_model(tiny):
    pos, neg = _ok(d=8)
    with pytest.raises(ValueError, match="hidden size 8 but tiny-llama has 64"):
        fit_steering("mean_diff", {0: pos}, {0: neg}, model=tiny)
    pos, neg = _ok(d=64)
    with pytest.raises(ValueError, match=r"layer\(s\) \[7\] do not exist in tiny-llama"):
        fit_steering("mean_diff", {7: pos}, {7: neg}, model=tiny)


def test_activations_captured_in_inference_mode_can_be_fitted():
    with torch.inference_mode():
        pos, neg = torch.randn(20, 8) + 2, torch.randn(20, 8) - 2
    s = fit_steering("hpr", {0: pos}, {0: neg}, epochs=1)
    assert s.layers == [0]
