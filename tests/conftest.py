"""Shared fixtures: tiny models built from configs (no downloads), cached per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("SIMS_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from sims_core.testing import TINY_ARCHITECTURES, tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_lms():
    """One tiny model per supported architecture, built once."""
    return {arch: tiny_model(arch) for arch in TINY_ARCHITECTURES}


@pytest.fixture(params=TINY_ARCHITECTURES)
def any_tiny_lm(request, tiny_lms):
    return tiny_lms[request.param]


@pytest.fixture(scope="session")
def tiny_lm(tiny_lms):
    return tiny_lms["llama"]


@pytest.fixture(scope="session")
def embedded_lm():
    """The embedded SmolLM2-135M-Instruct (slow: first load dequantizes, then it is cached)."""
    from sims_core import load_model

    return load_model("embedded")
