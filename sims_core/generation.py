"""Sampling answers from a `LanguageModel`, batched, with per-sample seeds.

`SamplingParams` (new tokens, temperature, top-p, batch size) is the one place the sampling
defaults live; `generate`, `sims_core.evaluation.evaluate`, `sims_core.evaluation.best_of_n` and
`sims_core.steering.strength.select_strength` all take one (``sampling=``), and still accept the
four settings as keyword arguments, which override the object's fields.

Prompts are chat-formatted (`LanguageModel.format_prompt`), left-padded and batched in order of
length so little compute goes to padding. Each sample draws from its own random generator seeded
from (seed, prompt text, sample index), so an answer does not depend on which other prompts share
its batch, on the batch size or on the order of the prompt list, only on float rounding.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from sims_core.errors import UserError
from sims_core.models import LanguageModel, left_pad
from sims_core.progress import progress_bar
from sims_core.seeding import seed_from

__all__ = ["DEFAULT_BATCH_SIZE", "Generation", "SamplingParams", "generate", "sample_seed", "validate_prompts"]

# Measured on the embedded model, 2 CPU cores (bench/bench_runtime.py): throughput grows with the
# batch up to ~32-40 sequences and flattens after.
DEFAULT_BATCH_SIZE = 32


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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

    def override(self, **changes: Any) -> SamplingParams:
        """A copy with the given fields changed; ``None`` values leave a field as it is."""
        given = {key: value for key, value in changes.items() if value is not None}
        return dataclasses.replace(self, **given) if given else self

    @classmethod
    def resolve(cls, sampling: SamplingParams | None = None, **overrides: Any) -> SamplingParams:
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


def _left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """`sims_core.models.left_pad` without the positions (the form `_generate_batch` calls)."""
    ids, mask, _ = left_pad(rows, pad_id, device)
    return ids, mask


def _next_tokens(logits: Tensor, temperature: float, top_p: float, generators: list[torch.Generator]) -> Tensor:
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(generators)])


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
    stop = torch.tensor(lm.stop_token_ids or (pad_id,), device=device)
    ids, mask = _left_pad(rows, pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    extra = {"logits_to_keep": 1} if _supports_logits_to_keep(model) else {}
    generators = []
    for seed in seeds:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        generators.append(generator)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
    batch = len(rows)
    tokens = torch.empty((batch, 0), dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    stopped = torch.zeros(batch, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        chosen = _next_tokens(out.logits[:, -1, :], temperature, top_p, generators)
        chosen = torch.where(finished, torch.full_like(chosen, pad_id), chosen)
        is_stop = torch.isin(chosen, stop) & ~finished
        tokens = torch.cat(
            [tokens, torch.where(finished | is_stop, torch.full_like(chosen, -1), chosen)[:, None]], dim=1
        )
        stopped |= is_stop
        finished |= is_stop
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
        positions = positions[:, -1:] + 1
        out = model(
            input_ids=chosen[:, None],
            attention_mask=mask,
            position_ids=positions,
            past_key_values=out.past_key_values,
            use_cache=True,
            **extra,
        )
    result = []
    for i in range(batch):
        row = [int(t) for t in tokens[i].tolist() if t >= 0]
        result.append((row, bool(stopped[i])))
    return result


def generate(
    lm: LanguageModel,
    prompts: Sequence[str],
    *,
    num_samples: int = 1,
    sampling: SamplingParams | None = None,
    seed: int = 0,
    system_prompt: str | None = None,
    progress: bool = True,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    batch_size: int | None = None,
) -> list[list[Generation]]:
    """Sample ``num_samples`` answers to each prompt.

    Returns a list (one per prompt, in input order) of lists (one per sample) of `Generation`.
    ``sampling`` (default ``SamplingParams()``) sets new tokens, temperature, top-p and batch
    size; the keyword arguments of the same names override its fields. ``temperature=0``
    decodes greedily. Any steering active on ``lm`` (see `steer`) applies.
    A prompt that does not fit the context window together with ``max_new_tokens`` is refused
    with an error naming it (never truncated silently).
    """
    prompts = validate_prompts(prompts)
    if not _positive_int(num_samples):
        raise UserError(f"num_samples must be a positive integer (answers per prompt), got {num_samples!r}")
    params = SamplingParams.resolve(
        sampling, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size
    )
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
