"""Consensus oracle (minimum Bayes risk decoding, self-consistency): the answer most like the
prompt's other answers wins.

Each answer scores by its mean similarity to the OTHER non-empty answers of the same prompt:
what several independent samples agree on is more often right than what one sample says
alone. No labels, no judge prompt, no reference. The similarity is the cosine of
sentence-transformers embeddings (the packaged all-MiniLM-L6-v2 by default, ``model=``
another), or a function ``similarity(answers, others) -> list[float]`` in [-1, 1]
(``similarity=``, ``"package.module:function"`` or the function itself); it is taken as
symmetric, each unordered pair measured once.

- An empty or whitespace-only answer scores -1 (the minimum) and lends no support: it is left
  out of the others' means. A non-empty answer with no non-empty other scores 0.
- It ranks K >= 3 samples; with K = 2 the two answers support each other equally (a tie), so it
  **cannot judge** a pair: ``can_judge = False``, and the evaluation refuses it as a judge.
  K = 1 is an error, as for every oracle (ranking needs K >= 2).
- Its scores depend on the other candidates (``comparable_scores = False``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from sims_core.oracles._similarity import EMPTY_SCORE, SimilarityOracle
from sims_core.oracles.base import Candidates, Scores, check_scores, declare_capabilities, validate_candidates

__all__ = ["ConsensusOracle"]


# symmetric in a pair (it cannot judge one), relative to the other candidates
@declare_capabilities(needs_reference=False, can_judge=False, uses_policy_model=False, comparable_scores=False)
@dataclass
class ConsensusOracle(SimilarityOracle):
    """Mean similarity of each answer to the prompt's other answers (see the module docstring).
    Options as `SimilarityOracle`'s; a ``similarity`` function is called as ``(answers, others)``."""

    kind: ClassVar[str] = "consensus"

    def score(self, prompts: Sequence[str], candidates: Candidates) -> Scores:
        prompts, candidates = validate_candidates(prompts, candidates, self.name)
        pairs: list[tuple[int, int, int]] = []  # (prompt, i, j) with i < j, both non-empty
        for p, group in enumerate(candidates):
            filled = [k for k, answer in enumerate(group) if answer.strip()]
            pairs += [(p, a, b) for n, a in enumerate(filled) for b in filled[n + 1 :]]
        values = self.measure([candidates[p][a] for p, a, _ in pairs], [candidates[p][b] for p, _, b in pairs])
        sums = [[0.0] * len(group) for group in candidates]
        counts = [[0] * len(group) for group in candidates]
        for (p, a, b), value in zip(pairs, values):
            for k in (a, b):
                sums[p][k] += value
                counts[p][k] += 1
        scores = [
            [
                EMPTY_SCORE if not answer.strip() else (sums[p][k] / counts[p][k] if counts[p][k] else 0.0)
                for k, answer in enumerate(group)
            ]
            for p, group in enumerate(candidates)
        ]
        return check_scores(self.name, prompts, candidates, scores)
