"""Learned linear shift: a small network trained with MSE to map ``h-`` to ``h+``.

``delta(h) = s * (U(D(h / s)) + c)`` is a low-rank linear map (``D: d -> rank``, ``U: rank -> d``
with bias ``c``), where ``s`` is a fixed input scale (the training activations' RMS
coordinate) that keeps Adam's steps sensible on residual streams whose norms run to hundreds.
It is trained so that ``h- + delta(h-) ~ h+`` (MSE over paired rows) and applied as
``h + alpha * delta(h)``. ``U`` starts at zero, so an untrained shift is the identity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sims_core.steering.learners import LayerFunction, TrainedLearner, check_positive, register_learner
from sims_core.steering.selection import probe_accuracy
from sims_core.steering.training import SCHEDULES, seeded

__all__ = ["LinearShift", "LinearShiftConfig", "LinearShiftFunction"]


@dataclass(frozen=True)
class LinearShiftConfig:
    """Options of the learned linear shift."""

    rank: int = 32  # capped at the hidden size
    lr: float = 1e-3
    epochs: int = 5
    batch_size: int = 16
    warmup: float = 0.05
    schedule: str = "linear"
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        check_positive("rank", self.rank, integer=True)
        check_positive("lr", self.lr)
        check_positive("epochs", self.epochs, integer=True)
        check_positive("batch_size", self.batch_size, integer=True)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        if not (isinstance(self.warmup, (int, float)) and 0.0 <= self.warmup < 1.0):
            raise ValueError(f"option warmup must be a fraction in [0, 1), got {self.warmup!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"option schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")


class _ShiftNet(nn.Module):
    def __init__(self, hidden_size: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, rank, bias=False)
        self.up = nn.Linear(rank, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)


class LinearShiftFunction:
    """``f(h, alpha) = h + alpha * scale * (up(down(h / scale)) + bias)``."""

    kind: ClassVar[str] = "linear_shift"

    def __init__(self, down: Tensor, up: Tensor, bias: Tensor, scale: Tensor) -> None:
        d = down.shape[1] if down.dim() == 2 else -1
        if down.dim() != 2 or up.shape != (d, down.shape[0]) or bias.shape != (d,) or scale.numel() != 1:
            raise ValueError(
                f"linear shift tensors do not fit together: down {list(down.shape)}, up {list(up.shape)}, "
                f"bias {list(bias.shape)}, scale {list(scale.shape)}"
            )
        self.down, self.up, self.bias, self.scale = down, up, bias, scale.reshape(())

    @property
    def hidden_size(self) -> int:
        return int(self.down.shape[1])

    def delta(self, h: Tensor) -> Tensor:
        dtype = torch.promote_types(h.dtype, torch.float32)
        scale = self.scale.to(dtype)
        x = F.linear(h.to(dtype) / scale, self.down.to(dtype))
        return F.linear(x, self.up.to(dtype), self.bias.to(dtype)) * scale

    def __call__(self, h: Tensor, alpha: float = 1.0) -> Tensor:
        dtype = torch.promote_types(h.dtype, torch.float32)
        return (h.to(dtype) + alpha * self.delta(h)).to(h.dtype)

    def state(self) -> dict[str, Tensor]:
        return {"down": self.down, "up": self.up, "bias": self.bias, "scale": self.scale}

    def config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_state(cls, state: dict[str, Tensor], config: dict[str, Any]) -> LinearShiftFunction:
        if set(state) != {"down", "up", "bias", "scale"}:
            raise ValueError(f"linear_shift tensors must be ['bias', 'down', 'scale', 'up'], got {sorted(state)}")
        return cls(state["down"], state["up"], state["bias"], state["scale"])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LinearShiftFunction:
        move = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return LinearShiftFunction(move(self.down), move(self.up), move(self.bias), move(self.scale))


@register_learner
class LinearShift(TrainedLearner):
    """Learned low-rank linear shift from disfavoured to preferred activations (paired,
    token-level, steers the newest token: `Learner`'s defaults)."""

    name = "linear_shift"
    operation = "linear_shift"
    function_type = LinearShiftFunction
    Config = LinearShiftConfig

    def fit_layer(
        self, pos: Tensor, neg: Tensor, *, seed: int, init: LayerFunction | None, on_step: Callable[[int], object]
    ) -> LinearShiftFunction:
        cfg: LinearShiftConfig = self.config
        d = pos.shape[1]
        rank = min(cfg.rank, d)
        with seeded(seed):
            net = _ShiftNet(d, rank)
        if init is not None:
            if not isinstance(init, LinearShiftFunction) or init.down.shape != net.down.weight.shape:
                shape = list(init.down.shape) if isinstance(init, LinearShiftFunction) else type(init).__name__
                raise ValueError(f"cannot warm-start a rank-{rank} linear shift of hidden size {d} from {shape}")
            scale = init.scale.float().clone()
            with torch.no_grad():
                net.down.weight.copy_(init.down)
                net.up.weight.copy_(init.up)
                net.up.bias.copy_(init.bias)
        else:
            scale = torch.cat([pos, neg]).pow(2).mean().sqrt().clamp_min(1e-12)

        def loss_fn(index: Tensor) -> Tensor:
            h = neg[index]
            shifted = h + net.up(net.down(h / scale)) * scale
            return F.mse_loss(shifted, pos[index])

        self.train(net, pos.shape[0], loss_fn, seed=seed, on_step=on_step)
        return LinearShiftFunction(
            net.down.weight.detach().clone(),
            net.up.weight.detach().clone(),
            net.up.bias.detach().clone(),
            scale.detach().clone(),
        )

    def score(self, pos_train: Tensor, neg_train: Tensor, pos_test: Tensor, neg_test: Tensor) -> float:
        return probe_accuracy(pos_train, neg_train, pos_test, neg_test, bias=True)
