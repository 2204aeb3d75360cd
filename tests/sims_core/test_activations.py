"""Response-only activation capture."""

from __future__ import annotations

import pytest
import torch

from sims_core import capture_activations

PROMPTS = ["hi", "Explain how plants grow: they need water, light and soil.", "What is the capital of France?"]
RESPONSES = ["Paris is the capital.", "Plants need light", "A short poem about the sea, kindly written."]


def _reference(lm, prompt, response, layer):
    prompt_ids = lm.encode_prompt(prompt)
    response_ids = lm.encode_response(response)
    with torch.no_grad():
        out = lm.model(torch.tensor([prompt_ids + response_ids]), output_hidden_states=True)
    return out.hidden_states[layer + 1][0, len(prompt_ids) :]


def test_per_token_capture_equals_full_forward_hidden_states(any_tiny_lm):
    layers = [0, 2]
    got = capture_activations(any_tiny_lm, PROMPTS, RESPONSES, layers, pooling="none", batch_size=3, progress=False)
    for layer in layers:
        assert len(got[layer]) == 3
        for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
            ref = _reference(any_tiny_lm, p, r, layer)
            assert got[layer][i].shape == ref.shape == (len(any_tiny_lm.encode_response(r)), 64)
            torch.testing.assert_close(got[layer][i], ref, atol=1e-5, rtol=1e-4)


def test_mean_and_last_pooling(tiny_lm):
    tokens = capture_activations(tiny_lm, PROMPTS, RESPONSES, [1], pooling="none", progress=False)[1]
    mean = capture_activations(tiny_lm, PROMPTS, RESPONSES, [1], pooling="mean", progress=False)[1]
    last = capture_activations(tiny_lm, PROMPTS, RESPONSES, [1], pooling="last", progress=False)[1]
    assert mean.shape == last.shape == (3, 64)
    for i, t in enumerate(tokens):
        torch.testing.assert_close(mean[i], t.mean(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(last[i], t[-1], atol=1e-5, rtol=1e-5)


def test_forward_stops_after_deepest_requested_layer(tiny_lm):
    ran = []
    hooks = [block.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, block in enumerate(tiny_lm.layers)]
    head = tiny_lm.model.lm_head.register_forward_hook(lambda m, a, o: ran.append("head"))
    try:
        capture_activations(tiny_lm, PROMPTS[:1], RESPONSES[:1], [0, 1], progress=False)
    finally:
        for h in hooks + [head]:
            h.remove()
    assert ran == [0, 1]


def test_batching_does_not_change_values(tiny_lm):
    a = capture_activations(tiny_lm, PROMPTS, RESPONSES, [3], batch_size=1, progress=False)[3]
    b = capture_activations(tiny_lm, PROMPTS, RESPONSES, [3], batch_size=3, progress=False)[3]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("prompts", "responses", "layers", "kwargs", "message"),
    [
        ([], [], [0], {}, "prompts is empty"),
        (["a", "b"], ["x"], [0], {}, "same length, got 2 prompts and 1 responses"),
        (["a"], ["x"], [4], {}, r"layer 4 is out of range: tiny-llama has layers 0..3"),
        (["a"], ["x"], [], {}, "layers must be a non-empty list"),
        (["a"], [""], [0], {}, r"responses \[0\] are empty"),
        (["a"], ["x"], [0], {"pooling": "max"}, "pooling must be one of"),
        ([7], ["x"], [0], {}, r"prompts\[0\] must be a string"),
    ],
)
def test_bad_input_gets_a_clear_error(tiny_lm, prompts, responses, layers, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        capture_activations(tiny_lm, prompts, responses, layers, progress=False, **kwargs)


def test_empty_response_allowed_without_pooling(tiny_lm):
    got = capture_activations(tiny_lm, ["a", "b"], ["", "x"], [0], pooling="none", progress=False)[0]
    assert got[0].shape == (0, 64) and got[1].shape[0] == 1
