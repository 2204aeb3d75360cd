"""Evaluation: does the steered model beat a reference, and is the gain real?

- `win_rate`: share of comparisons the steered answer wins (ties count 1/2) with a 95% interval:
  Wilson's score interval on the mean preference (default; with ties it treats the mean as a
  binomial proportion, slightly conservative), or a percentile bootstrap, optionally resampling
  whole prompts (``groups``) because samples of one prompt are correlated.
- `length_controlled_win_rate`: in the spirit of AlpacaEval 2, a logistic model of the judge's
  preference ``logit P(steered wins) = b0 + b1 * tanh(dlen / sd(dlen))`` (``dlen`` = steered minus
  reference length, in tokens), reported at zero length difference: ``sigmoid(b0)``.
- `distinct_n`: unique n-grams / all n-grams over a set of answers (lower = more repetitive).
- `evaluate`: held-out prompts answered by the steered policy and a reference (the base model
  or a previous iteration) with the same per-sample seeds, several samples per prompt, judged by
  an oracle; plus two controls side by side: a random direction with the same norm as each
  steering vector, and the unsteered model at a lower temperature (steering that only makes text
  more "typical" looks like a gain and is not one). Returns plain pandas tables.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from sims_core.oracles.base import Oracle, check_scores
from sims_core.oracles.sanity import JudgeSanity, judge_sanity

if TYPE_CHECKING:
    import pandas as pd

    from sims_core.models import LanguageModel

__all__ = [
    "CONTROLS",
    "Evaluation",
    "LengthControlledWinRate",
    "distinct_n",
    "evaluate",
    "length_controlled_win_rate",
    "edit_norms",
    "random_direction_like",
    "wilson_interval",
    "win_rate",
]

CONTROLS = ("random_direction", "low_temperature")


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _prefs(prefs: Sequence[float], name: str = "prefs") -> np.ndarray:
    values = np.asarray(list(prefs), dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty list of preferences (1 win, 0 loss, 0.5 tie)")
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
        raise ValueError(f"{name} must hold values in [0, 1] (1 steered wins, 0 loses, 0.5 tie)")
    return values


def wilson_interval(p: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``p`` observed over ``n`` trials."""
    z = _z(confidence)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(
    prefs: Sequence[float],
    *,
    method: Literal["wilson", "bootstrap"] = "wilson",
    confidence: float = 0.95,
    groups: Sequence[Any] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(rate, low, high): the mean preference (ties = 0.5) and its confidence interval.

    ``method="wilson"``: Wilson score interval with n = number of comparisons.
    ``method="bootstrap"``: percentile bootstrap (seeded); with ``groups`` (e.g. the prompt of
    each comparison) whole groups are resampled, which widens the interval honestly when several
    samples share a prompt.
    """
    values = _prefs(prefs)
    rate = float(values.mean())
    if method == "wilson":
        low, high = wilson_interval(rate, values.size, confidence)
        return rate, low, high
    if method != "bootstrap":
        raise ValueError(f"method must be 'wilson' or 'bootstrap', got {method!r}")
    _z(confidence)
    rng = np.random.default_rng(seed)
    if groups is None:
        sums, counts = values, np.ones_like(values)
    else:
        if len(groups) != values.size:
            raise ValueError(f"groups has {len(groups)} entries for {values.size} preferences")
        _, inverse = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
        sums = np.bincount(inverse, weights=values)
        counts = np.bincount(inverse).astype(float)
    picks = rng.integers(0, sums.size, size=(n_boot, sums.size))
    stats = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    tail = (1 - confidence) / 2
    return rate, float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail))


@dataclass(frozen=True)
class LengthControlledWinRate:
    """Result of `length_controlled_win_rate`: ``rate`` is the modelled win rate at zero length
    difference; ``raw_rate`` the plain mean; ``length_coef`` how much the judge's log-odds move
    per unit of ``tanh(dlen / length_scale)``."""

    rate: float
    raw_rate: float
    intercept: float
    length_coef: float
    length_scale: float
    n: int

    def __float__(self) -> float:
        return self.rate


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 100) -> np.ndarray:
    """Ridge-penalised logistic regression with soft labels, by damped Newton steps."""
    beta = np.zeros(x.shape[1])

    def loss(b: np.ndarray) -> float:
        z = x @ b
        return float(np.sum(np.logaddexp(0, z) - y * z) + 0.5 * l2 * b @ b)

    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(x @ beta)))
        grad = x.T @ (p - y) + l2 * beta
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        t, current = 1.0, loss(beta)
        while loss(beta - t * step) > current and t > 1e-8:
            t /= 2
        beta = beta - t * step
        if np.max(np.abs(t * step)) < 1e-10:
            break
    return beta


def length_controlled_win_rate(
    prefs: Sequence[float], steered_lengths: Sequence[float], reference_lengths: Sequence[float], *, l2: float = 1e-3
) -> LengthControlledWinRate:
    """Win rate with the judge's length preference modelled out (see the module docstring).
    ``l2`` is a small ridge penalty that keeps the fit finite when one side always wins."""
    y = _prefs(prefs)
    a = np.asarray(list(steered_lengths), dtype=float)
    b = np.asarray(list(reference_lengths), dtype=float)
    if a.shape != y.shape or b.shape != y.shape:
        raise ValueError(
            f"need one steered and one reference length per preference ({y.size}), got {a.size} and {b.size}"
        )
    diff = a - b
    scale = float(diff.std())
    feature = np.tanh(diff / scale) if scale > 0 else np.zeros_like(diff)
    x = np.column_stack([np.ones_like(y), feature])
    beta = _fit_logistic(x, y, l2)
    return LengthControlledWinRate(
        float(1 / (1 + np.exp(-beta[0]))), float(y.mean()), float(beta[0]), float(beta[1]), scale, int(y.size)
    )


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Unique n-grams / total n-grams of lower-cased whitespace words over all ``texts``
    (NaN when no text has n words)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams: list[tuple[str, ...]] = []
    for text in texts:
        words = text.lower().split()
        grams.extend(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return len(set(grams)) / len(grams) if grams else float("nan")


def edit_norms(
    lm: LanguageModel, steering: Any, alpha: float, prompts: Sequence[str], positions: str | None = None
) -> dict[int, float]:
    """Average size ``||h' - h||`` of the push ``steering`` gives at each of its layers, over the
    positions it actually moves, measured on a forward pass over the chat-formatted ``prompts``.
    Layers where nothing moved get 0."""
    from sims_core.steering.hooks import _hidden_of, steer

    handle = steer(lm, steering, alpha=alpha, positions=positions)
    handle.remove()  # to learn its layers; re-applied below, after the "before" hooks
    before: dict[int, torch.Tensor] = {}
    sums = {layer: 0.0 for layer in handle.layers}
    counts = {layer: 0 for layer in handle.layers}

    def grab(layer: int):
        def hook(module: Any, args: tuple, output: Any) -> None:
            before[layer] = _hidden_of(output).detach().clone()

        return hook

    def compare(layer: int):
        def hook(module: Any, args: tuple, output: Any) -> None:
            diff = (_hidden_of(output).detach().float() - before[layer].float()).norm(dim=-1)
            moved = diff > 0
            sums[layer] += float(diff[moved].sum())
            counts[layer] += int(moved.sum())

        return hook

    hooks = [lm.layers[layer].register_forward_hook(grab(layer)) for layer in handle.layers]
    try:
        with handle, torch.inference_mode():
            hooks += [lm.layers[layer].register_forward_hook(compare(layer)) for layer in handle.layers]
            for prompt in prompts:
                ids = torch.tensor([lm.encode_prompt(prompt)], device=lm.device)
                lm.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for hook in hooks:
            hook.remove()
    return {layer: sums[layer] / counts[layer] if counts[layer] else 0.0 for layer in handle.layers}


def random_direction_like(
    steering: Any, lm: LanguageModel, alpha: float, seed: int = 0, prompts: Sequence[str] | None = None
) -> dict[int, torch.Tensor] | None:
    """``{layer: random vector}`` with the same norm as each layer's (alpha-scaled) steering
    vector. For steering that is not made of vectors (HPR rotations, learned shifts, any
    callable), the norm is the average push it gives on ``prompts`` (see `edit_norms`); without
    prompts such steering gets None."""
    if isinstance(steering, Mapping):
        edits, scale = dict(steering), alpha
    elif hasattr(steering, "steering_edits"):
        edits, scale = dict(steering.steering_edits(lm, alpha)), 1.0
    else:
        return None
    if not edits:
        return None
    if all(isinstance(v, torch.Tensor) and v.dim() == 1 for v in edits.values()):
        norms = {layer: float(edits[layer].detach().float().norm()) * scale for layer in edits}
    elif prompts:
        norms = edit_norms(lm, steering, alpha, prompts)
    else:
        return None
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for layer in sorted(norms):
        direction = torch.randn(lm.hidden_size, generator=generator)
        out[layer] = direction / direction.norm() * norms[layer]
    return out


@dataclass
class Evaluation:
    """Per-comparison rows, one summary row per condition, the judge's sanity figures and
    notes on anything skipped."""

    rows: pd.DataFrame
    summary: pd.DataFrame
    sanity: JudgeSanity | None = None
    notes: list[str] = field(default_factory=list)


def _steering(lm: LanguageModel, spec: Any, alpha: float | None, positions: str | None):
    from sims_core.steering.hooks import steer

    if spec is None:
        return contextlib.nullcontext()
    chosen = 1.0 if alpha is None else alpha  # a SteeringSet already applies its own alpha
    return steer(lm, spec, alpha=chosen, positions=positions)


def evaluate(
    lm: LanguageModel,
    prompts: Sequence[str],
    steering: Any,
    *,
    judge: Oracle,
    reference: Any = None,
    alpha: float | None = None,
    reference_alpha: float | None = None,
    positions: str | None = None,
    num_samples: int = 4,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
    batch_size: int = 32,
    system_prompt: str | None = None,
    controls: Sequence[str] = CONTROLS,
    control_temperature: float | None = None,
    ci: Literal["wilson", "bootstrap"] = "bootstrap",
    sanity: bool = True,
    progress: bool = True,
) -> Evaluation:
    """Compare ``steering`` against ``reference`` on held-out ``prompts``.

    Args:
        steering: a ``{layer: vector}`` mapping or a SteeringSet-like object (used with `steer`);
            None evaluates the unsteered model (a sanity baseline: about 0.5).
        judge: the oracle that decides each comparison (may differ from the training oracle).
        reference: the reference's steering (None: the base model; or the previous iteration's).
        alpha / reference_alpha: strengths passed to `steer` (None: 1, i.e. a SteeringSet at its
            own ``alpha``; vectors as given).
        num_samples: answers per prompt for each side; sample s of both sides uses the same seed.
        controls: any of ``"random_direction"`` (same-norm random vectors at the same layers) and
            ``"low_temperature"`` (unsteered at ``control_temperature``, default half of
            ``temperature``), each judged against the same reference answers.
        ci: ``"bootstrap"`` (resampling prompts, default) or ``"wilson"``.
        sanity: also run `judge_sanity` on the reference answers (first sample of each prompt).
    Returns:
        `Evaluation` whose ``summary`` has one row per condition (``steered`` first).
    """
    import pandas as pd

    from sims_core.generation import generate, validate_prompts

    prompts = validate_prompts(prompts)
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise ValueError(f"unknown controls {unknown}; choose from {list(CONTROLS)}")
    gen = dict(
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
        system_prompt=system_prompt,
        progress=progress,
    )
    notes: list[str] = []
    with _steering(lm, reference, reference_alpha, positions):
        ref = generate(lm, prompts, temperature=temperature, **gen)
    conditions: dict[str, list] = {}
    with _steering(lm, steering, alpha, positions):
        conditions["steered"] = generate(lm, prompts, temperature=temperature, **gen)
    if "random_direction" in controls:
        strength = 1.0 if alpha is None else alpha
        random_spec = random_direction_like(steering, lm, strength, seed, prompts) if steering is not None else None
        if random_spec is None:
            notes.append("random_direction control skipped: the steering's size could not be measured")
        else:
            default_pos = positions or getattr(steering, "default_positions", None)
            with _steering(lm, random_spec, 1.0, default_pos):
                conditions["random_direction"] = generate(lm, prompts, temperature=temperature, **gen)
    if "low_temperature" in controls:
        low = control_temperature if control_temperature is not None else temperature / 2
        conditions["low_temperature"] = generate(lm, prompts, temperature=low, **gen)
        notes.append(f"low_temperature control sampled at temperature {low:g}")

    rows = []
    for condition, outputs in conditions.items():
        flat_prompts, pairs, meta = [], [], []
        for i, (prompt, mine, theirs) in enumerate(zip(prompts, outputs, ref)):
            for s, (a, b) in enumerate(zip(mine, theirs)):
                flat_prompts.append(prompt)
                pairs.append([a.text, b.text])
                meta.append((i, s, a, b))
        scores = check_scores(judge.name, flat_prompts, pairs, judge.score(flat_prompts, pairs))
        for (i, s, a, b), (sa, sb) in zip(meta, scores):
            pref = 0.5 if a.text == b.text or sa == sb else float(sa > sb)
            rows.append(
                dict(
                    condition=condition,
                    prompt_index=i,
                    prompt=prompts[i],
                    sample=s,
                    seed=a.seed,
                    response=a.text,
                    reference=b.text,
                    response_tokens=a.num_tokens,
                    reference_tokens=b.num_tokens,
                    response_finish=a.finish_reason,
                    reference_finish=b.finish_reason,
                    score=sa,
                    reference_score=sb,
                    preference=pref,
                )
            )
    table = pd.DataFrame(rows)
    checked = (
        judge_sanity(judge, prompts, [r[0].text for r in ref], seed=seed) if sanity and len(prompts) >= 2 else None
    )
    if sanity and checked is None:
        notes.append("judge sanity skipped: it needs at least 2 prompts")
    summary = []
    for condition in conditions:
        part = table[table["condition"] == condition]
        rate, low_ci, high_ci = win_rate(part["preference"], method=ci, groups=list(part["prompt_index"]), seed=seed)
        lc = length_controlled_win_rate(part["preference"], part["response_tokens"], part["reference_tokens"])
        summary.append(
            dict(
                condition=condition,
                n=len(part),
                prompts=part["prompt_index"].nunique(),
                win_rate=rate,
                ci_low=low_ci,
                ci_high=high_ci,
                ci_method=ci,
                lc_win_rate=lc.rate,
                length_coef=lc.length_coef,
                ties=int((part["preference"] == 0.5).sum()),
                mean_score=float(part["score"].mean()),
                reference_mean_score=float(part["reference_score"].mean()),
                mean_length=float(part["response_tokens"].mean()),
                reference_mean_length=float(part["reference_tokens"].mean()),
                truncated=float((part["response_finish"] == "length").mean()),
                distinct_1=distinct_n(list(part["response"]), 1),
                distinct_2=distinct_n(list(part["response"]), 2),
                reference_distinct_1=distinct_n(list(part["reference"]), 1),
                reference_distinct_2=distinct_n(list(part["reference"]), 2),
                judge=judge.name,
                judge_matched_rate=checked.matched_rate if checked else float("nan"),
                judge_order_agreement=checked.order_agreement if checked else float("nan"),
            )
        )
    return Evaluation(table, pd.DataFrame(summary), checked, notes)
