"""Small shared pieces of the gradient-trained learners: seeded initialisation, the learning-rate
schedule (linear warm-up, then linear decay or constant) and a minibatch loop over paired rows."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["SCHEDULES", "flush_denormals", "minibatches", "seeded", "warmup_schedule", "train_pairs"]

SCHEDULES: tuple[str, ...] = ("linear", "constant")


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (e.g. building modules) under a fixed torch seed without disturbing the
    caller's global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero on CPU while training. Residual streams with norms in the
    hundreds saturate the probe's and angle network's sigmoids, and the resulting denormal
    gradients make every step several times slower. (torch has no getter for this flag; it is
    off by default and turned off again afterwards.)"""
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)


def warmup_schedule(total_steps: int, warmup: float, schedule: str) -> Callable[[int], float]:
    """Learning-rate multiplier per step: linear warm-up over ``warmup`` (a fraction of all
    steps), then ``"linear"`` decay to 0 at the last step (transformers' default) or
    ``"constant"``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"option schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    warm = int(math.ceil(total_steps * warmup)) if warmup > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if schedule == "constant":
            return 1.0
        remaining = total_steps - warm
        return max(0.0, (total_steps - step) / remaining) if remaining > 0 else 1.0

    return factor


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """A random permutation of ``range(n)`` cut into batches of row indices."""
    return list(torch.randperm(n, generator=generator).split(batch_size))


def train_pairs(
    module: nn.Module,
    n: int,
    loss_fn: Callable[[Tensor], Tensor],
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    warmup: float,
    schedule: str,
    seed: int,
    on_step: Callable[[int], object],
    weight_decay: float = 0.0,
) -> None:
    """Adam over ``epochs`` passes of shuffled minibatches of ``n`` rows; ``loss_fn(index)``
    returns the loss of the rows ``index``."""
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(n / batch_size)
    total = steps_per_epoch * epochs
    optimizer = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_schedule(total, warmup, schedule))
    module.train()
    with torch.enable_grad(), flush_denormals():
        for _ in range(epochs):
            for index in minibatches(n, batch_size, generator):
                loss = loss_fn(index)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                on_step(1)
    module.eval()
