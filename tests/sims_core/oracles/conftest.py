"""Fixtures for oracle tests: a judge model whose answer is forced through its logits."""

from __future__ import annotations

import pytest

from sims_core.testing import tiny_model


@pytest.fixture()
def force_logits():
    """A function that makes an LM answer by rule (see `_force_logits`)."""
    return _force_logits


def _force_logits(lm, decide):
    """Make ``lm`` answer by rule: after each forward, the last position's logits for the tokens
    in ``decide(text) -> {token_id: logit}`` are overwritten (text = the decoded last row)."""

    def hook(module, args, kwargs, output):
        ids = kwargs["input_ids"]
        for row in range(ids.shape[0]):
            text = lm.tokenizer.decode(ids[row], skip_special_tokens=False)
            for token, value in decide(text).items():
                output.logits[row, -1, token] = value
        return output

    return lm.model.register_forward_hook(hook, with_kwargs=True)


@pytest.fixture()
def judge_lm():
    """A fresh tiny llama (hooks added by a test die with it)."""
    return tiny_model("llama", seed=1)
