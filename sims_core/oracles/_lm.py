"""Batched teacher-forced scoring with a causal `LanguageModel` (shared by the LM judges)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sims_core.models import LanguageModel, padded_forward
from sims_core.progress import progress_bar

__all__ = ["continuation_logprobs", "next_token_logprobs", "resolve_lm", "single_token_id"]


def resolve_lm(model: LanguageModel | str | None, lm: LanguageModel | None, oracle: str) -> LanguageModel:
    """The judge model: ``lm`` (the policy) or ``model`` (a LanguageModel or anything
    `load_model` accepts, e.g. ``"embedded"``)."""
    if lm is not None and model is not None:
        raise ValueError(f"{oracle}: give either lm= (the policy as judge) or model=, not both")
    chosen = lm if lm is not None else model
    if chosen is None:
        raise ValueError(
            f"{oracle}: needs a judge model: lm=<the policy LanguageModel> or model='embedded' / a model id or directory"
        )
    if isinstance(chosen, LanguageModel):
        return chosen
    if isinstance(chosen, str):
        from sims_core.models import load_model

        return load_model(chosen)
    raise TypeError(f"{oracle}: model must be a LanguageModel or a model name/path, got {type(chosen).__name__}")


def single_token_id(lm: LanguageModel, text: str, oracle: str) -> int:
    ids = lm.encode_response(text)
    if len(ids) != 1:
        raise ValueError(f"{oracle}: the answer {text!r} is {len(ids)} tokens for {lm.name}; it must be a single token")
    return ids[0]


def _batches(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def next_token_logprobs(
    lm: LanguageModel,
    rows: Sequence[list[int]],
    token_ids: Sequence[int],
    *,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "judging",
) -> list[list[float]]:
    """For each token row, the log-probabilities (over the full vocabulary) that the next
    token is each of ``token_ids``."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out: list[list[float]] = [[] for _ in rows]
    wanted = torch.tensor(list(token_ids), device=lm.device)
    with progress_bar(total=len(rows), desc=desc, unit="seq", enabled=progress) as bar:
        for chunk in _batches(order, batch_size):
            logits = padded_forward(lm, [list(rows[i]) for i in chunk]).logits[:, -1, :].float()
            logp = torch.log_softmax(logits, dim=-1)[:, wanted]
            for i, values in zip(chunk, logp.tolist()):
                out[i] = values
            bar.update(len(chunk))
    return out


@torch.inference_mode()
def continuation_logprobs(
    lm: LanguageModel,
    contexts: Sequence[list[int]],
    continuations: Sequence[list[int]],
    *,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "scoring",
) -> list[float]:
    """Sum of log p(continuation tokens | context) for each (context, continuation)."""
    rows = [list(c) + list(x) for c, x in zip(contexts, continuations)]
    for i, (c, x) in enumerate(zip(contexts, continuations)):
        if not c or not x:
            raise ValueError(f"context and continuation {i} must both be non-empty token lists")
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = [0.0] * len(rows)
    with progress_bar(total=len(rows), desc=desc, unit="seq", enabled=progress) as bar:
        for chunk in _batches(order, batch_size):
            batch_rows = [rows[i] for i in chunk]
            logits = padded_forward(lm, batch_rows).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            width = logits.shape[1]
            for b, i in enumerate(chunk):
                n = len(continuations[i])
                target = torch.tensor(continuations[i], device=lm.device)
                # logits at position p predict token p+1; the continuation fills the last n slots.
                pred = logp[b, width - n - 1 : width - 1, :]
                out[i] = float(pred.gather(-1, target[:, None]).sum())
            bar.update(len(chunk))
    return out
