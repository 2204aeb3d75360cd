"""Judge sanity check: is the oracle able to tell anything at all?

Two figures, both 1.0 for a perfect judge and revealing for a broken one:

- ``matched_rate``: how often it prefers the answer written for a prompt over an answer written
  for another prompt (chance: 0.5; a judge below ~0.8 here cannot rank finer differences).
- ``order_agreement``: how often its decision survives swapping the two answers' order. For a
  pairwise judge (one with ``judge_pairs``) this is measured on the raw single-order judgments,
  before the both-orders averaging; ``first_position_rate`` is then how often it picks whichever
  answer is shown first (a judge that always says "A" has 1.0 and agreement 0.0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from sims_core.oracles.base import Oracle, OracleError, PairwiseJudge, score_candidates

__all__ = ["JudgeSanity", "judge_sanity"]


@dataclass(frozen=True)
class JudgeSanity:
    """Results of `judge_sanity` (rates in [0, 1]; ties count as half)."""

    oracle: str
    n: int
    matched_rate: float
    order_agreement: float
    first_position_rate: float | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _pref(a: float, b: float) -> float:
    return 1.0 if a > b else 0.0 if a < b else 0.5


def judge_sanity(
    oracle: Oracle,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    seed: int = 0,
    references: Sequence[str] | None = None,
) -> JudgeSanity:
    """Check ``oracle`` on prompts with one answer each (``answers[i]`` answers ``prompts[i]``).
    Each prompt's answer is set against another prompt's answer, chosen by a seeded cyclic
    shift so no prompt meets its own answer. ``references`` (one reference answer per prompt)
    go to a judge that needs them."""
    n = len(prompts)
    if n < 2 or len(answers) != n:
        raise OracleError(
            f"judge_sanity needs >= 2 prompts and one answer per prompt, got {n} prompts and {len(answers)} answers"
        )
    shift = int(np.random.default_rng(seed).integers(1, n))
    others = [answers[(i + shift) % n] for i in range(n)]
    prompts, own = list(prompts), list(answers)
    name = getattr(oracle, "name", type(oracle).__name__)
    if isinstance(oracle, PairwiseJudge):
        forward = oracle.judge_pairs(prompts, own, others)  # P(own better), own shown first
        backward = oracle.judge_pairs(prompts, others, own)  # P(other better), own shown second
        matched = [_pref((f + 1 - b) / 2, 0.5) for f, b in zip(forward, backward)]
        agree = [1.0 if (f > 0.5) == (b < 0.5) and f != 0.5 and b != 0.5 else 0.0 for f, b in zip(forward, backward)]
        first = [float(p > 0.5) for p in forward + backward]
        return JudgeSanity(name, n, float(np.mean(matched)), float(np.mean(agree)), float(np.mean(first)))
    pairs = [[a, b] for a, b in zip(own, others)]
    swapped = [[b, a] for a, b in zip(own, others)]
    s1 = score_candidates(oracle, prompts, pairs, references)
    s2 = score_candidates(oracle, prompts, swapped, references)
    matched = [_pref(x[0], x[1]) for x in s1]
    agree = [1.0 if _pref(x[0], x[1]) == _pref(y[1], y[0]) else 0.0 for x, y in zip(s1, s2)]
    return JudgeSanity(name, n, float(np.mean(matched)), float(np.mean(agree)))
