"""End to end on the embedded SmolLM2-135M-Instruct: load, batched generation, capture, steering."""

from __future__ import annotations

import pytest
import torch

from sims_core import capture_activations, generate, steer

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France?", "Give me one tip for better sleep."]


def test_embedded_model_is_smollm2_with_chat_template(embedded_lm):
    lm = embedded_lm
    assert (lm.num_layers, lm.hidden_size, lm.layers_path) == (30, 576, "model.layers")
    assert type(lm.model).__name__ == "LlamaForCausalLM"
    assert lm.tokenizer.pad_token == "<|im_end|>"
    assert lm.format_prompt("hi").startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_generate_capture_and_steer_on_the_embedded_model(embedded_lm):
    lm = embedded_lm
    plain = generate(lm, PROMPTS, num_samples=2, max_new_tokens=12, temperature=0.0, progress=False)
    assert "Paris" in plain[0][0].text
    assert plain[0][0].text == plain[0][1].text  # greedy: both samples agree

    acts = capture_activations(lm, PROMPTS, [plain[0][0].text, plain[1][0].text], [8, 16], progress=False)
    assert acts[8].shape == acts[16].shape == (2, 576)
    assert torch.isfinite(acts[16]).all()

    # Steer layer 16 along (answer 1 - answer 0): the greedy answers change; then they come back.
    direction = acts[16][1] - acts[16][0]
    with steer(lm, {16: 4.0 * direction}):
        steered = generate(lm, PROMPTS, max_new_tokens=12, temperature=0.0, progress=False)
    assert [row[0].text for row in steered] != [row[0].text for row in plain]
    again = generate(lm, PROMPTS, max_new_tokens=12, temperature=0.0, progress=False)
    assert [row[0].token_ids for row in again] == [row[0].token_ids for row in plain]
