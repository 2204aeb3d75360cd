"""The one per-process runtime object (`tasks.runtime.runtime()`): the stop flag, the held run
locks and the passed preflights live on it, and behave as the flow and the CLI rely on."""

from __future__ import annotations

import os

import pytest
import torch

from flows.preflight import preflight
from flows.self_improve import run_lock
from sims_core.config import SimsConfig
from sims_core.errors import NotFoundError
from storage import ArtifactStore
from tasks.runtime import RunInterrupted, WorkerRuntime, runtime


def test_a_stop_request_interrupts_the_next_forward_of_a_model_it_loaded_until_cleared(tiny_model_dir):
    local = WorkerRuntime()  # not the process's own: another test's model stays untouched
    lm = local.model(SimsConfig(model=tiny_model_dir))
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        before = lm.model(ids).logits
        local.request_stop()
        with pytest.raises(RunInterrupted, match="interrupted \\(Ctrl-C or SIGTERM\\) during a forward pass"):
            lm.model(ids)
        local.clear_stop()
        assert torch.equal(lm.model(ids).logits, before)
    other = WorkerRuntime().model(SimsConfig(model=tiny_model_dir))
    local.request_stop()
    with torch.no_grad():  # a model of another runtime ignores this one's flag
        other.model(ids)


def test_the_run_lock_is_held_on_the_runtime_reentrantly_and_released_on_exit(tmp_path):
    store = ArtifactStore.open(tmp_path / "runs")
    held = runtime().held_locks
    with run_lock(store, "run-a", holder="test") as outer:
        assert held == {(store.url, "run-a"): outer}
        assert os.path.exists(store.lock_uri("run-a"))
        with run_lock(store, "run-a", holder="another") as inner:
            assert inner is outer  # re-entered, not acquired twice
        assert held == {(store.url, "run-a"): outer}  # the inner exit does not release it
    assert held == {}
    assert not os.path.exists(store.lock_uri("run-a"))


def test_a_configuration_that_passed_preflight_is_not_checked_again_in_this_process(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "Question {i}: what is {i} plus {i}?"}}\n' for i in range(40)))
    cfg = SimsConfig(
        model=tiny_model_dir, prompts=str(prompts), store=str(tmp_path / "runs"), num_prompts=4, num_samples=2
    )
    preflight(cfg, "run-b")
    passed = {key for key in runtime().preflight_passed if key[0] == "run-b"}
    assert len(passed) == 1
    prompts.unlink()  # a check that ran again would fail on the missing prompt file
    preflight(cfg, "run-b")
    with pytest.raises(NotFoundError, match=f"prompt file {str(prompts)!r} does not exist"):
        preflight(cfg, "run-c")  # another run id is checked: the file is gone
