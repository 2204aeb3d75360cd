"""Sampling answers from a `LanguageModel`, batched, with per-sample seeds.

`SamplingParams` (new tokens, temperature, top-p, batch size) is the one place the sampling
defaults live; `generate`, `sims_core.evaluation.evaluate`, `sims_core.evaluation.best_of_n` and
`sims_core.steering.strength.select_strength` all take one (``sampling=``), and still accept the
four settings as keyword arguments (`SamplingOverrides`), which override the object's fields.

Prompts are chat-formatted (`LanguageModel.format_prompt`), left-padded and batched in order of
length so little compute goes to padding. Each sample draws from its own random generator seeded
from (seed, prompt text, sample index), so an answer does not depend on which other prompts share
its batch, on the batch size or on the order of the prompt list, only on float rounding.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict, Unpack

import torch
from torch import Tensor

from sims_core.errors import UserError, check_keywords
from sims_core.models import LanguageModel, left_pad
from sims_core.progress import progress_bar
from sims_core.seeding import seed_from

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "Generation",
    "SamplingOverrides",
    "SamplingParams",
    "generate",
    "sample_seed",
    "validate_prompts",
]

# Measured on the embedded model, 2 CPU cores (bench/bench_runtime.py): throughput grows with the
# batch up to ~32-40 sequences and flattens after.
DEFAULT_BATCH_SIZE = 32


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class SamplingOverrides(TypedDict, total=False):
    """The sampling settings as keyword arguments, each overriding the `SamplingParams` field of
    its name (``None``: keep the field). Every function that samples takes them as
    ``**overrides: Unpack[SamplingOverrides]`` and combines them with its ``sampling=`` object
    through `SamplingParams.resolve`."""

    max_new_tokens: int | None
    temperature: float | None
    top_p: float | None
    batch_size: int | None


@dataclass(frozen=True)
class SamplingParams:
    """How answers are sampled: one object shared by generation, evaluation and strength
    selection, so their defaults cannot disagree.

    Attributes:
        max_new_tokens: the most tokens an answer may have (then ``finish_reason="length"``).
        temperature: softmax temperature; 0 decodes greedily.
        top_p: nucleus sampling mass in (0, 1]; 1 samples from the whole distribution.
        batch_size: sequences per forward pass (only speed and memory depend on it).

    Example::

        sampling = SamplingParams(max_new_tokens=64, temperature=0.7)
        answers = generate(lm, prompts, num_samples=4, sampling=sampling, seed=0)
        greedy = generate(lm, prompts, sampling=sampling, temperature=0)  # a keyword overrides
    """

    max_new_tokens: int = 48
    temperature: float = 0.8
    top_p: float = 0.95
    batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self) -> None:
        if not _positive_int(self.max_new_tokens):
            raise UserError(
                f"max_new_tokens must be a positive integer (tokens per answer), got {self.max_new_tokens!r}"
            )
        if not (_number(self.temperature) and self.temperature >= 0):
            raise UserError(f"temperature must be >= 0 (0 means greedy) and finite, got {self.temperature!r}")
        if not (_number(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise UserError(f"top_p must be in (0, 1] (the nucleus probability mass), got {self.top_p!r}")
        if not _positive_int(self.batch_size):
            raise UserError(f"batch_size must be a positive integer (sequences per forward), got {self.batch_size!r}")
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))

    def override(self, **changes: Unpack[SamplingOverrides]) -> SamplingParams:
        """A copy with the given fields changed; ``None`` values leave a field as it is."""
        check_keywords(changes, SamplingOverrides, "sampling overrides")  # of any function taking **overrides
        given: dict[str, Any] = {key: value for key, value in changes.items() if value is not None}
        return dataclasses.replace(self, **given) if given else self

    @classmethod
    def resolve(cls, sampling: SamplingParams | None = None, **overrides: Unpack[SamplingOverrides]) -> SamplingParams:
        """``sampling`` (default: ``SamplingParams()``) with the non-None ``overrides`` applied:
        how functions that take both ``sampling=`` and the old keyword arguments combine them."""
        if sampling is None:
            sampling = cls()
        elif not isinstance(sampling, SamplingParams):
            raise UserError(f"sampling must be a SamplingParams, got {type(sampling).__name__}")
        return sampling.override(**overrides)


@dataclass(frozen=True)
class Generation:
    """One sampled answer.

    Attributes:
        text: the decoded answer (without the end-of-turn token).
        num_tokens: answer tokens generated, not counting the end-of-turn token.
        finish_reason: ``"stop"`` when the model ended its turn, ``"length"`` when cut off at
            ``max_new_tokens``.
        token_ids: the answer's token ids (without the end-of-turn token).
        seed: the seed of this sample's random generator.
    """

    text: str
    num_tokens: int
    finish_reason: Literal["stop", "length"]
    token_ids: tuple[int, ...] = ()
    seed: int = 0


def validate_prompts(prompts: object, name: str = "prompts") -> list[str]:
    """Check that ``prompts`` is a non-empty sequence of strings; return it as a list."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(f"{name} must be a list of strings, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError(f"{name} is empty: give at least one prompt")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"{name}[{index}] must be a string, got {type(prompt).__name__}: {prompt!r:.80}")
    return list(prompts)


def sample_seed(seed: int, prompt: str, sample_index: int) -> int:
    """The seed of one sample: a hash of (run seed, prompt text, sample index), so it follows
    the prompt's identity rather than its position in a list or shard."""
    return seed_from(seed, sample_index, prompt)


def _check_context(lm: LanguageModel, lengths: list[int], extra: int, what: str) -> None:
    limit = lm.max_context
    if limit is None:
        return
    for index, length in enumerate(lengths):
        if length + extra > limit:
            raise UserError(
                f"{what}[{index}] is {length} tokens after chat formatting; with {extra} more tokens it "
                f"exceeds the model's context window of {limit}. Shorten it (sims refuses rather than "
                "truncating silently)"
            )


def _supports_logits_to_keep(model: torch.nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


# -- sampling ------------------------------------------------------------------------------------
# Top-p looks for the nucleus among the most likely tokens first. On the embedded model (T=0.8,
# top_p=0.95) the top 64 hold it for ~92% of rows and the top 1024 for all but a handful in 10^4;
# only rows whose nucleus is larger still pay for a sort of the whole vocabulary.
_NUCLEUS_TIERS = (64, 1024)


def _nucleus(probs: Tensor, top_p: float) -> tuple[Tensor, Tensor]:
    """The top-p nucleus of each row of ``probs`` [batch, vocab]: (probabilities [batch, k], token
    ids [batch, k]), each row most likely first, with probability 0 for candidates outside the
    nucleus (k is the largest nucleus of the batch).

    A token is kept when the mass of the tokens ranked above it is below ``top_p``, computed
    exactly as over a full descending sort (float32 cumulative sums, accumulated in double by
    torch, so a prefix equals the full sort's prefix bit for bit). The top ``k + 1`` tokens
    decide whether the top ``k`` hold the whole nucleus: if token ``k + 1`` is out, every lower
    ranked one is out too (its mass-before only grows), so each row gets exactly the nucleus
    the full sort would give it. Rows that need more go to the next tier, then to a full sort.
    """
    batch, vocab = probs.shape
    parts: list[tuple[Tensor, Tensor, Tensor]] = []  # (rows, probabilities, token ids) per tier
    pending = torch.arange(batch, device=probs.device)
    for tier in (*_NUCLEUS_TIERS, vocab):
        k = min(tier, vocab)
        rows = probs if len(pending) == batch else probs.index_select(0, pending)
        if k < vocab:
            values, ids = rows.topk(k + 1, dim=-1)
            keep = (values.cumsum(dim=-1) - values) < top_p
            resolved = ~keep[:, k]
        else:
            values, ids = rows.sort(dim=-1, descending=True)
            keep = (values.cumsum(dim=-1) - values) < top_p
            resolved = torch.ones(len(pending), dtype=torch.bool, device=probs.device)
        values = values.masked_fill(~keep, 0.0)
        if bool(resolved.all()):
            width = int(keep.sum(dim=-1).max())
            parts.append((pending, values[:, :width], ids[:, :width]))
            break
        if bool(resolved.any()):
            width = int(keep[resolved].sum(dim=-1).max())
            parts.append((pending[resolved], values[resolved, :width], ids[resolved, :width]))
        pending = pending[~resolved]
    if len(parts) == 1:  # every row resolved at the first tier
        return parts[0][1], parts[0][2]
    width = max(part[1].shape[1] for part in parts)
    weights = torch.zeros((batch, width), dtype=probs.dtype, device=probs.device)
    token_ids = torch.zeros((batch, width), dtype=torch.long, device=probs.device)
    for rows, values, ids in parts:
        weights[rows, : values.shape[1]] = values
        token_ids[rows, : ids.shape[1]] = ids
    return weights, token_ids


def _draw(weights: Tensor, generators: list[torch.Generator]) -> Tensor:
    """One index per row of ``weights`` [batch, k] (non-negative, not normalised), drawn with
    probability weight / row sum by inverting the row's cumulative distribution (in double) at a
    uniform number from that row's own generator: one draw per row and step."""
    uniform = torch.cat([torch.rand(1, dtype=torch.float64, generator=g, device=weights.device) for g in generators])
    cdf = weights.double().cumsum(dim=-1)
    threshold = (uniform * cdf[:, -1]).unsqueeze(-1)
    index = torch.searchsorted(cdf, threshold, right=True)
    # u < 1, so the threshold is below the total; the clamp (to the last candidate with weight)
    # only guards against the product rounding up to the total.
    last = (weights > 0).long().cumsum(dim=-1).argmax(dim=-1, keepdim=True)
    return torch.minimum(index, last).squeeze(-1)


def _next_tokens(logits: Tensor, temperature: float, top_p: float, generators: list[torch.Generator]) -> Tensor:
    """The next token of each row: greedy at ``temperature == 0``, else a draw from the top-p
    nucleus of ``softmax(logits / temperature)``, one uniform number from each row's generator."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    # A NaN or infinite logit turns its whole row to NaN (column 0 included).
    if bool(probs[:, 0].isnan().any()):
        raise RuntimeError("the model produced NaN or infinite logits: its weights or inputs are broken")
    if top_p < 1.0:
        weights, ids = _nucleus(probs, top_p)
        return ids.gather(-1, _draw(weights, generators).unsqueeze(-1)).squeeze(-1)
    return _draw(probs, generators)


# -- the KV cache -------------------------------------------------------------------------------
@functools.cache
def _preallocated_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """A full-attention KV cache layer that writes each new token into buffers sized for the
        whole generation, instead of concatenating (copying the whole cache) on every step.
        ``keys``/``values`` are views of the filled part, so everything that reads a
        `DynamicLayer` (lengths, masks, attention) sees the same tensors it would."""

        def __init__(self, capacity: int) -> None:
            super().__init__()
            self.capacity = capacity
            self.length = 0

        def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
            self.dtype, self.device = key_states.dtype, key_states.device
            batch, heads = key_states.shape[:2]
            shape = (batch, heads, self.capacity)
            self._keys = torch.empty((*shape, key_states.shape[-1]), dtype=self.dtype, device=self.device)
            self._values = torch.empty((*shape, value_states.shape[-1]), dtype=self.dtype, device=self.device)
            self.keys, self.values = self._keys[:, :, :0], self._values[:, :, :0]
            self.is_initialized = True

        def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            if end > self.capacity:  # more tokens than planned for: grow like a DynamicLayer
                assert self.keys is not None and self.values is not None  # set by lazy_initialization
                self._keys = torch.cat([self.keys, key_states], dim=-2)
                self._values = torch.cat([self.values, value_states], dim=-2)
                self.capacity = end
            else:
                self._keys[:, :, self.length : end] = key_states
                self._values[:, :, self.length : end] = value_states
            self.length = end
            self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length if self.is_initialized else 0

        def batch_select_indices(self, indices: Tensor) -> None:
            """Keep rows ``indices`` (row i becomes old row indices[i]), in place: only the rows
            that change are written, only their filled part, and nothing is reallocated. Filling
            the holes left by dropped rows with rows from the end moves at most one row per
            dropped row."""
            if not self.is_initialized:
                return
            count = len(indices)
            if count > self._keys.shape[0]:
                self._keys, self._values = self._keys.index_select(0, indices), self._values.index_select(0, indices)
            else:
                target = torch.arange(count, device=indices.device)
                moved = indices != target
                if bool(moved.any()):
                    # the right-hand side is gathered before anything is written, so any order is safe
                    source, dest, end = indices[moved], target[moved], self.length
                    self._keys[dest, :, :end] = self._keys[source, :, :end]
                    self._values[dest, :, :end] = self._values[source, :, :end]
                self._keys, self._values = self._keys[:count], self._values[:count]
            self.keys, self.values = self._keys[:, :, : self.length], self._values[:, :, : self.length]

        def reset(self) -> None:
            super().reset()
            self.length = 0

    return PreallocatedLayer


def _new_cache(model: torch.nn.Module, capacity: int) -> object | None:
    """A transformers cache for one batch whose full-attention layers are preallocated for
    ``capacity`` tokens (other layer kinds, e.g. sliding windows, are left as transformers makes
    them). None when the model is not a transformers model with a config-built cache: it then
    makes its own, as it would anyway."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "get_text_config"):
        return None
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer

        cache = DynamicCache(config=config)
    except Exception:  # a config transformers cannot lay a cache out for
        return None
    if not cache.layers:
        return None
    layer_class = _preallocated_layer_class()
    cache.layers = [layer_class(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


# -- decoding -------------------------------------------------------------------------------------
# Rows that have finished (stop token) are dropped from the batch, with their rows of the KV cache,
# once they are at least this fraction of the running batch. A compaction moves at most one cache
# row per finished row (~2 ms on the embedded model at batch 64, one thread) while every row left
# in costs ~7 ms per decoding step, so any finished row goes at once (measured: 1.10x at batch 64,
# 64 tokens, vs 1.06x when waiting for an eighth of the batch).
_COMPACT_FRACTION = 0.0


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple | None:
    if args and isinstance(args[0], Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


def _prefill(model: PreTrainedModel, ids: Tensor, mask: Tensor, positions: Tensor, kwargs: dict) -> Any:
    """The first forward of a batch. With ``logits_to_keep=1`` transformers hands the output
    layer a strided slice of the last position, which torch multiplies as a batched matmul
    against the broadcast weight, several times slower than one matrix product: the output
    layer is given a contiguous copy for this forward (same values). Returns the model's output
    (a transformers ``CausalLMOutputWithPast``)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    hook = head.register_forward_pre_hook(_contiguous_input) if isinstance(head, torch.nn.Module) else None
    try:
        return model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
    finally:
        if hook is not None:
            hook.remove()


def _compaction_order(done: list[bool]) -> list[int]:
    """The rows to keep, as ``batch_select_indices`` takes them: the unfinished rows, with each
    hole a finished row leaves among the first ``count`` filled by an unfinished row from beyond
    them, so that a compaction moves at most one row per finished row."""
    count = len(done) - sum(done)
    order = list(range(count))
    fillers = (j for j in range(count, len(done)) if not done[j])
    for j in range(count):
        if done[j]:
            order[j] = next(fillers)
    return order


@torch.inference_mode()
def _generate_batch(
    lm: LanguageModel,
    rows: list[list[int]],
    seeds: list[int],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
) -> list[tuple[list[int], bool]]:
    model, device = lm.model, lm.device
    pad_id = int(lm.tokenizer.pad_token_id)
    stop = set(lm.stop_token_ids or (pad_id,))
    ids, prompt_mask, positions = left_pad(rows, pad_id, device)
    batch, width = ids.shape
    # The attention mask of the whole generation; each forward sees its first `width + step` columns.
    mask = torch.ones((batch, width + max_new_tokens), dtype=prompt_mask.dtype, device=device)
    mask[:, :width] = prompt_mask
    extra = {"logits_to_keep": 1} if _supports_logits_to_keep(model) else {}
    generators = []
    for seed in seeds:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        generators.append(generator)
    cache = _new_cache(model, width + max_new_tokens)
    cache_args = {"past_key_values": cache} if cache is not None else {}
    out = _prefill(model, ids, prompt_mask, positions, cache_args | extra)
    past = out.past_key_values
    tokens: list[list[int]] = [[] for _ in range(batch)]
    stopped = [False] * batch
    live = list(range(batch))  # the original row of each row of the running batch
    done = [False] * batch  # per running row: finished (stop token), still in the batch
    for step in range(max_new_tokens):
        chosen = _next_tokens(out.logits[:, -1, :], temperature, top_p, [generators[row] for row in live])
        chosen_list = chosen.tolist()
        for j, (row, token) in enumerate(zip(live, chosen_list)):
            if done[j]:
                continue
            if token in stop:
                stopped[row] = done[j] = True
            else:
                tokens[row].append(token)
        finished = sum(done)
        if finished == len(live) or step == max_new_tokens - 1:
            break
        if finished and finished >= _COMPACT_FRACTION * len(live) and hasattr(past, "batch_select_indices"):
            order = _compaction_order(done)
            index = torch.tensor(order, device=device)
            past.batch_select_indices(index)
            mask, positions, chosen = mask.index_select(0, index), positions.index_select(0, index), chosen[index]
            live = [live[j] for j in order]
            done = [False] * len(live)
        elif finished:
            chosen = chosen.masked_fill(torch.tensor(done, device=device), pad_id)
        positions = positions[:, -1:] + 1
        out = model(
            input_ids=chosen[:, None],
            attention_mask=mask[:, : width + step + 1],
            position_ids=positions,
            past_key_values=past,
            use_cache=True,
            **extra,
        )
        past = out.past_key_values
    return [(tokens[row], stopped[row]) for row in range(batch)]


def generate(
    lm: LanguageModel,
    prompts: Sequence[str],
    *,
    num_samples: int = 1,
    sampling: SamplingParams | None = None,
    seed: int = 0,
    system_prompt: str | None = None,
    progress: bool = True,
    **overrides: Unpack[SamplingOverrides],
) -> list[list[Generation]]:
    """Sample ``num_samples`` answers to each prompt.

    Returns a list (one per prompt, in input order) of lists (one per sample) of `Generation`.
    ``sampling`` (default ``SamplingParams()``) sets new tokens, temperature, top-p and batch
    size; the keyword arguments of the same names (`SamplingOverrides`) override its fields.
    ``temperature=0`` decodes greedily. Any steering active on ``lm`` (see `steer`) applies.
    A prompt that does not fit the context window together with ``max_new_tokens`` is refused
    with an error naming it (never truncated silently).
    """
    prompts = validate_prompts(prompts)
    if not _positive_int(num_samples):
        raise UserError(f"num_samples must be a positive integer (answers per prompt), got {num_samples!r}")
    params = SamplingParams.resolve(sampling, **overrides)
    max_new_tokens, temperature, top_p = params.max_new_tokens, params.temperature, params.top_p
    batch_size = params.batch_size
    encoded = [lm.encode_prompt(p, system_prompt) for p in prompts]
    _check_context(lm, [len(e) for e in encoded], max_new_tokens, "prompts")
    jobs = [(p, s) for p in range(len(prompts)) for s in range(num_samples)]
    jobs.sort(key=lambda job: (len(encoded[job[0]]), job[0], job[1]))
    results: list[list[Generation | None]] = [[None] * num_samples for _ in prompts]
    with progress_bar(total=len(jobs), desc="generating", unit="answer", enabled=progress) as bar:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            seeds = [sample_seed(seed, prompts[p], s) for p, s in chunk]
            outputs = _generate_batch(lm, [encoded[p] for p, _ in chunk], seeds, max_new_tokens, temperature, top_p)
            for (p, s), sample_seed_value, (token_ids, stopped) in zip(chunk, seeds, outputs):
                text = lm.tokenizer.decode(token_ids, skip_special_tokens=True)
                results[p][s] = Generation(
                    text=text,
                    num_tokens=len(token_ids),
                    finish_reason="stop" if stopped else "length",
                    token_ids=tuple(token_ids),
                    seed=sample_seed_value,
                )
            bar.update(len(chunk))
    return [[g for g in row if g is not None] for row in results]
