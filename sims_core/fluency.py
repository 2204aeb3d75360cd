"""Fluency of answers under the base model: the mean negative log-likelihood per token.

Steering that pushes too hard wrecks a small model's text long before an oracle notices (an
embedding oracle can even prefer word salad that repeats the prompt's words). The base model's
NLL of an answer is a cheap, label-free guard: alpha selection rejects any strength whose answers
are much less likely under the unsteered model than the unsteered model's own answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sims_core.generation import validate_prompts
from sims_core.models import LanguageModel
from sims_core.oracles._lm import continuation_logprobs

__all__ = ["answer_nll", "mean_finite"]


def answer_nll(
    lm: LanguageModel,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    batch_size: int = 16,
    system_prompt: str | None = None,
) -> list[float]:
    """Mean NLL per token (nats) of each answer after its chat-formatted prompt, under ``lm``
    as it is (unsteered unless the caller steers it). An empty answer has no tokens: NaN."""
    prompts = validate_prompts(prompts)
    if len(answers) != len(prompts):
        raise ValueError(f"prompts and answers must have the same length, got {len(prompts)} and {len(answers)}")
    contexts = [lm.encode_prompt(p, system_prompt) for p in prompts]
    continuations = [lm.encode_response(a) for a in answers]
    keep = [i for i, tokens in enumerate(continuations) if tokens]
    out = [math.nan] * len(prompts)
    if keep:
        sums = continuation_logprobs(
            lm, [contexts[i] for i in keep], [continuations[i] for i in keep], batch_size=batch_size
        )
        for i, total in zip(keep, sums):
            out[i] = -total / len(continuations[i])
    return out


def mean_finite(values: Sequence[float]) -> float:
    """Mean of the finite values (NaN when there are none)."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
