"""Choosing the steering strength (and, for mean difference, the layer) on validation prompts.

Too strong a push wrecks a small model's text, too weak does nothing: every candidate
(layers, alpha) answers the validation prompts with the same seed as the unsteered model, the
training oracle scores each prompt's answers side by side, and the best-scoring candidate whose
answers stay fluent (mean NLL per token under the unsteered model at most ``max_nll_increase``
nats above the unsteered answers') wins. When no candidate is fluent, steering is switched off
(alpha 0) rather than shipping word salad.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Unpack

from sims_core.fluency import answer_nll, mean_finite
from sims_core.generation import SamplingOverrides, SamplingParams, generate
from sims_core.models import LanguageModel
from sims_core.oracles import Oracle, score_candidates
from sims_core.steering.hooks import Positions, steer
from sims_core.steering.steering_set import SteeringSet

__all__ = ["StrengthSelection", "select_strength", "strength_candidates"]


@dataclass
class StrengthSelection:
    """The chosen set (its ``alpha`` set; 0 means steering off) and one row per candidate:
    layers, alpha, mean oracle score, mean NLL, whether it was fluent and whether it was chosen.
    The first row is the unsteered model (alpha 0)."""

    steering: SteeringSet
    rows: list[dict[str, Any]]

    @property
    def disabled(self) -> bool:
        return self.steering.alpha == 0.0


def strength_candidates(steering: SteeringSet, alphas: Sequence[float]) -> list[tuple[tuple[int, ...], float]]:
    """(layers, alpha) pairs to try. Mean difference also tries each of its (at most three best)
    layers alone: one well-placed vector often beats several, and with a few dozen pairs the
    held-out probe scores that ranked the layers are noisy, while the oracle on the validation
    prompts measures what matters."""
    layer_sets = [tuple(steering.layers)]
    if steering.learner == "mean_diff" and len(steering.layers) > 1:
        ranked = sorted(steering.layers, key=lambda layer: -steering.layer_scores.get(layer, 0.0))
        layer_sets += [(layer,) for layer in ranked[:3]]
    return [(layers, float(alpha)) for layers in layer_sets for alpha in alphas]


def _restrict(steering: SteeringSet, layers: tuple[int, ...], alpha: float) -> SteeringSet:
    return dataclasses.replace(steering, functions={layer: steering[layer] for layer in layers}, alpha=float(alpha))


def select_strength(
    lm: LanguageModel,
    steering: SteeringSet,
    prompts: Sequence[str],
    oracle: Oracle,
    *,
    alphas: Sequence[float],
    max_nll_increase: float = 0.5,
    positions: Positions | None = None,
    seed: int = 0,
    references: Sequence[str] | None = None,
    sampling: SamplingParams | None = None,
    **overrides: Unpack[SamplingOverrides],
) -> StrengthSelection:
    """Try every (layers, alpha) candidate on ``prompts``; see the module docstring.
    ``references`` (one reference answer per prompt) go to an oracle that needs them.
    ``sampling`` (default ``SamplingParams()``) is how every candidate answers; the keyword
    arguments of the same names override its fields."""
    if not alphas:
        raise ValueError("alphas is empty: give at least one strength to try")
    if not max_nll_increase >= 0:  # also refuses NaN; inf turns the guard off
        raise ValueError(f"max_nll_increase must be a number >= 0 (inf: no fluency guard), got {max_nll_increase!r}")
    params = SamplingParams.resolve(sampling, **overrides)
    batch_size = params.batch_size
    options: dict[str, Any] = dict(num_samples=1, sampling=params, seed=seed, progress=False)
    candidates = [
        (layers, alpha, _restrict(steering, layers, alpha)) for layers, alpha in strength_candidates(steering, alphas)
    ]
    answers = [[row[0].text for row in generate(lm, prompts, **options)]]
    for _, _, candidate in candidates:
        with steer(lm, candidate, positions=positions):
            answers.append([row[0].text for row in generate(lm, prompts, **options)])
    scores = score_candidates(oracle, list(prompts), [list(group) for group in zip(*answers)], references)
    means = [sum(row[j] for row in scores) / len(scores) for j in range(len(answers))]
    nll = [mean_finite(answer_nll(lm, prompts, group, batch_size=batch_size)) for group in answers]
    limit = nll[0] + max_nll_increase if math.isfinite(nll[0]) else math.inf
    rows = [{"layers": "", "alpha": 0.0, "score": means[0], "nll": nll[0], "fluent": True, "chosen": False}]
    for j, (layers, alpha, _) in enumerate(candidates, start=1):
        rows.append(
            {
                "layers": ",".join(map(str, layers)),
                "alpha": alpha,
                "score": means[j],
                "nll": nll[j],
                "fluent": bool(math.isfinite(nll[j]) and nll[j] <= limit),
                "chosen": False,
            }
        )
    fluent = [j for j in range(1, len(rows)) if rows[j]["fluent"]]
    if fluent:
        best = max(fluent, key=lambda j: (rows[j]["score"], -j))
        chosen = candidates[best - 1][2]
    else:
        best = 0
        chosen = dataclasses.replace(steering, alpha=0.0)
    rows[best]["chosen"] = True
    return StrengthSelection(steering=chosen, rows=rows)
