"""Evaluation: does the steered model beat a baseline, and is the gain real?

Pieces (each usable alone; the flow calls them directly):

- `judge_answers`: one row per comparison of two sets of answers to the same prompts (steered
  vs the base model, iteration t vs t-1, best-of-N vs the base model, ...): both scores from
  one judge and the preference (1 / 0 / 0.5 tie). In its rows and in `summarize`'s, the first
  side is called ``response`` / "steered" and the second ``reference`` / "baseline", whatever
  they are; ``reference_answer`` is the prompt's written reference answer when there is one.
- `summarize`: one summary row for a set of comparisons, with prompt-bootstrap intervals for
  the win rate, the paired score effect and the length-controlled win rate, and a `verdict`.
- `win_rate`: share of comparisons the steered answer wins (ties count 1/2) with a 95% interval:
  Wilson's score interval on the mean preference (with ties it treats the mean as a binomial
  proportion, slightly conservative), or a percentile bootstrap, optionally resampling whole
  prompts (``groups``) because samples of one prompt are correlated.
- `paired_effect`: the mean score difference (steered minus baseline, same prompt and seed)
  with a percentile bootstrap interval resampling prompts. With a judge whose scores are
  comparable (`sims_core.oracles.base`), it uses the size of each difference, not only its sign,
  and so sees smaller effects than the win rate on the same comparisons.
- `length_controlled_win_rate`: in the spirit of AlpacaEval 2, a logistic model of the judge's
  preference ``logit P(steered wins) = b0 + b1 * tanh(dlen / sd(dlen))`` (``dlen`` = steered minus
  baseline length, in tokens), reported at zero length difference: ``sigmoid(b0)``;
  `length_controlled_interval` bootstraps it.
- `distinct_n`: unique n-grams / all n-grams over a set of answers (lower = more repetitive).
- `best_of_n`: K samples per prompt from the model as it is, the oracle keeps one: the same
  compute spent at inference instead of on steering (the "best-of-N" line).
- `evaluate`: held-out prompts answered by the steered policy and a baseline (the base model or
  a previous iteration, or cached answers) with the same per-sample seeds, several samples per
  prompt, judged by an oracle; plus two controls side by side: a random direction with the same
  norm as each steering vector, and the unsteered model at a lower temperature (steering that
  only makes text more "typical" looks like a gain and is not one). Returns plain pandas tables.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict, Unpack

import numpy as np
import torch

from sims_core.errors import UserError, check_keywords
from sims_core.generation import Generation, SamplingOverrides, SamplingParams
from sims_core.oracles.base import Oracle, OracleError, oracle_capabilities, score_candidates
from sims_core.oracles.sanity import JudgeSanity, judge_sanity

if TYPE_CHECKING:
    import pandas as pd

    from sims_core.models import LanguageModel
    from sims_core.steering.hooks import Positions

__all__ = [
    "COMPARISON_NUMBERS",
    "CONTROLS",
    "VERDICTS",
    "BestOfN",
    "BootstrapOptions",
    "Comparison",
    "Evaluation",
    "LengthControlledWinRate",
    "best_of_n",
    "compare",
    "distinct_n",
    "edit_norms",
    "evaluate",
    "judge_answers",
    "length_controlled_interval",
    "length_controlled_win_rate",
    "paired_effect",
    "random_direction_like",
    "sample_conditions",
    "summarize",
    "wilson_interval",
    "win_rate",
]

Answer = Generation | str

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


class BootstrapOptions(TypedDict, total=False):
    """The percentile bootstrap's keywords, taken as ``**bootstrap: Unpack[BootstrapOptions]`` by
    `win_rate` (``method="bootstrap"``), `paired_effect` and `length_controlled_interval`:
    ``confidence`` (0.95) of the interval, ``n_boot`` (2000) resamples and the ``seed`` (0) of
    the generator that draws them."""

    confidence: float
    n_boot: int
    seed: int


@dataclass(frozen=True)
class _Bootstrap:
    """The prompt bootstrap shared by the win rate, the paired effect and the length-controlled
    win rate; its fields are `BootstrapOptions` with their defaults."""

    confidence: float = 0.95
    n_boot: int = 2000
    seed: int = 0

    @classmethod
    def of(cls, options: BootstrapOptions) -> _Bootstrap:
        check_keywords(options, BootstrapOptions, "bootstrap options")
        return cls(**options)

    def resamples(self, groups: Sequence[Any] | None, n: int, what: str) -> tuple[np.ndarray, int, np.ndarray]:
        """``(inverse, n_groups, picks)``: ``inverse[i]`` is item i's group number (groups
        numbered in the order of their text; with no ``groups`` every item is its own group, in
        order); ``picks`` is ``[n_boot, n_groups]`` group numbers drawn with replacement, the
        same for the same seed and groups whatever the statistic."""
        _z(self.confidence)
        if isinstance(self.n_boot, bool) or not isinstance(self.n_boot, int) or self.n_boot < 1:
            raise UserError(f"n_boot must be a positive integer (bootstrap resamples), got {self.n_boot!r}")
        if groups is None:
            inverse, n_groups = np.arange(n), n
        else:
            if len(groups) != n:
                raise ValueError(f"groups has {len(groups)} entries for {n} {what}")
            _, inverse = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
            inverse = inverse.reshape(-1)
            n_groups = int(inverse.max()) + 1
        picks = np.random.default_rng(self.seed).integers(0, n_groups, size=(self.n_boot, n_groups))
        return inverse, n_groups, picks

    def interval(self, stats: np.ndarray) -> tuple[float, float]:
        """The percentile interval of the resampled statistics."""
        tail = (1 - self.confidence) / 2
        return float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail))


def _ratio_stats(values: np.ndarray, inverse: np.ndarray, n_groups: int, picks: np.ndarray) -> np.ndarray:
    """Per resample, the mean of ``values`` over every item of the picked groups."""
    sums = np.bincount(inverse, weights=values, minlength=n_groups)
    counts = np.bincount(inverse, minlength=n_groups).astype(float)
    return sums[picks].sum(axis=1) / counts[picks].sum(axis=1)


def win_rate(
    prefs: Sequence[float],
    *,
    method: Literal["wilson", "bootstrap"] = "wilson",
    groups: Sequence[Any] | None = None,
    **bootstrap: Unpack[BootstrapOptions],
) -> tuple[float, float, float]:
    """(rate, low, high): the mean preference (ties = 0.5) and its confidence interval.

    ``method="wilson"``: Wilson score interval with n = number of comparisons (of the
    `BootstrapOptions`, only ``confidence`` applies).
    ``method="bootstrap"``: percentile bootstrap (seeded); with ``groups`` (e.g. the prompt of
    each comparison) whole groups are resampled, which widens the interval honestly when several
    samples share a prompt.
    """
    values = _prefs(prefs)
    rate = float(values.mean())
    boot = _Bootstrap.of(bootstrap)
    if method == "wilson":
        low, high = wilson_interval(rate, values.size, boot.confidence)
        return rate, low, high
    if method != "bootstrap":
        raise ValueError(f"method must be 'wilson' or 'bootstrap', got {method!r}")
    inverse, n_groups, picks = boot.resamples(groups, values.size, "preferences")
    return (rate, *boot.interval(_ratio_stats(values, inverse, n_groups, picks)))


def paired_effect(
    scores: Sequence[float],
    baseline_scores: Sequence[float],
    groups: Sequence[Any] | None = None,
    **bootstrap: Unpack[BootstrapOptions],
) -> tuple[float, float, float]:
    """(mean, low, high): the mean paired difference ``scores - baseline_scores`` (each pair:
    the same prompt and sample seed on both sides) and its percentile bootstrap interval.

    With ``groups`` (the prompt of each pair) whole groups are resampled: each resample draws
    as many groups as there are, with replacement, and takes the mean difference over all pairs
    of the drawn groups. Without, pairs are resampled one by one. Scores must be finite.
    """
    a = np.asarray(list(scores), dtype=float)
    b = np.asarray(list(baseline_scores), dtype=float)
    if a.ndim != 1 or a.size == 0 or a.shape != b.shape:
        raise UserError(f"paired_effect needs two equally long, non-empty lists of scores, got {a.size} and {b.size}")
    diff = a - b
    if not np.all(np.isfinite(diff)):
        raise UserError("paired_effect needs finite scores; leave out the pairs with an infinite or NaN score first")
    boot = _Bootstrap.of(bootstrap)
    inverse, n_groups, picks = boot.resamples(groups, diff.size, "score pairs")
    return (float(diff.mean()), *boot.interval(_ratio_stats(diff, inverse, n_groups, picks)))


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


def _length_features(diff: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``tanh(dlen / sd(dlen))`` per resample (rows of ``weights``: how often each comparison
    was drawn), with the weighted population standard deviation; 0 where it is 0."""
    total = weights.sum(axis=1, keepdims=True)
    mean = (weights * diff).sum(axis=1, keepdims=True) / total
    scale = np.sqrt((weights * (diff - mean) ** 2).sum(axis=1, keepdims=True) / total)
    safe = np.where(scale > 0, scale, 1.0)
    return np.where(scale > 0, np.tanh(diff / safe), 0.0)


def _fit_logistic_weighted(
    feature: np.ndarray, y: np.ndarray, weights: np.ndarray, l2: float, iterations: int = 100, tol: float = 1e-9
) -> np.ndarray:
    """`_fit_logistic` on ``[1, feature]`` for many resamples at once: row r of ``feature`` and
    ``weights`` is one resample (``weights`` = how often each comparison was drawn, so the fit
    equals the unweighted fit on the drawn rows). A resample stops once its Newton step is
    below ``tol`` (its rate is then exact to ~tol/4); a step that raises the loss by more than
    rounding is halved. Returns ``[resamples, 2]`` coefficients."""
    beta = np.zeros((feature.shape[0], 2))
    active = np.ones(feature.shape[0], dtype=bool)

    def loss(b: np.ndarray, f: np.ndarray, w: np.ndarray) -> np.ndarray:
        z = b[:, :1] + b[:, 1:] * f
        return (w * (np.logaddexp(0, z) - y * z)).sum(axis=1) + 0.5 * l2 * (b * b).sum(axis=1)

    for _ in range(iterations):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        b, f, w = beta[idx], feature[idx], weights[idx]
        z = b[:, :1] + b[:, 1:] * f
        p = 1 / (1 + np.exp(-z))
        r = w * (p - y)
        h = w * p * (1 - p)
        g0 = r.sum(axis=1) + l2 * b[:, 0]
        g1 = (r * f).sum(axis=1) + l2 * b[:, 1]
        h00 = h.sum(axis=1) + l2
        h01 = (h * f).sum(axis=1)
        h11 = (h * f * f).sum(axis=1) + l2
        det = h00 * h11 - h01 * h01
        step = np.column_stack([(h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det])
        current = loss(b, f, w)
        slack = 1e-12 * (1 + np.abs(current))  # rounding in a sum over the comparisons
        t = np.ones(idx.size)
        while True:
            worse = (loss(b - t[:, None] * step, f, w) > current + slack) & (t > 1e-8)
            if not worse.any():
                break
            t = np.where(worse, t / 2, t)
        beta[idx] = b - t[:, None] * step
        active[idx] = np.abs(step).max(axis=1) >= tol
    return beta


def length_controlled_win_rate(
    prefs: Sequence[float], steered_lengths: Sequence[float], reference_lengths: Sequence[float], *, l2: float = 1e-3
) -> LengthControlledWinRate:
    """Win rate with the judge's length preference modelled out (see the module docstring).
    ``l2`` is a small ridge penalty that keeps the fit finite when one side always wins.

    Limits: it removes only the part of the judge's preference that a smooth function of the
    length difference explains, and it is fitted on the comparisons it then reports on. On a
    few hundred comparisons it is the same data refit, not a second confirmation of the raw
    win rate: read it with its interval (`length_controlled_interval`), which is wider than
    the raw rate's. alpaca_eval fits a richer model with cross-validation and regularisation,
    which shrinks the rate towards 50% on small sets; this plain fit does not, so where the
    steered side is much longer or shorter the rate extrapolates and can overstate a gain.
    """
    y, diff = _lc_inputs(prefs, steered_lengths, reference_lengths)
    scale = float(diff.std())
    feature = np.tanh(diff / scale) if scale > 0 else np.zeros_like(diff)
    x = np.column_stack([np.ones_like(y), feature])
    beta = _fit_logistic(x, y, l2)
    return LengthControlledWinRate(
        float(1 / (1 + np.exp(-beta[0]))), float(y.mean()), float(beta[0]), float(beta[1]), scale, int(y.size)
    )


def _lc_inputs(
    prefs: Sequence[float], steered_lengths: Sequence[float], reference_lengths: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    y = _prefs(prefs)
    a = np.asarray(list(steered_lengths), dtype=float)
    b = np.asarray(list(reference_lengths), dtype=float)
    if a.shape != y.shape or b.shape != y.shape:
        raise ValueError(
            f"need one steered and one reference length per preference ({y.size}), got {a.size} and {b.size}"
        )
    return y, a - b


def length_controlled_interval(
    prefs: Sequence[float],
    steered_lengths: Sequence[float],
    reference_lengths: Sequence[float],
    *,
    groups: Sequence[Any] | None = None,
    l2: float = 1e-3,
    **bootstrap: Unpack[BootstrapOptions],
) -> tuple[float, float]:
    """(low, high): percentile bootstrap interval of `length_controlled_win_rate`. Each
    resample draws whole ``groups`` (prompts) as `win_rate` does, with the same generator, and
    refits the model (length scale included) on the drawn comparisons."""
    y, diff = _lc_inputs(prefs, steered_lengths, reference_lengths)
    boot = _Bootstrap.of(bootstrap)
    inverse, n_groups, picks = boot.resamples(groups, y.size, "preferences")
    rates = []
    for start in range(0, boot.n_boot, 256):  # bounded memory: [256, comparisons] arrays
        chunk = picks[start : start + 256]
        drawn = np.zeros((chunk.shape[0], n_groups))
        np.add.at(drawn, (np.repeat(np.arange(chunk.shape[0]), n_groups), chunk.reshape(-1)), 1.0)
        weights = drawn[:, inverse]
        beta = _fit_logistic_weighted(_length_features(diff, weights), y, weights, l2)
        rates.append(1 / (1 + np.exp(-beta[:, 0])))
    return boot.interval(np.concatenate(rates))


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
    lm: LanguageModel, steering: Any, alpha: float, prompts: Sequence[str], positions: Positions | None = None
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


def _text(answer: Answer) -> str:
    return answer.text if isinstance(answer, Generation) else answer


def _length(answer: Answer) -> int:
    return answer.num_tokens if isinstance(answer, Generation) else len(answer.split())


def _samples(answers: object, n_prompts: int, name: str) -> list[list[Answer]]:
    """``answers`` as one list of samples per prompt: each entry is an answer (a `Generation`
    or a string) or a list of them."""
    if isinstance(answers, str) or not isinstance(answers, Sequence):
        raise UserError(f"{name} must be a list with one entry per prompt, got {type(answers).__name__}")
    if len(answers) != n_prompts:
        raise UserError(f"{name} has {len(answers)} entries for {n_prompts} prompts; give one per prompt")
    out: list[list[Answer]] = []
    for i, entry in enumerate(answers):
        group = [entry] if isinstance(entry, (str, Generation)) else entry
        if not isinstance(group, Sequence) or len(group) == 0:
            raise UserError(f"{name}[{i}] must be an answer (a Generation or a string) or a non-empty list of them")
        for j, answer in enumerate(group):
            if not isinstance(answer, (str, Generation)):
                raise UserError(f"{name}[{i}][{j}] is {type(answer).__name__}; an answer is a Generation or a string")
        out.append(list(group))
    return out


def _check_judge(judge: Oracle, references: Sequence[str] | None, n_prompts: int) -> None:
    """Refuse, before any work, a judge that cannot judge pairs or lacks its references."""
    name = getattr(judge, "name", type(judge).__name__)
    capabilities = oracle_capabilities(judge)
    if not capabilities["can_judge"]:
        raise OracleError(
            f"oracle {name!r} cannot judge two answers (its scores of a pair are symmetric, always a tie); "
            "use it to rank samples and judge with another oracle, e.g. 'reference', 'embedding' or 'pmi'"
        )
    if capabilities["needs_reference"] and references is None:
        raise OracleError(f"judge {name!r} needs one reference answer per prompt; pass references=")
    if references is not None and (isinstance(references, str) or len(references) != n_prompts):
        got = "a single string" if isinstance(references, str) else f"{len(references)} entries"
        raise UserError(f"references has {got} for {n_prompts} prompts; give one reference answer per prompt")


def judge_answers(
    judge: Oracle,
    prompts: Sequence[str],
    answers: Sequence[Answer | Sequence[Answer]],
    baseline_answers: Sequence[Answer | Sequence[Answer]],
    references: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Judge ``answers`` against ``baseline_answers`` on the same prompts: one row per pair.

    ``answers[i]`` and ``baseline_answers[i]`` are prompt i's answer, or lists of its samples
    (sample s of one side is compared with sample s of the other: give both sides the same
    sample seeds); an answer is a `Generation` or a string. Every pair is one candidate group
    ``[answer, baseline answer]`` of a single ``judge.score`` call, with ``references`` passed
    when the judge ``needs_reference``. A judge that cannot judge a pair (``can_judge`` False)
    is refused. Nothing here assumes the baseline is the base model: iteration t against t-1,
    or best-of-N against the base model, are judged the same way.

    Columns: ``prompt_index``, ``prompt``, ``sample``, ``seed`` (the answer's sample seed, None
    for strings), ``response`` / ``reference`` (the two texts: the answer and the baseline's),
    ``response_tokens`` / ``reference_tokens`` (token counts, or word counts of strings),
    ``response_finish`` / ``reference_finish`` ("stop", "length" or None), ``score`` /
    ``reference_score``, ``preference`` (1 the answer wins, 0 it loses, 0.5 a tie: equal texts
    or equal scores), and ``reference_answer`` when ``references`` are given.
    """
    import pandas as pd

    from sims_core.generation import validate_prompts

    prompts = validate_prompts(prompts)
    _check_judge(judge, references, len(prompts))
    mine = _samples(answers, len(prompts), "answers")
    theirs = _samples(baseline_answers, len(prompts), "baseline_answers")
    flat_prompts: list[str] = []
    pairs: list[list[str]] = []
    flat_refs: list[str] = []
    meta: list[tuple[int, int, Answer, Answer]] = []
    for i, (prompt, a_side, b_side) in enumerate(zip(prompts, mine, theirs)):
        if len(a_side) != len(b_side):
            raise UserError(
                f"prompt {i} has {len(a_side)} answers but {len(b_side)} baseline answers; "
                "each sample needs its counterpart (same prompt, same seed)"
            )
        for s, (a, b) in enumerate(zip(a_side, b_side)):
            flat_prompts.append(prompt)
            pairs.append([_text(a), _text(b)])
            if references is not None:
                flat_refs.append(references[i])
            meta.append((i, s, a, b))
    scores = score_candidates(judge, flat_prompts, pairs, flat_refs if references is not None else None)
    rows = []
    for (i, s, a, b), (text_a, text_b), (sa, sb) in zip(meta, pairs, scores):
        row = dict(
            prompt_index=i,
            prompt=prompts[i],
            sample=s,
            seed=a.seed if isinstance(a, Generation) else None,
            response=text_a,
            reference=text_b,
            response_tokens=_length(a),
            reference_tokens=_length(b),
            response_finish=a.finish_reason if isinstance(a, Generation) else None,
            reference_finish=b.finish_reason if isinstance(b, Generation) else None,
            score=sa,
            reference_score=sb,
            preference=0.5 if text_a == text_b or sa == sb else float(sa > sb),
        )
        if references is not None:
            row["reference_answer"] = references[i]
        rows.append(row)
    return pd.DataFrame(rows)


VERDICTS = ("steered better", "no measured difference", "steered worse")
# The headline numbers of a `summarize` row: the win rate and the paired score effect, each with
# its interval, and the number of comparisons.
COMPARISON_NUMBERS = ("win_rate", "ci_low", "ci_high", "effect", "effect_ci_low", "effect_ci_high", "n")
_REQUIRED = ("preference", "score", "reference_score", "response_tokens", "reference_tokens")


def _verdict(basis: str, value: float, low: float, high: float, null: float, confidence: float) -> str:
    label = VERDICTS[0] if low > null else VERDICTS[2] if high < null else VERDICTS[1]
    what = "paired score effect" if basis == "paired_effect" else "win rate"
    shown = (lambda v: f"{v:+.4g}") if basis == "paired_effect" else (lambda v: f"{v:.3f}")
    relation = "excludes" if label != VERDICTS[1] else "includes"
    return f"{label}: {what} {shown(value)} ({confidence:.0%} CI {shown(low)} to {shown(high)}) {relation} {null:g}"


def summarize(
    rows: pd.DataFrame,
    *,
    seed: int,
    confidence: float = 0.95,
    n_boot: int = 2000,
    comparable_scores: bool = True,
    ci: Literal["wilson", "bootstrap"] = "bootstrap",
) -> dict[str, Any]:
    """One summary row for the comparisons in ``rows`` (as `judge_answers` makes them).

    Intervals resample whole prompts (the ``prompt`` column, else ``prompt_index``), the same
    ``n_boot`` resamples (seeded by ``seed``) for all three numbers:

    - ``win_rate`` in [``ci_low``, ``ci_high``] (``ci="wilson"``: Wilson's interval instead);
    - ``effect``: the paired effect, mean of ``score - reference_score``, in
      [``effect_ci_low``, ``effect_ci_high``] (`paired_effect`), over the ``effect_n``
      comparisons whose scores are both finite (the others are counted, not used);
    - ``lc_win_rate`` in [``lc_ci_low``, ``lc_ci_high``] (see `length_controlled_win_rate` for
      what it can and cannot show).

    ``verdict`` says which number the verdict rests on and what it is: the paired effect when
    the judge gives ``comparable_scores`` (see `sims_core.oracles.base`; the flag comes from the
    judge) and at least one pair has finite scores, else the win rate; "steered better" /
    "steered worse" when the interval excludes 0 (50%) on that side, otherwise "no measured
    difference". ``verdict_basis`` is ``"paired_effect"`` or ``"win_rate"``. "Steered" is the
    first side of the comparison, whatever it is (a steered model, iteration t, best-of-N).
    Also: counts, ties, mean scores and lengths of both sides, the truncated share (answers cut
    at the token limit, when the rows know it) and distinct-1/2 of both sides.
    """
    missing = [c for c in _REQUIRED if c not in rows.columns]
    group_column = "prompt" if "prompt" in rows.columns else "prompt_index" if "prompt_index" in rows.columns else None
    if missing or group_column is None:
        missing += [] if group_column else ["prompt (or prompt_index)"]
        raise UserError(f"rows lack the columns {', '.join(missing)}; make them with judge_answers")
    if len(rows) == 0:
        raise UserError("rows is empty: there is no comparison to summarize")
    groups = rows[group_column].astype(str).tolist()
    prefs = rows["preference"].to_numpy(dtype=float)
    bootstrap = BootstrapOptions(confidence=confidence, n_boot=n_boot, seed=seed)  # one resampling for all three
    rate, low, high = win_rate(prefs, method=ci, groups=groups, **bootstrap)
    lengths = (rows["response_tokens"].to_numpy(dtype=float), rows["reference_tokens"].to_numpy(dtype=float))
    lc = length_controlled_win_rate(prefs, *lengths)
    lc_low, lc_high = length_controlled_interval(prefs, *lengths, groups=groups, **bootstrap)
    score = rows["score"].to_numpy(dtype=float)
    baseline = rows["reference_score"].to_numpy(dtype=float)
    finite = np.isfinite(score) & np.isfinite(baseline)
    if finite.any():
        kept = [g for g, f in zip(groups, finite) if f]
        effect, effect_low, effect_high = paired_effect(score[finite], baseline[finite], kept, **bootstrap)
    else:
        effect = effect_low = effect_high = math.nan
    if comparable_scores and finite.any():
        basis, verdict = "paired_effect", _verdict("paired_effect", effect, effect_low, effect_high, 0.0, confidence)
    else:
        basis, verdict = "win_rate", _verdict("win_rate", rate, low, high, 0.5, confidence)

    def distinct(column: str, n: int) -> float:
        return distinct_n(rows[column].astype(str).tolist(), n) if column in rows.columns else math.nan

    finish = rows["response_finish"] if "response_finish" in rows.columns else None
    return dict(
        n=int(len(rows)),
        prompts=int(rows[group_column].nunique()),
        win_rate=rate,
        ci_low=low,
        ci_high=high,
        ci_method=ci,
        lc_win_rate=lc.rate,
        lc_ci_low=lc_low,
        lc_ci_high=lc_high,
        length_coef=lc.length_coef,
        effect=effect,
        effect_ci_low=effect_low,
        effect_ci_high=effect_high,
        effect_n=int(finite.sum()),
        verdict=verdict,
        verdict_basis=basis,
        confidence=confidence,
        ties=int((prefs == 0.5).sum()),
        mean_score=float(np.mean(score[np.isfinite(score)])) if np.isfinite(score).any() else math.nan,
        reference_mean_score=float(np.mean(baseline[np.isfinite(baseline)]))
        if np.isfinite(baseline).any()
        else math.nan,
        mean_length=float(lengths[0].mean()),
        reference_mean_length=float(lengths[1].mean()),
        truncated=float((finish[finish.notna()] == "length").mean())
        if finish is not None and finish.notna().any()
        else math.nan,
        distinct_1=distinct("response", 1),
        distinct_2=distinct("response", 2),
        reference_distinct_1=distinct("reference", 1),
        reference_distinct_2=distinct("reference", 2),
    )


@dataclass
class BestOfN:
    """Result of `best_of_n`: per prompt the chosen answer, all K candidates, their oracle
    scores and the index of the chosen one (the first of the highest scores)."""

    chosen: list[Generation]
    candidates: list[list[Generation]]
    scores: list[list[float]]
    index: list[int]


def best_of_n(
    lm: LanguageModel,
    prompts: Sequence[str],
    oracle: Oracle,
    *,
    k: int,
    sampling: SamplingParams | None = None,
    seed: int = 0,
    references: Sequence[str] | None = None,
    system_prompt: str | None = None,
    progress: bool = True,
    **overrides: Unpack[SamplingOverrides],
) -> BestOfN:
    """Best-of-N: ``k`` samples per prompt from ``lm`` as it is (unsteered unless the caller
    steers it), and the one ``oracle`` scores highest (the first on a tie) is kept.

    The inference-time alternative to steering with the same oracle: compare `BestOfN.chosen`
    with the base model's answers through `judge_answers` and `summarize`. Give it a ``seed``
    other than the baseline's: with the same seed its first candidate is the baseline's own
    first sample. ``references`` go to an oracle that needs them; ``sampling`` and the keyword
    arguments work as in `sims_core.generation.generate`.
    """
    from sims_core.generation import generate, validate_prompts

    prompts = validate_prompts(prompts)
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise UserError(f"k must be an integer >= 2 (samples to choose from per prompt), got {k!r}")
    params = SamplingParams.resolve(sampling, **overrides)
    candidates = generate(
        lm, prompts, num_samples=k, sampling=params, seed=seed, system_prompt=system_prompt, progress=progress
    )
    scores = score_candidates(oracle, prompts, [[g.text for g in row] for row in candidates], references)
    index = [int(np.argmax(row)) for row in scores]
    return BestOfN([row[j] for row, j in zip(candidates, index)], candidates, scores, index)


@dataclass(frozen=True)
class Comparison:
    """One condition to judge: ``answers`` against ``baseline`` on ``prompts`` (sample s of one
    side against sample s of the other), with the prompts' ``references`` for judges that need them."""

    condition: str
    prompts: Sequence[str]
    answers: Sequence[Sequence[Answer]]
    baseline: Sequence[Sequence[Answer]]
    references: Sequence[str] | None = None


def sample_conditions(
    lm: LanguageModel,
    prompts: Sequence[str],
    steering: Any,
    *,
    controls: Sequence[str] = CONTROLS,
    num_samples: int = 1,
    sampling: SamplingParams | None = None,
    seed: int = 0,
    alpha: float | None = None,
    positions: Positions | None = None,
    control_temperature: float | None = None,
    system_prompt: str | None = None,
    progress: bool = True,
    unsteered: Sequence[Sequence[Generation]] | None = None,
) -> tuple[dict[str, list[list[Generation]]], list[str]]:
    """The answers of the steered model (``"steered"``) and of each control, all with the same
    per-sample seeds: ``"random_direction"`` (random vectors of the steering's size at its
    layers) and ``"low_temperature"`` (unsteered at ``control_temperature``, default half the
    temperature). Returns ``({condition: answers}, notes)``; a control that cannot be built is
    skipped with a note.

    ``unsteered``: the base model's answers to ``prompts`` with the same sampling, seed and
    ``num_samples`` (the eval phase's cached baseline). When the steering is off (strength 0,
    as strength selection leaves it when no alpha keeps the text fluent) the steered model and a
    random direction of its size (zero) are the base model, so these answers stand for both
    instead of being sampled again."""
    from sims_core.generation import generate

    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise UserError(f"unknown controls {unknown}; choose from {list(CONTROLS)}")
    params = sampling or SamplingParams()
    gen: dict[str, Any] = dict(num_samples=num_samples, seed=seed, system_prompt=system_prompt, progress=progress)
    notes: list[str] = []
    conditions: dict[str, list[list[Generation]]] = {}
    if unsteered is not None and _strength(steering, alpha) == 0:
        base = [list(row) for row in unsteered]
        if len(base) != len(prompts) or any(
            len(row) != num_samples or not all(isinstance(g, Generation) for g in row) for row in base
        ):
            raise UserError(
                f"unsteered must hold {num_samples} Generation(s) for each of the {len(prompts)} prompts, "
                f"got {len(base)} entries holding {sorted({len(row) for row in base})} answer(s) each"
            )
        notes.append("the steering is off (strength 0): the steered answers are the base model's, not sampled again")
        conditions["steered"] = base
        if "random_direction" in controls:
            conditions["random_direction"] = base
        controls = [c for c in controls if c != "random_direction"]
    else:
        with _steering(lm, steering, alpha, positions):
            conditions["steered"] = generate(lm, prompts, sampling=params, **gen)
    if "random_direction" in controls:
        strength = _alpha(alpha)
        random_spec = random_direction_like(steering, lm, strength, seed, prompts) if steering is not None else None
        if random_spec is None:
            notes.append("random_direction control skipped: the steering's size could not be measured")
        else:
            default_pos = positions or getattr(steering, "default_positions", None)
            with _steering(lm, random_spec, 1.0, default_pos):
                conditions["random_direction"] = generate(lm, prompts, sampling=params, **gen)
    if "low_temperature" in controls:
        low = control_temperature if control_temperature is not None else params.temperature / 2
        conditions["low_temperature"] = generate(lm, prompts, sampling=params.override(temperature=low), **gen)
        notes.append(f"low_temperature control sampled at temperature {low:g}")
    return conditions, notes


def compare(
    judge: Oracle,
    comparisons: Sequence[Comparison],
    *,
    seed: int = 0,
    confidence: float = 0.95,
    n_boot: int = 2000,
    ci: Literal["wilson", "bootstrap"] = "bootstrap",
    sanity: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame, JudgeSanity | None, list[str]]:
    """Judge every comparison (`judge_answers`) and summarize each (`summarize`): returns the
    rows (with a ``condition`` column), one summary row per condition (in the order given, with
    the judge's name and, when ``sanity``, its sanity figures measured on the first
    comparison's baseline answers), the `JudgeSanity` and notes."""
    import pandas as pd

    parts, notes = [], []
    for item in comparisons:
        part = judge_answers(judge, item.prompts, item.answers, item.baseline, item.references)
        part.insert(0, "condition", item.condition)
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    checked = None
    if sanity and comparisons:
        first = comparisons[0]
        if len(first.prompts) >= 2:
            baseline_texts = [_text(row[0]) for row in _samples(first.baseline, len(first.prompts), "baseline")]
            checked = judge_sanity(judge, first.prompts, baseline_texts, seed=seed, references=first.references)
        else:
            notes.append("judge sanity skipped: it needs at least 2 prompts")
    comparable = oracle_capabilities(judge)["comparable_scores"]
    summary = []
    for item in comparisons:
        part = table[table["condition"] == item.condition]
        summary.append(
            dict(
                condition=item.condition,
                **summarize(part, seed=seed, confidence=confidence, n_boot=n_boot, comparable_scores=comparable, ci=ci),
                judge=judge.name,
                judge_matched_rate=checked.matched_rate if checked else float("nan"),
                judge_order_agreement=checked.order_agreement if checked else float("nan"),
            )
        )
    return table, pd.DataFrame(summary), checked, notes


def _alpha(alpha: float | None) -> float:
    """The alpha the conditions are sampled at: the caller's, 1 when None (a SteeringSet applies
    its own alpha on top)."""
    return 1.0 if alpha is None else float(alpha)


def _strength(spec: Any, alpha: float | None) -> float:
    """The strength ``_steering`` applies: `_alpha` times a SteeringSet's own alpha; 0 for no
    steering."""
    return 0.0 if spec is None else _alpha(alpha) * float(getattr(spec, "alpha", 1.0))


def _steering(lm: LanguageModel, spec: Any, alpha: float | None, positions: Positions | None):
    from sims_core.steering.hooks import steer

    if spec is None:
        return contextlib.nullcontext()
    return steer(lm, spec, alpha=_alpha(alpha), positions=positions)


def evaluate(
    lm: LanguageModel,
    prompts: Sequence[str],
    steering: Any,
    *,
    judge: Oracle,
    reference: Any = None,
    alpha: float | None = None,
    reference_alpha: float | None = None,
    positions: Positions | None = None,
    num_samples: int = 4,
    sampling: SamplingParams | None = None,
    seed: int = 0,
    system_prompt: str | None = None,
    references: Sequence[str] | None = None,
    baseline_answers: Sequence[Sequence[Answer]] | None = None,
    controls: Sequence[str] = CONTROLS,
    control_temperature: float | None = None,
    ci: Literal["wilson", "bootstrap"] = "bootstrap",
    confidence: float = 0.95,
    n_boot: int = 2000,
    sanity: bool = True,
    progress: bool = True,
    **overrides: Unpack[SamplingOverrides],
) -> Evaluation:
    """Compare ``steering`` against a baseline on held-out ``prompts``.

    Args:
        steering: a ``{layer: vector}`` mapping or a SteeringSet-like object (used with `steer`);
            None evaluates the unsteered model (a sanity baseline: about 0.5).
        judge: the oracle that decides each comparison (may differ from the training oracle;
            one with ``can_judge`` False is refused before anything is generated).
        reference: the baseline's steering (None: the base model; or the previous iteration's).
        alpha / reference_alpha: strengths passed to `steer` (None: 1, i.e. a SteeringSet at its
            own ``alpha``; vectors as given).
        num_samples: answers per prompt for each side; sample s of both sides uses the same seed.
        sampling: `SamplingParams` of every side (default ``SamplingParams()``); the keyword
            arguments ``max_new_tokens``, ``temperature``, ``top_p``, ``batch_size`` override it.
        references: one reference answer per prompt, passed to a judge that ``needs_reference``
            (and kept in the rows as ``reference_answer``).
        baseline_answers: the baseline's answers already generated (``num_samples`` per prompt,
            with the same ``seed`` and sampling, e.g. cached base-model answers): they are used
            instead of generating them again. Not together with ``reference``.
        controls: any of ``"random_direction"`` (same-norm random vectors at the same layers) and
            ``"low_temperature"`` (unsteered at ``control_temperature``, default half of
            the temperature), each judged against the same baseline answers.
        ci, confidence, n_boot: the win rate's interval (``"bootstrap"`` resampling prompts, or
            ``"wilson"``), its level and the bootstrap resamples (see `summarize`).
        sanity: also run `judge_sanity` on the baseline answers (first sample of each prompt).
    Returns:
        `Evaluation` whose ``rows`` are `judge_answers` rows with a ``condition`` column and
        whose ``summary`` has one `summarize` row per condition (``steered`` first) with the
        judge's name and sanity figures.
    """

    from sims_core.generation import generate, validate_prompts

    prompts = validate_prompts(prompts)
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise ValueError(f"unknown controls {unknown}; choose from {list(CONTROLS)}")
    _check_judge(judge, references, len(prompts))
    # the baseline and every condition are sampled alike: sample s of one side pairs with sample s of the other
    alike: dict[str, Any] = dict(
        num_samples=num_samples,
        sampling=SamplingParams.resolve(sampling, **overrides),
        seed=seed,
        system_prompt=system_prompt,
        progress=progress,
    )
    ref: Sequence[Sequence[Answer]]
    if baseline_answers is not None:
        if reference is not None:
            raise UserError(
                "give either reference (the steering that generates the baseline) or baseline_answers, not both"
            )
        ref = _samples(baseline_answers, len(prompts), "baseline_answers")
        short = [i for i, row in enumerate(ref) if len(row) != num_samples]
        if short:
            raise UserError(
                f"baseline_answers[{short[0]}] has {len(ref[short[0]])} answers; num_samples={num_samples} needs "
                f"{num_samples} per prompt"
            )
    if baseline_answers is None:
        with _steering(lm, reference, reference_alpha, positions):
            ref = generate(lm, prompts, **alike)
    conditions, notes = sample_conditions(
        lm,
        prompts,
        steering,
        controls=controls,
        alpha=alpha,
        positions=positions,
        control_temperature=control_temperature,
        **alike,
    )
    comparisons = [Comparison(name, prompts, answers, ref, references) for name, answers in conditions.items()]
    table, summary, checked, more = compare(
        judge, comparisons, seed=seed, confidence=confidence, n_boot=n_boot, ci=ci, sanity=sanity
    )
    return Evaluation(table, summary, checked, notes + more)
