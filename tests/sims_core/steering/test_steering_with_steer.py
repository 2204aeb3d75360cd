"""A SteeringSet plugs into steer(): it changes a tiny model's greedy generation, leaving the
context restores bit-identical logits, and its edits are cast to the model's dtype/device."""

from __future__ import annotations

import pytest
import torch

from sims_core import capture_activations, generate
from sims_core.steering import IncompatibleSteeringError, SteeringSet, SteeringSource, align_pairs, fit_steering, steer
from sims_core.testing import tiny_model

PROMPTS = ["Write a short poem about the sea.", "What is the capital of France?"]
RESPONSES = ["The sea is blue and the light is kind.", "Paris is the capital of France, clearly."]


def greedy(lm) -> list[tuple[int, ...]]:
    return [row[0].token_ids for row in generate(lm, PROMPTS, max_new_tokens=8, temperature=0.0, progress=False)]


def logits(lm) -> torch.Tensor:
    ids = torch.tensor([lm.encode_prompt(PROMPTS[0])])
    with torch.inference_mode():
        return lm.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


@pytest.fixture(scope="module")
def token_pairs(tiny_lms):
    lm = tiny_lms["llama"]
    neg_tokens = capture_activations(lm, PROMPTS * 3, RESPONSES * 3, [1, 2], pooling="none", progress=False)
    # preferred activations: the disfavoured ones pushed far along one direction
    g = torch.Generator().manual_seed(0)
    u = torch.randn(64, generator=g)
    u = 4.0 * u / u.norm()
    pos_tokens = {l: [t + u * t.norm(dim=-1, keepdim=True) for t in ts] for l, ts in neg_tokens.items()}
    return align_pairs(pos_tokens, neg_tokens)


def test_a_steering_set_is_a_steering_source(token_pairs, tiny):
    s = fit_steering("mean_diff", *token_pairs, model=tiny)
    assert isinstance(s, SteeringSource)


def test_mean_diff_set_with_positions_all_changes_greedy_generation(token_pairs, tiny):
    s = fit_steering("mean_diff", *token_pairs, model=tiny, top_k=1)
    base_logits, base_text = logits(tiny), greedy(tiny)
    with steer(tiny, s, alpha=3.0, positions="all") as handle:
        assert handle.positions == "all"
        assert greedy(tiny) != base_text
        assert not torch.equal(logits(tiny), base_logits)
    assert torch.equal(logits(tiny), base_logits)
    assert greedy(tiny) == base_text


def test_hpr_set_steers_the_last_token_by_default_and_changes_generation(token_pairs, tiny):
    s = fit_steering("hpr", *token_pairs, model=tiny, top_k=2, epochs=20, lr=1e-2)
    negatives = token_pairs[1][s.layers[0]]
    assert (negatives @ s[s.layers[0]].probe_weight < 0).float().mean() >= 0.8  # real activations read as negative
    base_logits, base_text = logits(tiny), greedy(tiny)
    with steer(tiny, s, alpha=1.0) as handle:
        assert handle.positions == "last"
        steered = logits(tiny)
        assert greedy(tiny) != base_text
    # only the newest token is edited during the prefill: earlier positions' logits are unchanged
    assert torch.equal(steered[:, :-1], base_logits[:, :-1]) and not torch.equal(steered[:, -1], base_logits[:, -1])
    assert torch.equal(logits(tiny), base_logits)
    assert greedy(tiny) == base_text


def test_edits_are_cast_to_the_model_dtype_and_checked(token_pairs, tiny):
    lm16 = tiny_model("llama", dtype=torch.bfloat16)
    s = fit_steering("hpr", *token_pairs, model=tiny, top_k=1, epochs=1)
    edits = s.steering_edits(lm16, 2.0)
    fn = edits[s.layers[0]].fn
    assert fn.probe_weight.dtype == torch.bfloat16 and fn.probe_weight.device == lm16.device
    assert all(w.dtype == torch.bfloat16 for w, _ in fn.angle_layers) and edits[s.layers[0]].alpha == 2.0
    h = torch.randn(3, 64, dtype=torch.bfloat16)
    assert edits[s.layers[0]](h).dtype == torch.bfloat16
    with steer(lm16, s):
        greedy(lm16)
    other = tiny_model("llama", hidden=32, layers=4)
    with pytest.raises(IncompatibleSteeringError, match="hidden size 64"):
        steer(other, s)


def test_set_alpha_scales_the_strength(token_pairs, tiny):
    s = fit_steering("mean_diff", *token_pairs, model=tiny, top_k=1, alpha=0.5)
    layer = s.layers[0]
    h = torch.zeros(1, 64)
    torch.testing.assert_close(s.steering_edits(tiny, 4.0)[layer](h), (2.0 * s[layer].vector).reshape(1, 64))
    assert SteeringSet.from_bytes(s.to_bytes()).alpha == 0.5
