"""Batched, seeded generation."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from sims_core import generate
from sims_core.errors import UserError
from sims_core.generation import SamplingOverrides, SamplingParams, sample_seed

PROMPTS = ["hi", "Explain how plants grow: they need water, light and soil.", "What is the capital of France?"]


def test_shape_and_fields(tiny_lm):
    out = generate(tiny_lm, PROMPTS, num_samples=3, max_new_tokens=6, seed=1, progress=False)
    assert [len(row) for row in out] == [3, 3, 3]
    for row in out:
        for g in row:
            assert g.num_tokens == len(g.token_ids) <= 6
            assert g.finish_reason in ("stop", "length")
            assert g.text == tiny_lm.tokenizer.decode(list(g.token_ids), skip_special_tokens=True)
            if g.finish_reason == "length":
                assert g.num_tokens == 6


def test_same_seed_same_text_different_seed_differs(tiny_lm):
    a = generate(tiny_lm, PROMPTS, num_samples=2, max_new_tokens=8, seed=3, progress=False)
    b = generate(tiny_lm, PROMPTS, num_samples=2, max_new_tokens=8, seed=3, progress=False)
    c = generate(tiny_lm, PROMPTS, num_samples=2, max_new_tokens=8, seed=4, progress=False)
    texts = lambda out: [g.text for row in out for g in row]  # noqa: E731
    assert texts(a) == texts(b)
    assert texts(a) != texts(c)


def test_samples_do_not_depend_on_batching_or_order(any_tiny_lm):
    together = generate(any_tiny_lm, PROMPTS, num_samples=2, max_new_tokens=8, seed=5, batch_size=6, progress=False)
    one_by_one = generate(
        any_tiny_lm, list(reversed(PROMPTS)), num_samples=2, max_new_tokens=8, seed=5, batch_size=1, progress=False
    )
    assert [[g.token_ids for g in row] for row in together] == [
        [g.token_ids for g in row] for row in reversed(one_by_one)
    ]


def test_greedy_batch_equals_each_prompt_alone(any_tiny_lm):
    batch = generate(any_tiny_lm, PROMPTS, max_new_tokens=10, temperature=0.0, progress=False)
    alone = [generate(any_tiny_lm, [p], max_new_tokens=10, temperature=0.0, progress=False)[0][0] for p in PROMPTS]
    assert [row[0].token_ids for row in batch] == [g.token_ids for g in alone]


def test_stop_token_ends_the_answer(tiny_lm):
    # Force the end-of-turn token by making it the only token with a high logit.
    lm_head = tiny_lm.model.lm_head
    stop = tiny_lm.stop_token_ids[0]
    original = lm_head.weight.data[stop].clone()
    try:
        lm_head.weight.data[stop] = 0
        lm_head.bias = None
        hook = lm_head.register_forward_hook(
            lambda m, a, out: out.index_fill(-1, __import__("torch").tensor([stop]), 1e4)
        )
        out = generate(tiny_lm, ["hi"], max_new_tokens=5, temperature=0.0, progress=False)[0][0]
        hook.remove()
    finally:
        lm_head.weight.data[stop] = original
    assert out.finish_reason == "stop" and out.num_tokens == 0 and out.text == ""


def test_seed_follows_prompt_identity():
    assert sample_seed(0, "a", 0) == sample_seed(0, "a", 0)
    assert len({sample_seed(0, "a", 0), sample_seed(0, "a", 1), sample_seed(1, "a", 0), sample_seed(0, "b", 0)}) == 4


@pytest.mark.parametrize(
    ("prompts", "kwargs", "error", "message"),
    [
        ([], {}, ValueError, "prompts is empty"),
        ("hello", {}, TypeError, "prompts must be a list of strings, got str"),
        (["ok", 3], {}, TypeError, r"prompts\[1\] must be a string, got int"),
        (["ok"], {"num_samples": 0}, ValueError, "num_samples must be a positive integer"),
        (["ok"], {"max_new_tokens": 0}, ValueError, "max_new_tokens must be a positive integer"),
        (["ok"], {"temperature": -1.0}, ValueError, "temperature must be >= 0"),
        (["ok"], {"top_p": 0.0}, ValueError, r"top_p must be in \(0, 1\]"),
        (["ok"], {"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
        (["ok"], {"max_new_token": 5}, TypeError, "unexpected keyword argument 'max_new_token'"),
    ],
)
def test_bad_input_gets_a_clear_error(tiny_lm, prompts, kwargs, error, message):
    with pytest.raises(error, match=message):
        generate(tiny_lm, prompts, progress=False, **kwargs)


def test_prompt_longer_than_context_is_refused(tiny_lm):
    long_prompt = "water light soil " * 200
    with pytest.raises(
        ValueError,
        match=r"prompts\[1\] is \d+ tokens after chat formatting; with 8 more tokens it exceeds the model's context window of 256",
    ):
        generate(tiny_lm, ["short", long_prompt], max_new_tokens=8, progress=False)


# -- decoding internals: nucleus, draws, KV cache, dropping finished rows -------------------------
def _reference_nucleus(probs, top_p):
    """The nucleus as a full descending sort defines it: {token: probability} per row."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep = (sorted_probs.cumsum(dim=-1) - sorted_probs) < top_p
    return [{int(t): float(p) for t, p, k in zip(order[i], sorted_probs[i], keep[i]) if k} for i in range(len(probs))]


def test_nucleus_is_exactly_the_full_sort_nucleus_at_every_tier():
    import torch

    from sims_core.generation import _NUCLEUS_TIERS, _nucleus

    g = torch.Generator().manual_seed(0)
    vocab = 3000
    # one peaked row (nucleus of 1), then flatter and flatter rows: nuclei from a few tokens to
    # beyond the last top-k tier (full sort)
    logits = torch.randn(6, vocab, generator=g) * torch.tensor([[40.0], [6.0], [3.0], [1.5], [0.5], [0.05]])
    probs = torch.softmax(logits, dim=-1)
    for top_p in (0.5, 0.95, 0.999):
        weights, ids = _nucleus(probs, top_p)
        reference = _reference_nucleus(probs, top_p)
        sizes = [len(r) for r in reference]
        for row, expected in enumerate(reference):
            got = {int(t): float(p) for t, p in zip(ids[row], weights[row]) if p > 0}
            assert got == expected, (top_p, row)
        if top_p == 0.95:
            assert min(sizes) == 1 and max(sizes) > max(_NUCLEUS_TIERS)  # every tier was exercised
            assert any(_NUCLEUS_TIERS[0] < s <= _NUCLEUS_TIERS[1] for s in sizes)


def test_draws_follow_the_weights_and_never_pick_a_zero_weight():
    import torch

    from sims_core.generation import _draw

    weights = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0]) * 7.0  # not normalised
    rows = 20000
    generators = [torch.Generator().manual_seed(i) for i in range(rows)]
    picks = _draw(weights.expand(rows, -1), generators)
    counts = torch.bincount(picks, minlength=5).double()
    expected = weights.double() / weights.sum() * rows
    assert counts[1] == 0 and counts[4] == 0
    sigma = (expected * (1 - expected / rows)).sqrt()
    assert ((counts - expected).abs() <= 5 * sigma + 1e-9).all(), counts
    # one uniform number per row: the same generator state gives the same pick
    again = _draw(weights.expand(3, -1), [torch.Generator().manual_seed(i) for i in range(3)])
    assert again.tolist() == picks[:3].tolist()


def test_preallocated_cache_grows_past_its_capacity_and_compacts_in_place(tiny_lm):
    import torch

    from sims_core.generation import _compaction_order, _new_cache

    cache = _new_cache(tiny_lm.model, capacity=4)
    layer = cache.layers[0]
    keys = torch.randn(5, 2, 3, 16)
    layer.update(keys, keys + 1)
    layer.update(keys[:, :, :2], keys[:, :, :2] + 1)  # 5 > capacity 4: grows
    full = torch.cat([keys, keys[:, :, :2]], dim=2)
    assert cache.get_seq_length() == 5 and torch.equal(layer.keys, full)
    done = [True, False, False, True, False]
    order = _compaction_order(done)
    assert sorted(order) == [1, 2, 4] and order[1:] == [1, 2]  # row 4 fills the hole at 0
    cache.batch_select_indices(torch.tensor(order))
    assert torch.equal(layer.keys, full[order]) and torch.equal(layer.values, full[order] + 1)
    layer.update(keys[:3, :, :1], keys[:3, :, :1])
    assert layer.keys.shape == (3, 2, 6, 16)


def _stop_at_position(lm, modulus):
    """Hooks that end a row's answer once it has been fed the token at a position that is a
    multiple of ``modulus``: a rule that depends only on the row itself (its prompt length and
    step), so rows of one batch stop at different steps, and some not at all."""
    seen = {}
    stop = lm.stop_token_ids[0]

    def before(module, args, kwargs):
        seen["positions"] = kwargs.get("position_ids")

    def after(module, args, out):
        positions = seen["positions"]
        if positions is None or positions.shape[1] != 1:
            return out
        out = out.clone()
        out[(positions[:, -1] % modulus == 0).nonzero().flatten(), -1, stop] = 1e4
        return out

    return [
        lm.model.register_forward_pre_hook(before, with_kwargs=True),
        lm.model.get_output_embeddings().register_forward_hook(after),
    ]


@pytest.mark.parametrize(("temperature", "modulus"), [(0.0, 5), (0.8, 13)])
def test_rows_that_stop_early_leave_the_batch_without_changing_any_answer(
    any_tiny_lm, temperature, modulus, monkeypatch
):
    import sims_core.generation as generation

    lm = any_tiny_lm
    prompts = PROMPTS + ["Write a short poem about the sea.", "Give three tips for sleep.", "Numbers 0 1 2 3"]
    batch_sizes = []
    hooks = _stop_at_position(lm, 17)  # prompts 0, 1, 3, 4 stop within 12 tokens
    hooks.append(
        lm.model.register_forward_pre_hook(
            lambda m, a, k: batch_sizes.append(k["input_ids"].shape[0]), with_kwargs=True
        )
    )
    try:
        kwargs = dict(max_new_tokens=12, temperature=temperature, seed=7, progress=False)
        together = generate(lm, prompts, num_samples=2, batch_size=12, **kwargs)
        sizes_together = list(batch_sizes)
        monkeypatch.setattr(generation, "_COMPACT_FRACTION", float("inf"))  # finished rows ride along
        riding = generate(lm, prompts, num_samples=2, batch_size=12, **kwargs)
        monkeypatch.undo()
        alone = [generate(lm, [p], num_samples=2, batch_size=1, **kwargs)[0] for p in prompts]
    finally:
        for hook in hooks:
            hook.remove()
    ids = lambda out: [[g.token_ids for g in row] for row in out]  # noqa: E731
    reasons = [g.finish_reason for row in together for g in row]
    assert "stop" in reasons and "length" in reasons  # some rows stopped early, some ran to the end
    assert min(sizes_together[1:]) < 12  # finished rows were dropped from the batch
    assert ids(together) == ids(riding) == ids(alone)
    assert [[g.finish_reason for g in row] for row in together] == [[g.finish_reason for g in row] for row in alone]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_new_tokens": 0}, r"^max_new_tokens must be a positive integer \(tokens per answer\), got 0$"),
        ({"max_new_tokens": 2.5}, r"^max_new_tokens must be a positive integer \(tokens per answer\), got 2\.5$"),
        ({"max_new_tokens": True}, r"^max_new_tokens must be a positive integer \(tokens per answer\), got True$"),
        ({"temperature": -0.1}, r"^temperature must be >= 0 \(0 means greedy\) and finite, got -0\.1$"),
        ({"temperature": float("nan")}, r"^temperature must be >= 0 \(0 means greedy\) and finite, got nan$"),
        ({"top_p": 0.0}, r"^top_p must be in \(0, 1\] \(the nucleus probability mass\), got 0\.0$"),
        ({"top_p": 1.5}, r"^top_p must be in \(0, 1\] \(the nucleus probability mass\), got 1\.5$"),
        ({"batch_size": 0}, r"^batch_size must be a positive integer \(sequences per forward\), got 0$"),
    ],
)
def test_sampling_params_refuse_bad_values_naming_the_field(fields, message):
    with pytest.raises(UserError, match=message):
        SamplingParams(**fields)


def test_sampling_params_hold_the_one_set_of_defaults():
    params = SamplingParams()
    assert (params.max_new_tokens, params.temperature, params.top_p, params.batch_size) == (48, 0.8, 0.95, 32)
    assert SamplingParams(temperature=1).temperature == 1.0 and isinstance(
        SamplingParams(temperature=1).temperature, float
    )
    assert params.override(temperature=None, top_p=0.5) == SamplingParams(top_p=0.5)
    assert SamplingParams.resolve(None, max_new_tokens=7) == SamplingParams(max_new_tokens=7)
    with pytest.raises(UserError, match="sampling must be a SamplingParams, got dict"):
        SamplingParams.resolve({"temperature": 0.5})
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.temperature = 0.1  # type: ignore[misc]
    # every function that samples takes its defaults from SamplingParams: the keyword settings are
    # its fields, taken only as **overrides (so with no default of their own)
    from sims_core.evaluation import best_of_n, evaluate
    from sims_core.steering.strength import select_strength

    assert list(SamplingOverrides.__annotations__) == [field.name for field in dataclasses.fields(SamplingParams)]
    for function in (generate, evaluate, best_of_n, select_strength):
        parameters = inspect.signature(function).parameters
        assert parameters["sampling"].default is None
        assert parameters["overrides"].kind is inspect.Parameter.VAR_KEYWORD
        assert not set(SamplingOverrides.__annotations__) & set(parameters)


def test_sampling_params_and_keywords_give_the_same_answers(tiny_lm):
    params = SamplingParams(max_new_tokens=6, temperature=1.0, top_p=0.9, batch_size=2)
    by_object = generate(tiny_lm, PROMPTS, num_samples=2, sampling=params, seed=3, progress=False)
    by_keywords = generate(
        tiny_lm,
        PROMPTS,
        num_samples=2,
        max_new_tokens=6,
        temperature=1.0,
        top_p=0.9,
        batch_size=2,
        seed=3,
        progress=False,
    )
    assert by_object == by_keywords
    assert all(g.num_tokens <= 6 for row in by_object for g in row)
    greedy = generate(tiny_lm, PROMPTS[:1], sampling=params, temperature=0.0, progress=False)[0][0]
    assert greedy == generate(tiny_lm, PROMPTS[:1], max_new_tokens=6, temperature=0.0, progress=False)[0][0]
