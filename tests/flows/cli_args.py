"""Shared pieces of the runs that the flow tests start: ``--set`` flags and small configs."""

from __future__ import annotations

from typing import Any

# the fewest prompts, samples and tokens that still make pairs and an evaluation
SHORTEST = {
    "num_prompts": 4,
    "num_samples": 2,
    "max_new_tokens": 4,
    "max_eval_prompts": 2,
    "max_val_prompts": 2,
    "eval_samples": 1,
}
# one iteration whose 4 prompts x 2 samples at batch size 4 make 2 generation batches, one per shard of 2
TWO_BATCH_RUN = {"iterations": 1, **SHORTEST, "controls": "false", "batch_size": 4}


def set_args(**fields: Any) -> list[str]:
    """``["--set", "key=value", ...]``, one pair per field, in order."""
    return [arg for key, value in fields.items() for arg in ("--set", f"{key}={value}")]


def one_iteration_config(model_dir: str, **more: Any) -> dict[str, Any]:
    """One iteration on the tiny model without controls, a few seconds long; ``more`` adds fields."""
    return {
        "model": model_dir,
        "iterations": 1,
        "num_prompts": 4,
        "num_samples": 2,
        "max_new_tokens": 6,
        "max_eval_prompts": 3,
        "max_val_prompts": 2,
        "eval_samples": 1,
        "controls": False,
        **more,
    }
