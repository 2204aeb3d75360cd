"""Flow fixtures: a tiny model saved as a directory, and Prefect's test harness (a temporary
local API and database for the whole session)."""

from __future__ import annotations

import pytest
from prefect_server import running_prefect_server

from sims_core.testing import save_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", "llama"))


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def tiny_config(tiny_model_dir, tmp_path):
    """A configuration small enough for a flow run of a few seconds per iteration."""
    return {
        "model": tiny_model_dir,
        "store": str(tmp_path / "runs"),
        "iterations": 2,
        "num_prompts": 4,
        "num_samples": 3,
        "max_new_tokens": 6,
        "max_eval_prompts": 3,
        "max_val_prompts": 2,
        "eval_samples": 2,
        "batch_size": 8,
        "oracle": "embedding",
        "judge": "pmi",
        "alphas": [1.0, 4.0],
    }


@pytest.fixture
def prefect_server(tmp_path):
    """A real `prefect server start` on a free loopback port; yields the environment that points
    the CLI and clients at it."""
    with running_prefect_server(tmp_path) as env:
        yield env
