"""steer(): hooks that are correct under left padding, batching and the KV cache."""

from __future__ import annotations

import pytest
import torch

from sims_core import generate, steer
from sims_core.testing import tiny_model

PROMPTS = ["hi", "Explain how plants grow: they need water, light and soil.", "What is the capital of France?"]


def _vector(lm, scale=4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(lm.hidden_size, generator=g) * scale


def _greedy(lm, prompts, n=10):
    return [row[0].token_ids for row in generate(lm, prompts, max_new_tokens=n, temperature=0.0, progress=False)]


def _block_output(lm, ids, layer):
    """Output of block ``layer`` as the next block sees it (after any steering hook); ``ids`` is
    a tensor of token ids or a dict of model inputs."""
    seen = {}
    hook = lm.layers[layer].register_forward_hook(
        lambda m, a, out: seen.setdefault("h", out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            lm.model(**ids) if isinstance(ids, dict) or hasattr(ids, "keys") else lm.model(ids)
    finally:
        hook.remove()
    return seen["h"]


@pytest.mark.parametrize("positions", ["all", "prompt", "generated", "last"])
def test_steered_batch_equals_each_prompt_steered_alone(any_tiny_lm, positions):
    lm = any_tiny_lm
    with steer(lm, {1: _vector(lm)}, positions=positions):
        batch = _greedy(lm, PROMPTS)
        alone = [_greedy(lm, [p])[0] for p in PROMPTS]
    assert batch == alone


def test_steering_changes_output_and_removal_restores_bit_identical_logits(tiny_lm):
    ids = torch.tensor([tiny_lm.encode_prompt("What is the capital of France?")])
    with torch.no_grad():
        before = tiny_lm.model(ids).logits.clone()
    plain = _greedy(tiny_lm, PROMPTS)
    with steer(tiny_lm, {0: _vector(tiny_lm), 2: _vector(tiny_lm, seed=1)}):
        steered = _greedy(tiny_lm, PROMPTS)
        with torch.no_grad():
            during = tiny_lm.model(ids).logits
    with torch.no_grad():
        after = tiny_lm.model(ids).logits
    assert steered != plain
    assert not torch.equal(during, before)
    assert torch.equal(after, before)
    assert _greedy(tiny_lm, PROMPTS) == plain
    for block in tiny_lm.layers:
        assert not block._forward_hooks
    assert not tiny_lm.model._forward_pre_hooks and not tiny_lm.model._forward_hooks


def _edited_counts(lm, prompts, positions, max_new_tokens=3):
    """How many vectors the edit sees in each forward pass."""
    seen: list[int] = []

    def edit(h):
        seen.append(h.shape[0])
        return h

    with steer(lm, {0: edit}, positions=positions):
        generate(lm, prompts, max_new_tokens=max_new_tokens, temperature=0.0, progress=False)
    return seen


def test_padding_is_never_edited_and_positions_select_the_right_tokens(tiny_lm):
    prompts = PROMPTS
    real = sum(len(tiny_lm.encode_prompt(p)) for p in prompts)
    # never ends early: stop tokens are masked out of the logits for this test
    stop = tiny_lm.stop_token_ids
    hook = tiny_lm.model.lm_head.register_forward_hook(lambda m, a, out: out.index_fill(-1, torch.tensor(stop), -1e4))
    try:
        all_counts = _edited_counts(tiny_lm, prompts, "all")
        prompt_counts = _edited_counts(tiny_lm, prompts, "prompt")
        generated_counts = _edited_counts(tiny_lm, prompts, "generated")
        last_counts = _edited_counts(tiny_lm, prompts, "last")
    finally:
        hook.remove()
    assert all_counts == [real, 3, 3]  # prefill: real tokens only, no padding; then 1 per sequence
    assert prompt_counts == [real]
    assert generated_counts == [3, 3]
    assert last_counts == [3, 3, 3]


def test_last_position_edits_newest_real_token_under_left_padding(tiny_lm):
    captured = {}

    def edit(h):
        captured.setdefault("first", h.clone())
        return h

    ids = tiny_lm.tokenizer(["short", "a much longer prompt here"], padding=True, return_tensors="pt")
    with steer(tiny_lm, {0: edit}, positions="last"), torch.no_grad():
        tiny_lm.model(**ids)
    hidden = _block_output(tiny_lm, ids, 0)
    torch.testing.assert_close(captured["first"], hidden[:, -1])


def test_works_under_transformers_generate_too(tiny_lm):
    enc = tiny_lm.tokenizer(
        [tiny_lm.format_prompt(p) for p in PROMPTS], padding=True, return_tensors="pt", add_special_tokens=False
    )
    with steer(tiny_lm, {1: _vector(tiny_lm)}, positions="all"):
        out = tiny_lm.model.generate(
            **enc, max_new_tokens=6, do_sample=False, pad_token_id=tiny_lm.tokenizer.pad_token_id
        )
        ours = _greedy(tiny_lm, PROMPTS, n=6)
    width = enc["input_ids"].shape[1]
    hf = [tuple(t for t in row[width:].tolist() if t not in tiny_lm.stop_token_ids) for row in out]
    assert [h[: len(o)] for h, o in zip(hf, ours)] == ours


def test_vector_is_cast_to_model_dtype():
    lm = tiny_model("llama", dtype=torch.bfloat16)
    ids = torch.tensor([lm.encode_prompt("hi")])
    base = _block_output(lm, ids, 1)
    with steer(lm, {1: torch.ones(lm.hidden_size, dtype=torch.float64)}):
        out = _block_output(lm, ids, 1)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out - base, torch.ones_like(base), atol=0.1, rtol=0)


def test_alpha_scales_vectors(tiny_lm):
    ids = torch.tensor([tiny_lm.encode_prompt("hi")])
    v = _vector(tiny_lm)
    base = _block_output(tiny_lm, ids, 0)
    with steer(tiny_lm, {0: v}, alpha=0.5):
        half = _block_output(tiny_lm, ids, 0)
    torch.testing.assert_close(half - base, (0.5 * v).expand_as(base), atol=1e-5, rtol=1e-5)


def test_handle_outside_a_with_block(tiny_lm):
    plain = _greedy(tiny_lm, PROMPTS[:1])
    handle = steer(tiny_lm, {1: _vector(tiny_lm, scale=8)})
    assert handle.active and handle.layers == [1]
    steered = _greedy(tiny_lm, PROMPTS[:1])
    handle.remove()
    assert not handle.active and _greedy(tiny_lm, PROMPTS[:1]) == plain
    handle.apply()
    assert _greedy(tiny_lm, PROMPTS[:1]) == steered
    handle.remove()
    assert steered != plain


@pytest.mark.parametrize(
    ("steering", "kwargs", "error", "message"),
    [
        ({4: torch.zeros(64)}, {}, ValueError, r"steering layer 4 is out of range: tiny-llama has layers 0..3"),
        ({-1: torch.zeros(64)}, {}, ValueError, "steering layer -1 is out of range"),
        ({0: torch.zeros(32)}, {}, ValueError, r"must have shape \[64\]"),
        ({0: lambda h: h}, {"alpha": 2.0}, ValueError, "alpha=2.0 cannot scale the callable"),
        ({0: torch.zeros(64)}, {"positions": "middle"}, ValueError, "positions must be one of"),
        ({}, {}, ValueError, "steering is empty"),
        ({0: "up"}, {}, TypeError, "must be a tensor or a callable"),
        ([torch.zeros(64)], {}, TypeError, "steering must be a mapping"),
    ],
)
def test_bad_steering_gets_a_clear_error(tiny_lm, steering, kwargs, error, message):
    with pytest.raises(error, match=message):
        steer(tiny_lm, steering, **kwargs)
    assert not tiny_lm.model._forward_pre_hooks
