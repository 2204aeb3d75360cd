"""Reverse-likelihood (PMI) judge: how much an answer raises a language model's probability of
the question.

``score = log p(question | answer) - log p(question | neutral answer)``, both computed by teacher
forcing the question as the model's reply to a chat turn that shows the answer and asks which
question it answers. An answer that is on topic and specific makes the question predictable; a
generic, off-topic or empty one does not. Unlike a pairwise "A or B" judge it needs no
instruction following, which small models lack (SmolLM2-135M answers "A" whatever the order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sims_core.models import LanguageModel
from sims_core.oracles._lm import continuation_logprobs, resolve_lm
from sims_core.oracles.base import Candidates, Scores, check_scores, declare_capabilities, validate_candidates

__all__ = ["DEFAULT_PMI_TEMPLATE", "PMIOracle"]

DEFAULT_PMI_TEMPLATE = "Here is an answer:\n\n{answer}\n\nWhat question was this the answer to?"


@declare_capabilities(needs_reference=False, can_judge=True, uses_policy_model=True, comparable_scores=True)
@dataclass
class PMIOracle:
    """Score = log p(question | answer) - log p(question | neutral answer).

    Args:
        lm / model: the scoring model (the policy, or a LanguageModel / name for `load_model`).
        template: the user turn that shows the answer (must contain ``{answer}``).
        neutral_answer: the baseline answer (a constant per prompt: it does not change the
            order of candidates, only makes 0 mean "no better than saying nothing").
        normalize: divide by the question's token count (per-token PMI).
        system_prompt, batch_size, progress: chat formatting, forward batch size, progress bar.
    """

    lm: LanguageModel | None = None
    model: LanguageModel | str | None = None
    template: str = DEFAULT_PMI_TEMPLATE
    neutral_answer: str = "I don't know."
    normalize: bool = False
    system_prompt: str | None = None
    batch_size: int = 16
    progress: bool = False
    name: str = field(init=False, default="pmi")

    def __post_init__(self) -> None:
        if "{answer}" not in self.template:
            raise ValueError("pmi: template must contain {answer}")
        self.judge = resolve_lm(self.model, self.lm, "pmi")
        self.lm = self.model = None
        self.name = f"pmi({self.judge.name})"

    def log_likelihoods(self, prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
        """log p(prompt | answer) for each (prompt, answer), summed over the prompt's tokens."""
        judge = self.judge
        contexts = [judge.encode_prompt(self.template.format(answer=a), self.system_prompt) for a in answers]
        targets = [judge.encode_response(p) for p in prompts]
        for i, t in enumerate(targets):
            if not t:
                raise ValueError(
                    f"pmi: prompt {i} is empty; the PMI judge scores answers by how well they predict the prompt"
                )
        values = continuation_logprobs(
            judge, contexts, targets, batch_size=self.batch_size, progress=self.progress, desc="pmi scoring"
        )
        if self.normalize:
            values = [v / len(t) for v, t in zip(values, targets)]
        return values

    def score(self, prompts: Sequence[str], candidates: Candidates) -> Scores:
        prompts, candidates = validate_candidates(prompts, candidates, self.name)
        flat_prompts = [p for p, g in zip(prompts, candidates) for _ in g]
        flat_answers = [a for g in candidates for a in g]
        unique = list(dict.fromkeys(prompts))
        baseline = dict(zip(unique, self.log_likelihoods(unique, [self.neutral_answer] * len(unique))))
        values = self.log_likelihoods(flat_prompts, flat_answers)
        scores, k = [], 0
        for p, group in zip(prompts, candidates):
            scores.append([values[k + j] - baseline[p] for j in range(len(group))])
            k += len(group)
        return check_scores(self.name, prompts, candidates, scores)
