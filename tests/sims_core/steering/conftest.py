"""Shared fixtures for the steering tests: tiny models and synthetic paired activations."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny(tiny_lms):
    """Tiny Llama (hidden 64, 4 layers) from the root conftest."""
    return tiny_lms["llama"]


@pytest.fixture(scope="session")
def tiny_qwen(tiny_lms):
    return tiny_lms["qwen2"]


@pytest.fixture
def make_pairs():
    return synthetic_pairs


def synthetic_pairs(n: int = 200, d: int = 32, seed: int = 0, shift: float = 3.0, noise: float = 1.0):
    """Paired rows: a shared random component, plus +shift*u for positives and -shift*u for
    negatives along a random unit direction u. Returns (pos, neg, u)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    u = u / u.norm()
    base = noise * torch.randn(n, d, generator=g) + 0.5 * torch.randn(d, generator=g)
    jitter = 0.1 * torch.randn(n, d, generator=g)
    return base + shift * u + jitter, base - shift * u, u
