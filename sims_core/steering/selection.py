"""Choosing the layers to steer: hold out part of the pairs, score every candidate layer on the
held-out part, keep the best ``top_k`` (and/or those scoring at least ``min_score``).

Scores are held-out accuracies in [0, 1]: of a logistic probe (HPR: without bias, like its own
probe; learned linear shift: with bias) or, for mean difference, of the classifier
``sign((h - midpoint) . v)`` with ``v = mean(H+) - mean(H-)`` (a separation score that also works
for unpaired data). Paired rows are split together, so a pair never straddles the split.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["choose_layers", "holdout_split", "mean_diff_accuracy", "probe_accuracy"]


def holdout_split(n: int, holdout: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random (train, held-out) row indices of ``n`` rows; each side gets at least one row."""
    if n < 2:
        raise ValueError(f"choosing layers needs at least 2 pairs to hold some out, got {n}")
    n_test = min(n - 1, max(1, round(n * holdout)))
    order = torch.randperm(n, generator=generator)
    return order[n_test:].sort().values, order[:n_test].sort().values


def _accuracy(score_pos: Tensor, score_neg: Tensor) -> float:
    correct = int((score_pos > 0).sum()) + int((score_neg < 0).sum())
    return correct / (score_pos.numel() + score_neg.numel())


def probe_accuracy(
    pos_train: Tensor,
    neg_train: Tensor,
    pos_test: Tensor,
    neg_test: Tensor,
    *,
    bias: bool,
    l2: float = 1e-4,
    max_iter: int = 100,
) -> float:
    """Held-out accuracy of a logistic probe ``sigmoid(w.h [+ b])`` fitted by L-BFGS (from zero,
    so deterministic) on the training rows. Inputs are divided by their mean norm first, which
    changes neither the separating hyperplanes nor a bias-free probe's constraint."""
    x = torch.cat([pos_train, neg_train]).double()
    scale = x.norm(dim=-1).mean().clamp_min(1e-12)
    x = x / scale
    y = torch.cat([torch.ones(len(pos_train)), torch.zeros(len(neg_train))]).double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=bias)
    params = [w, b] if bias else [w]
    optimizer = torch.optim.LBFGS(params, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w @ w)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return _accuracy(pos_test.double() / scale @ w + b, neg_test.double() / scale @ w + b)


def mean_diff_accuracy(pos_train: Tensor, neg_train: Tensor, pos_test: Tensor, neg_test: Tensor) -> float:
    """Held-out accuracy of ``sign((h - (mu+ + mu-)/2) . (mu+ - mu-))`` with training means."""
    mu_pos, mu_neg = pos_train.double().mean(0), neg_train.double().mean(0)
    v, mid = mu_pos - mu_neg, (mu_pos + mu_neg) / 2
    return _accuracy((pos_test.double() - mid) @ v, (neg_test.double() - mid) @ v)


def choose_layers(scores: dict[int, float], top_k: int | None, min_score: float | None) -> list[int]:
    """The layers to keep, sorted: those scoring at least ``min_score`` (when given), then the
    ``top_k`` best of them (ties go to the lower layer)."""
    ranked = sorted(scores, key=lambda layer: (-scores[layer], layer))
    if min_score is not None:
        ranked = [layer for layer in ranked if scores[layer] >= min_score]
        if not ranked:
            best = max(scores.values()) if scores else math.nan
            raise ValueError(
                f"no layer reaches min_score={min_score} (the best held-out score is {best:.4f}); lower min_score"
            )
    if top_k is not None:
        ranked = ranked[:top_k]
    return sorted(ranked)
