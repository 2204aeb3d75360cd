"""Reverse-likelihood (PMI) judge: log p(question | answer) - log p(question | neutral answer)."""

from __future__ import annotations

import pytest
import torch

from sims_core.oracles import get_oracle
from sims_core.oracles.pmi import DEFAULT_PMI_TEMPLATE


def reference_logprob(lm, question: str, answer: str) -> float:
    """log p(question | chat turn showing the answer), one unpadded sequence at a time."""
    context = lm.encode_prompt(DEFAULT_PMI_TEMPLATE.format(answer=answer))
    target = lm.encode_response(question)
    ids = torch.tensor([context + target])
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=ids).logits.float(), dim=-1)[0]
    return sum(float(logp[len(context) - 1 + i, t]) for i, t in enumerate(target))


def test_pmi_scores_equal_the_definition_computed_one_by_one(tiny_lm):
    oracle = get_oracle("pmi", lm=tiny_lm, batch_size=3)
    prompts = ["What is the capital of France?", "Give three tips for sleep."]
    candidates = [["Paris is the capital of France.", "The dog."], ["Sleep at night, no screens.", "Water", "Yes!"]]
    scores = oracle.score(prompts, candidates)
    for prompt, group, row in zip(prompts, candidates, scores):
        baseline = reference_logprob(tiny_lm, prompt, "I don't know.")
        want = [reference_logprob(tiny_lm, prompt, a) - baseline for a in group]
        assert row == pytest.approx(want, abs=1e-3)


def test_per_token_normalisation_divides_by_question_length(tiny_lm):
    prompt, group = "What is the capital of France?", ["Paris.", "A dog."]
    plain = get_oracle("pmi", lm=tiny_lm).score([prompt], [group])[0]
    per_token = get_oracle("pmi", lm=tiny_lm, normalize=True).score([prompt], [group])[0]
    n = len(tiny_lm.encode_response(prompt))
    assert per_token == pytest.approx([s / n for s in plain], abs=1e-5)


def test_neutral_answer_scores_zero(tiny_lm):
    oracle = get_oracle("pmi", lm=tiny_lm, neutral_answer="Nothing.")
    assert oracle.score(["Why?"], [["Nothing.", "Because."]])[0][0] == pytest.approx(0.0, abs=1e-4)
