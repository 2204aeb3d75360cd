"""What the benchmarks share: a fixed prompt set and a switch that makes every answer run to
max_new_tokens (so token counts are equal on both sides of a comparison)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

__all__ = ["PROMPTS", "no_stop"]

PROMPTS = [
    "What is the capital of France?",
    "Give me one tip for better sleep.",
    "Write a haiku about rain.",
    "Explain photosynthesis to a child.",
    "How do I boil an egg?",
    "Name three primary colors.",
    "Why is the sky blue?",
    "Suggest a name for a pet turtle.",
    "What does a compiler do?",
    "How many legs does a spider have?",
    "Describe a sunset in one sentence.",
    "What is 12 times 12?",
    "Give a synonym for happy.",
    "What is the boiling point of water?",
    "Recommend a book for a long trip.",
    "How can I save money on groceries?",
]


@contextmanager
def no_stop(lm):
    """Mask end-of-turn tokens so every answer has exactly max_new_tokens tokens."""
    stop = torch.tensor(lm.stop_token_ids)
    hook = lm.model.lm_head.register_forward_hook(lambda m, a, out: out.index_fill(-1, stop, float("-inf")))
    try:
        yield
    finally:
        hook.remove()
