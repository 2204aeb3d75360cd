"""Mean difference (CAA): ``v_l = mean(H+) - mean(H-)``, applied as ``h + alpha * v_l``.

Works on paired or unpaired (e.g. mean-pooled) activations; the vector is closed-form, so a warm
start has nothing to start from and is ignored. By default it steers every token
(``positions="all"``), as contrastive activation addition does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from sims_core.steering.learners import LayerFunction, Learner, register_learner
from sims_core.steering.selection import mean_diff_accuracy

__all__ = ["MeanDiff", "MeanDiffConfig", "MeanDiffFunction"]


@dataclass(frozen=True)
class MeanDiffConfig:
    """Mean difference has no options."""


class MeanDiffFunction:
    """``f(h, alpha) = h + alpha * vector``."""

    kind: ClassVar[str] = "mean_diff"

    def __init__(self, vector: Tensor) -> None:
        if vector.dim() != 1:
            raise ValueError(f"a mean-difference vector must have shape [hidden], got {list(vector.shape)}")
        self.vector = vector

    @property
    def hidden_size(self) -> int:
        return int(self.vector.shape[0])

    def __call__(self, h: Tensor, alpha: float = 1.0) -> Tensor:
        return h + (alpha * self.vector).to(h.dtype)

    def state(self) -> dict[str, Tensor]:
        return {"vector": self.vector}

    def config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_state(cls, state: dict[str, Tensor], config: dict[str, Any]) -> MeanDiffFunction:
        if set(state) != {"vector"}:
            raise ValueError(f"mean_diff tensors must be ['vector'], got {sorted(state)}")
        return cls(state["vector"])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> MeanDiffFunction:
        return MeanDiffFunction(self.vector.to(device=device, dtype=dtype))


@register_learner
class MeanDiff(Learner):
    """Contrastive activation addition: the difference of the class means."""

    name = "mean_diff"
    paired = False
    token_level = False
    default_alphas = (2.0, 4.0)
    vector_export = True
    default_positions = "all"
    operation = "add"
    function_type = MeanDiffFunction
    Config = MeanDiffConfig

    def fit_layer(
        self, pos: Tensor, neg: Tensor, *, seed: int, init: LayerFunction | None, on_step: Callable[[int], object]
    ) -> MeanDiffFunction:
        vector = pos.mean(dim=0) - neg.mean(dim=0)
        on_step(1)
        return MeanDiffFunction(vector)

    def score(self, pos_train: Tensor, neg_train: Tensor, pos_test: Tensor, neg_test: Tensor) -> float:
        return mean_diff_accuracy(pos_train, neg_train, pos_test, neg_test)
