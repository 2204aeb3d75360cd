"""Reward-model oracle: any ``AutoModelForSequenceClassification`` with a single-score head.

Each (prompt, answer) is chat-formatted with the reward model's own tokenizer template (user
turn + assistant turn) when it has one, else joined as ``prompt + "\\n" + answer``, and scored in
batches; the score is the head's single logit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sims_core.oracles.base import OracleError, check_scores, declare_capabilities, validate_candidates
from sims_core.progress import progress_bar

__all__ = ["RewardModelOracle"]


@declare_capabilities(needs_reference=False, can_judge=True, uses_policy_model=False, comparable_scores=True)
@dataclass
class RewardModelOracle:
    """Scores answers with a sequence-classification reward model.

    Args:
        model: a hub id or local directory, or an already loaded
            ``*ForSequenceClassification`` module (then give ``tokenizer`` too).
        tokenizer: the tokenizer when ``model`` is a module (default: loaded from ``model``).
        device, dtype: where to run it (default CPU, float32).
        batch_size, max_length, progress: scoring batch size, truncation length (None: the
            model's limit; longer inputs are an error, not silently cut), progress bar.
        local_files_only, trust_remote_code: passed to ``from_pretrained``.
    """

    model: Any
    tokenizer: Any = None
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    batch_size: int = 8
    max_length: int | None = None
    progress: bool = False
    local_files_only: bool | None = None
    trust_remote_code: bool = False
    name: str = field(init=False, default="reward_model")

    def __post_init__(self) -> None:
        if isinstance(self.model, (str, os.PathLike)):
            source = os.fspath(self.model)
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
            if self.local_files_only is not None:
                kwargs["local_files_only"] = self.local_files_only
            try:
                self.tokenizer = self.tokenizer or AutoTokenizer.from_pretrained(source, **kwargs)
                self.model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
            except (OSError, ValueError) as exc:
                raise OracleError(
                    f"reward_model: could not load {source!r} as a sequence-classification model: {exc}"
                ) from exc
            self.name = f"reward_model({source})"
        else:
            if self.tokenizer is None:
                raise OracleError("reward_model: a loaded model needs its tokenizer: pass tokenizer=")
            self.name = f"reward_model({getattr(self.model.config, 'name_or_path', '') or type(self.model).__name__})"
        labels = getattr(self.model.config, "num_labels", None)
        if labels != 1:
            raise OracleError(
                f"{self.name} has a classification head with {labels} outputs; a reward model needs a "
                "single-score head (num_labels=1)"
            )
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token is None:
                raise OracleError(f"{self.name}: its tokenizer has neither a pad nor an eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = self.model.to(device=self.device, dtype=self.dtype).eval()
        self.model.requires_grad_(False)

    def format(self, prompt: str, answer: str) -> str:
        """The exact text the reward model scores."""
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return f"{prompt}\n{answer}"

    @torch.inference_mode()
    def score_texts(self, texts: Sequence[str]) -> list[float]:
        limit = self.max_length or getattr(self.model.config, "max_position_embeddings", None)
        out = [0.0] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with progress_bar(total=len(texts), desc="reward model", unit="answer", enabled=self.progress) as bar:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in chunk],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=not getattr(self.tokenizer, "chat_template", None),
                )
                if limit is not None and enc["input_ids"].shape[1] > limit:
                    raise OracleError(
                        f"{self.name}: an input is {enc['input_ids'].shape[1]} tokens, over its limit of {limit}"
                    )
                enc = {k: v.to(self.device) for k, v in enc.items()}
                logits = self.model(**enc).logits.float().reshape(len(chunk), -1)
                for i, value in zip(chunk, logits[:, 0].tolist()):
                    out[i] = value
                bar.update(len(chunk))
        return out

    def score(self, prompts: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        prompts, candidates = validate_candidates(prompts, candidates, self.name)
        texts = [self.format(p, a) for p, g in zip(prompts, candidates) for a in g]
        values = self.score_texts(texts)
        scores, k = [], 0
        for group in candidates:
            scores.append(values[k : k + len(group)])
            k += len(group)
        return check_scores(self.name, prompts, candidates, scores)
