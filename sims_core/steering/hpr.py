"""HPR: Householder pseudo-rotation (Pham & Nguyen, EMNLP 2024).

Per layer, a linear probe without bias ``p(h) = sigmoid(w.h)`` and an angle network
``g(h) = pi * sigmoid(MLP(h))`` whose hidden sizes halve at each layer (``d -> d/2 -> d/4 ->
d/8 -> 1`` with GELU by default; ``depth`` sets the number of halvings).

Training pairs are token-aligned positive/negative activations (see `align_pairs`); the loss is
``BCE(p(h), 1 for positives / 0 for negatives) + MSE(g(h), 0 for positives / angle(h-, h+) for
negatives)``, optimised with Adam (lr 5e-4, 5 epochs, batches of 16 pairs, i.e. 32 vectors,
5% linear warm-up then linear decay).

At inference only activations that the probe rounds to negative (``p(h) < 0.5``, i.e.
``w.h < 0``) move, in the plane of ``h`` and its reflection ``Hh = h - 2 (w.h / w.w) w``::

    h' = [sin(a) Hh + sin(gamma - a) h] / sin(gamma),  a = alpha * g(h),  gamma = angle(h, Hh)

which keeps ``|h'| = |h|``. Everything is O(d) per vector: no d x d matrix is ever formed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sims_core.steering.learners import LayerFunction, TrainedLearner, check_positive, register_learner
from sims_core.steering.selection import probe_accuracy
from sims_core.steering.training import SCHEDULES, seeded

__all__ = [
    "ACTIVATIONS",
    "HPR",
    "HPRConfig",
    "HPRFunction",
    "angle_between",
    "angle_mlp_sizes",
    "hpr_loss",
    "householder_reflect",
    "pseudo_rotate",
    "reflection_angle",
]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "tanh": torch.tanh,
    "silu": F.silu,
}
_EPS = 1e-6


def householder_reflect(h: Tensor, w: Tensor) -> Tensor:
    """``Hh = h - 2 (w.h / w.w) w``: the reflection of ``h [..., d]`` across the hyperplane
    orthogonal to ``w [d]``, in O(d)."""
    return h - (2.0 * (h @ w) / (w @ w)).unsqueeze(-1) * w


def reflection_angle(h: Tensor, w: Tensor) -> Tensor:
    """``gamma = angle(h, Hh)`` in radians ``[...]``, in O(d). With ``c = cos(h, w)``,
    ``cos(gamma) = 1 - 2c^2`` and ``sin(gamma) = 2|c| sqrt(1 - c^2)``; atan2 keeps it accurate
    near 0 and pi."""
    norm = h.norm(dim=-1) * w.norm()
    c = ((h @ w) / norm.clamp_min(torch.finfo(h.dtype).tiny)).clamp(-1.0, 1.0)
    return torch.atan2(2.0 * c.abs() * torch.sqrt((1.0 - c * c).clamp_min(0.0)), 1.0 - 2.0 * c * c)


def angle_between(u: Tensor, v: Tensor) -> Tensor:
    """Angle in radians between the rows of ``u`` and ``v`` ([..., d] -> [...]), in [0, pi]."""
    cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1)).clamp_min(torch.finfo(u.dtype).tiny)
    return torch.arccos(cos.clamp(-1.0, 1.0))


def pseudo_rotate(h: Tensor, w: Tensor, a: Tensor) -> Tensor:
    """Move ``h [..., d]`` by the angle ``a [...]`` from ``h`` towards ``Hh`` in their plane:
    ``[sin(a) Hh + sin(gamma - a) h] / sin(gamma)``. Where ``sin(gamma)`` vanishes (``h``
    orthogonal or parallel to ``w``, so the plane is undefined) ``h`` is returned unchanged."""
    hh = householder_reflect(h, w)
    gamma = reflection_angle(h, w)
    sin_gamma = torch.sin(gamma)
    ok = sin_gamma > _EPS
    moved = (torch.sin(a).unsqueeze(-1) * hh + torch.sin(gamma - a).unsqueeze(-1) * h) / sin_gamma.clamp_min(
        _EPS
    ).unsqueeze(-1)
    return torch.where(ok.unsqueeze(-1), moved, h)


def angle_mlp_sizes(hidden_size: int, depth: int) -> list[int]:
    """Layer widths of the angle network: ``[d, d/2, ..., d/2^depth, 1]``."""
    sizes = [hidden_size]
    for _ in range(depth):
        sizes.append(sizes[-1] // 2)
    if sizes[-1] < 1:
        raise ValueError(
            f"option depth={depth} halves hidden size {hidden_size} below 1; use depth <= {int(math.log2(hidden_size))}"
        )
    return [*sizes, 1]


def hpr_loss(probe_logits: Tensor, angles: Tensor, labels: Tensor, target_angles: Tensor) -> Tensor:
    """``BCE(sigmoid(probe_logits), labels) + MSE(angles, target_angles)``, each averaged over
    the batch (computed from logits for numerical stability)."""
    return F.binary_cross_entropy_with_logits(probe_logits, labels) + F.mse_loss(angles, target_angles)


@dataclass(frozen=True)
class HPRConfig:
    """HPR options (defaults as published)."""

    lr: float = 5e-4
    epochs: int = 5
    batch_size: int = 16  # pairs per step (2x vectors)
    warmup: float = 0.05  # fraction of all steps
    schedule: str = "linear"  # after warm-up: "linear" decay to 0 or "constant"
    depth: int = 3  # halvings in the angle network: d -> d/2 -> d/4 -> d/8 -> 1
    activation: str = "gelu"

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        check_positive("epochs", self.epochs, integer=True)
        check_positive("batch_size", self.batch_size, integer=True)
        check_positive("depth", self.depth, integer=True)
        if not (isinstance(self.warmup, (int, float)) and 0.0 <= self.warmup < 1.0):
            raise ValueError(f"option warmup must be a fraction in [0, 1), got {self.warmup!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"option schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"option activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")


class _HPRNet(nn.Module):
    """The trainable probe and angle network of one layer."""

    def __init__(self, hidden_size: int, depth: int, activation: str) -> None:
        super().__init__()
        self.probe = nn.Linear(hidden_size, 1, bias=False)
        sizes = angle_mlp_sizes(hidden_size, depth)
        self.angle = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = ACTIVATIONS[activation]

    @property
    def linears(self) -> list[nn.Linear]:
        """The angle network's layers (all of ``angle``), typed."""
        return [m for m in self.angle if isinstance(m, nn.Linear)]

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        x = h
        for i, linear in enumerate(self.angle):
            x = linear(x)
            if i < len(self.angle) - 1:
                x = self.act(x)
        return self.probe(h).squeeze(-1), math.pi * torch.sigmoid(x.squeeze(-1))


class HPRFunction:
    """One layer's fitted HPR: ``probe_weight`` (w, ``[hidden]``), the angle network and the
    pseudo-rotation. ``f(h, alpha)`` works on ``[..., hidden]`` tensors and computes in at least
    float32, returning ``h``'s dtype."""

    kind: ClassVar[str] = "hpr"

    def __init__(
        self, probe_weight: Tensor, angle_layers: list[tuple[Tensor, Tensor]], activation: str = "gelu"
    ) -> None:
        if probe_weight.dim() != 1:
            raise ValueError(f"probe_weight must be a vector [hidden], got shape {list(probe_weight.shape)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        width = probe_weight.shape[0]
        for i, (weight, bias) in enumerate(angle_layers):
            if weight.dim() != 2 or weight.shape[1] != width or bias.shape != (weight.shape[0],):
                raise ValueError(
                    f"angle layer {i} has weight {list(weight.shape)} and bias {list(bias.shape)}; expected [*, {width}] and [*]"
                )
            width = weight.shape[0]
        if not angle_layers or width != 1:
            raise ValueError("the angle network must end in a single output")
        self.probe_weight = probe_weight
        self.angle_layers = angle_layers
        self.activation = activation

    @property
    def hidden_size(self) -> int:
        return int(self.probe_weight.shape[0])

    @staticmethod
    def _compute_dtype(h: Tensor) -> torch.dtype:
        return torch.promote_types(h.dtype, torch.float32)

    def probe_logit(self, h: Tensor) -> Tensor:
        """``w.h`` ([..., hidden] -> [...])."""
        dtype = self._compute_dtype(h)
        return h.to(dtype) @ self.probe_weight.to(dtype)

    def probe(self, h: Tensor) -> Tensor:
        """``p(h) = sigmoid(w.h)``, the probability that ``h`` is positive."""
        return torch.sigmoid(self.probe_logit(h))

    def angle(self, h: Tensor) -> Tensor:
        """``g(h) = pi * sigmoid(MLP(h))`` in radians ([..., hidden] -> [...])."""
        dtype = self._compute_dtype(h)
        x = h.to(dtype)
        act = ACTIVATIONS[self.activation]
        last = len(self.angle_layers) - 1
        for i, (weight, bias) in enumerate(self.angle_layers):
            x = F.linear(x, weight.to(dtype), bias.to(dtype))
            if i < last:
                x = act(x)
        return math.pi * torch.sigmoid(x.squeeze(-1))

    def __call__(self, h: Tensor, alpha: float = 1.0) -> Tensor:
        dtype = self._compute_dtype(h)
        x = h.to(dtype)
        w = self.probe_weight.to(dtype)
        negative = torch.sigmoid(x @ w) < 0.5
        moved = pseudo_rotate(x, w, alpha * self.angle(x))
        return torch.where(negative.unsqueeze(-1), moved, x).to(h.dtype)

    def state(self) -> dict[str, Tensor]:
        out = {"probe_weight": self.probe_weight}
        for i, (weight, bias) in enumerate(self.angle_layers):
            out[f"angle.{i}.weight"] = weight
            out[f"angle.{i}.bias"] = bias
        return out

    def config(self) -> dict[str, Any]:
        return {"activation": self.activation, "angle_layers": len(self.angle_layers)}

    @classmethod
    def from_state(cls, state: dict[str, Tensor], config: dict[str, Any]) -> HPRFunction:
        count = config.get("angle_layers")
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"HPR config needs a positive integer 'angle_layers', got {count!r}")
        expected = {"probe_weight"} | {f"angle.{i}.{p}" for i in range(count) for p in ("weight", "bias")}
        if set(state) != expected:
            raise ValueError(f"HPR tensors must be {sorted(expected)}, got {sorted(state)}")
        layers = [(state[f"angle.{i}.weight"], state[f"angle.{i}.bias"]) for i in range(count)]
        return cls(state["probe_weight"], layers, str(config.get("activation", "gelu")))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> HPRFunction:
        move = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return HPRFunction(move(self.probe_weight), [(move(w), move(b)) for w, b in self.angle_layers], self.activation)

    @classmethod
    def from_module(cls, net: _HPRNet, activation: str) -> HPRFunction:
        layers = [(lin.weight.detach().clone(), lin.bias.detach().clone()) for lin in net.linears]
        return cls(net.probe.weight.detach()[0].clone(), layers, activation)

    def load_into(self, net: _HPRNet) -> None:
        """Copy these parameters into a training network of the same shape (warm start)."""
        if len(net.angle) != len(self.angle_layers) or net.probe.weight.shape[1] != self.hidden_size:
            raise ValueError(
                f"cannot warm-start from an HPR layer with {len(self.angle_layers)} angle layers and hidden size "
                f"{self.hidden_size}: the new one has {len(net.angle)} and {net.probe.weight.shape[1]}"
            )
        with torch.no_grad():
            net.probe.weight.copy_(self.probe_weight.reshape(1, -1))
            for linear, (weight, bias) in zip(net.linears, self.angle_layers):
                if linear.weight.shape != weight.shape:
                    raise ValueError(
                        f"cannot warm-start: angle layer shape {list(weight.shape)} != {list(linear.weight.shape)}"
                    )
                linear.weight.copy_(weight)
                linear.bias.copy_(bias)


@register_learner
class HPR(TrainedLearner):
    """Householder pseudo-rotation learner (the SIMS default): paired, token-level, steers the
    newest token (`Learner`'s defaults)."""

    name = "hpr"
    operation = "householder_pseudo_rotation"
    function_type = HPRFunction
    Config = HPRConfig

    def fit_layer(
        self, pos: Tensor, neg: Tensor, *, seed: int, init: LayerFunction | None, on_step: Callable[[int], object]
    ) -> HPRFunction:
        cfg: HPRConfig = self.config
        with seeded(seed):
            net = _HPRNet(pos.shape[1], cfg.depth, cfg.activation)
        if init is not None:
            if not isinstance(init, HPRFunction):
                raise TypeError(f"cannot warm-start HPR from a {type(init).__name__}")
            init.load_into(net)
        target = angle_between(neg, pos)
        n = pos.shape[0]
        ones, zeros = torch.ones(n), torch.zeros(n)

        def loss_fn(index: Tensor) -> Tensor:
            x = torch.cat([pos[index], neg[index]])
            labels = torch.cat([ones[index], zeros[index]])
            targets = torch.cat([zeros[index], target[index]])
            logits, angles = net(x)
            return hpr_loss(logits, angles, labels, targets)

        self.train(net, n, loss_fn, seed=seed, on_step=on_step)
        return HPRFunction.from_module(net, cfg.activation)

    def score(self, pos_train: Tensor, neg_train: Tensor, pos_test: Tensor, neg_test: Tensor) -> float:
        # HPR's probe has no bias, so a layer is scored by how well such a probe separates it.
        return probe_accuracy(pos_train, neg_train, pos_test, neg_test, bias=False)
