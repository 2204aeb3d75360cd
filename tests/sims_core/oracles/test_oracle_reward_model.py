"""Reward-model oracle on a tiny reward model whose scores are known by construction.

Every block's output projection is zeroed, so the residual stream at the last token is that
token's embedding; embeddings are [cos t_i, sin t_i, 0, ...] and the head reads dimension 0, so
after the final RMSNorm (which scales by sqrt(hidden)) the score is sqrt(hidden) * cos(t_i) of
the last token of the chat-formatted text.
"""

from __future__ import annotations

import math

import pytest
import torch

from sims_core.oracles import OracleError, get_oracle
from sims_core.testing import tiny_tokenizer

TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% if not loop.last %}{{ '\\n' }}{% endif %}{% endfor %}"
)
HIDDEN = 16


def build_reward_model(num_labels: int = 1):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    angles = torch.linspace(0, math.pi, len(tokenizer))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = torch.zeros(len(tokenizer), HIDDEN)
        embed[:, 0], embed[:, 1] = angles.cos(), angles.sin()
        model.model.embed_tokens.weight.copy_(embed)
        model.score.weight.zero_()
        model.score.weight[0, 0] = 1.0
    return model, tokenizer, angles


def expected(tokenizer, angles, prompt, answer):
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], tokenize=False
    )
    last = tokenizer(text, add_special_tokens=False)["input_ids"][-1]
    return math.sqrt(HIDDEN) * math.cos(float(angles[last]))


PROMPTS = ["What is the capital of France?", "Give three tips for sleep."]
CANDIDATES = [
    ["Paris is the capital of France.", "The dog", "water, light and soil"],
    ["Sleep well!", "Numbers 0 1 2 3", "kindly"],
]


def test_scores_match_the_construction_through_the_chat_template():
    model, tokenizer, angles = build_reward_model()
    oracle = get_oracle("reward_model", model=model, tokenizer=tokenizer, batch_size=4)
    assert oracle.format("Q?", "A.") == "user: Q?\nassistant: A."
    scores = oracle.score(PROMPTS, CANDIDATES)
    want = [[expected(tokenizer, angles, p, a) for a in group] for p, group in zip(PROMPTS, CANDIDATES)]
    assert scores == [pytest.approx(row, abs=1e-3) for row in want]
    assert len({round(s, 3) for row in want for s in row}) == 6  # the construction separates them


def test_loads_a_saved_reward_model_directory_and_batching_does_not_change_scores(tmp_path):
    model, tokenizer, _ = build_reward_model()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    one_by_one = get_oracle("reward_model", model=str(tmp_path), batch_size=1).score(PROMPTS, CANDIDATES)
    batched = get_oracle("reward_model", model=str(tmp_path), batch_size=8).score(PROMPTS, CANDIDATES)
    assert batched == [pytest.approx(row, abs=1e-4) for row in one_by_one]


def test_reward_model_without_a_single_score_head_is_an_error():
    model, tokenizer, _ = build_reward_model(num_labels=3)
    with pytest.raises(
        OracleError,
        match=r"has a classification head with 3 outputs; a reward model needs a single-score head \(num_labels=1\)",
    ):
        get_oracle("reward_model", model=model, tokenizer=tokenizer)


def test_missing_reward_model_directory_is_an_error(tmp_path):
    with pytest.raises(OracleError, match="could not load"):
        get_oracle("reward_model", model=str(tmp_path / "nowhere"), local_files_only=True)
