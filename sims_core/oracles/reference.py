"""Reference judge: prefers the answer closer to the prompt's reference answer.

The AlpacaEval protocol grounds a judge in reference outputs; here the judgment is a
similarity: ``score = cos(embedding(answer), embedding(reference))`` on the packaged
all-MiniLM-L6-v2 by default, or on another sentence-transformers model (``model=``), or any
function ``similarity(answers, references) -> list[float]`` in [-1, 1] (``similarity=``,
``"package.module:function"`` or the function itself, imported like the ``callable`` oracle's).

    judge = get_oracle("reference")
    judge.score(prompts, [[steered, baseline], ...], references=[reference_answer, ...])

An empty or whitespace-only answer scores -1 (the minimum) so it never beats a non-empty one;
two equal scores are a tie. Called without references it raises an `OracleError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from sims_core.oracles._similarity import EMPTY_SCORE, SimilarityOracle
from sims_core.oracles.base import (
    Candidates,
    Scores,
    check_scores,
    declare_capabilities,
    validate_candidates,
    validate_references,
)

__all__ = ["ReferenceJudge"]


@declare_capabilities(needs_reference=True, can_judge=True, uses_policy_model=False, comparable_scores=True)
@dataclass
class ReferenceJudge(SimilarityOracle):
    """Cosine similarity of each answer to its prompt's reference answer. Options as
    `SimilarityOracle`'s; a ``similarity`` function is called as ``(answers, references)``."""

    kind: ClassVar[str] = "reference"

    def score(self, prompts: Sequence[str], candidates: Candidates, references: Sequence[str] | None = None) -> Scores:
        """One score per candidate: its similarity to ``references[i]`` (-1 when empty)."""
        prompts, candidates = validate_candidates(prompts, candidates, self.name)
        references = validate_references(references, prompts, self.name)
        where = [(i, j) for i, group in enumerate(candidates) for j, answer in enumerate(group) if answer.strip()]
        values = self.measure([candidates[i][j] for i, j in where], [references[i] for i, _ in where])
        scores = [[EMPTY_SCORE] * len(group) for group in candidates]
        for (i, j), value in zip(where, values):
            scores[i][j] = value
        return check_scores(self.name, prompts, candidates, scores)
