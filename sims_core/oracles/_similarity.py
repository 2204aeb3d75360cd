"""The similarity behind the reference and consensus oracles: a sentence-transformers model
(the packaged all-MiniLM-L6-v2 by default, loaded through `SentenceEncoder`) or a user's
function ``(answers, others) -> list[float]`` given as ``"package.module:function"`` or as the
function itself. Either way the values are cosine-like similarities in [-1, 1]."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sims_core.oracles.base import OracleError
from sims_core.oracles.embedding import SentenceEncoder
from sims_core.oracles.rules import import_callable

__all__ = ["EMPTY_SCORE", "Similarity", "SimilarityOracle"]

EMPTY_SCORE = -1.0  # the lowest similarity: an empty answer never beats a non-empty one
_TOLERANCE = 1e-6

SimilarityFunction = Callable[[list[str], list[str]], Sequence[float]]


class Similarity:
    """``similarity(texts, others)``: one similarity in [-1, 1] per pair ``(texts[i], others[i])``."""

    def __init__(
        self,
        oracle: str,
        model: str | None = None,
        similarity: str | SimilarityFunction | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        progress: bool = False,
    ) -> None:
        self.oracle = oracle
        if model is not None and similarity is not None:
            raise OracleError(
                f"{oracle}: give model= (a sentence-transformers model) or similarity= (a function), not both"
            )
        if similarity is None:
            encoder = SentenceEncoder(model, device, batch_size, progress)
            self.function: SimilarityFunction = encoder.similarity
            self.label = encoder.label
            return
        if isinstance(similarity, str):
            self.function, self.label = import_callable(similarity), similarity
        elif callable(similarity):
            self.function = similarity
            self.label = getattr(similarity, "__name__", type(similarity).__name__)
        else:
            raise OracleError(
                f"{oracle}: similarity must be 'package.module:function' or a callable, got {similarity!r}"
            )

    def __call__(self, texts: list[str], others: list[str]) -> list[float]:
        if not texts:
            return []
        raw: Any = self.function(list(texts), list(others))
        if isinstance(raw, str) or not isinstance(raw, Sequence) and not hasattr(raw, "tolist"):
            raise OracleError(
                f"{self.oracle}: similarity {self.label} returned {type(raw).__name__}; it must return a list of floats"
            )
        values = [float(v) for v in (raw.tolist() if hasattr(raw, "tolist") else raw)]
        if len(values) != len(texts):
            raise OracleError(
                f"{self.oracle}: similarity {self.label} returned {len(values)} values for {len(texts)} pairs"
            )
        for i, value in enumerate(values):
            if not (math.isfinite(value) and -1 - _TOLERANCE <= value <= 1 + _TOLERANCE):
                raise OracleError(
                    f"{self.oracle}: similarity {self.label} returned {value!r} for pair {i}; similarities must be "
                    "finite and in [-1, 1] (an empty answer scores -1, the minimum)"
                )
        return [min(1.0, max(-1.0, v)) for v in values]


@dataclass
class SimilarityOracle:
    """The options and set-up the reference and consensus oracles share: ``model`` (a
    sentence-transformers model directory or hub id; None: the packaged MiniLM) or
    ``similarity`` (a function ``(texts, others) -> list[float]`` in [-1, 1], or its
    ``"package.module:function"`` path), and the encoding settings. ``self.measure`` is the
    resulting `Similarity`; the name is ``"<kind>(<model or function>)"``."""

    model: str | None = None
    similarity: str | SimilarityFunction | None = None
    device: str = "cpu"
    batch_size: int = 32
    progress: bool = False
    name: str = field(init=False, default="similarity")
    kind: ClassVar[str] = "similarity"

    def __post_init__(self) -> None:
        self.measure = Similarity(
            self.kind,
            self.model,
            self.similarity,
            device=self.device,
            batch_size=self.batch_size,
            progress=self.progress,
        )
        self.name = f"{self.kind}({self.measure.label})"
