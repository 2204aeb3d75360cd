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
from sims_core.oracles.base import check_scores, validate_candidates, validate_references

__all__ = ["ReferenceJudge"]


@dataclass
class ReferenceJudge(SimilarityOracle):
    """Cosine similarity of each answer to its prompt's reference answer.

    Args:
        model: a sentence-transformers model directory or hub id (None: the packaged MiniLM).
        similarity: instead of a model, a function ``(answers, references) -> list[float]``
            (values in [-1, 1]) or its ``"package.module:function"`` path.
        device, batch_size, progress: encoding settings for the model.
    """

    kind: ClassVar[str] = "reference"
    # capabilities (see sims_core.oracles.base)
    needs_reference: ClassVar[bool] = True
    can_judge: ClassVar[bool] = True
    uses_policy_model: ClassVar[bool] = False
    comparable_scores: ClassVar[bool] = True

    def score(
        self,
        prompts: Sequence[str],
        candidates: Sequence[Sequence[str]],
        references: Sequence[str] | None = None,
    ) -> list[list[float]]:
        """One score per candidate: its similarity to ``references[i]`` (-1 when empty)."""
        prompts, candidates = validate_candidates(prompts, candidates, self.name)
        references = validate_references(references, prompts, self.name)
        where = [(i, j) for i, group in enumerate(candidates) for j, answer in enumerate(group) if answer.strip()]
        values = self.measure([candidates[i][j] for i, j in where], [references[i] for i, _ in where])
        scores = [[EMPTY_SCORE] * len(group) for group in candidates]
        for (i, j), value in zip(where, values):
            scores[i][j] = value
        return check_scores(self.name, prompts, candidates, scores)
