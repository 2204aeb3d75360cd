"""Reading a model's residual-stream activations on (prompt, response) pairs.

Only response tokens are read: the prompt (chat-formatted exactly as in generation) and padding
are excluded. The forward pass stops right after the deepest requested layer, so no deeper block
and no LM head is computed. The activation of layer ``l`` is the output of decoder block ``l``,
equal to ``output_hidden_states[l + 1]`` of a full forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from sims_core.generation import _check_context, validate_prompts
from sims_core.models import LanguageModel, padded_forward
from sims_core.progress import progress_bar
from sims_core.steering.hooks import _hidden_of

__all__ = ["POOLINGS", "Pooling", "capture_activations", "validate_layers"]

Pooling = Literal["mean", "last", "none"]
POOLINGS: tuple[str, ...] = ("mean", "last", "none")


class _StopForward(Exception):
    """Raised by the deepest hook to end the forward pass early."""


def validate_layers(lm: LanguageModel, layers: object) -> list[int]:
    """Check a list of layer indices against the model; return them sorted and unique."""
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if not isinstance(layers, Sequence) or isinstance(layers, str) or len(layers) == 0:
        raise ValueError(f"layers must be a non-empty list of layer indices, got {layers!r}")
    for layer in layers:
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < lm.num_layers:
            raise ValueError(f"layer {layer!r} is out of range: {lm.name} has layers 0..{lm.num_layers - 1}")
    return sorted(set(layers))


@torch.inference_mode()
def _capture_batch(
    lm: LanguageModel, prompt_ids: list[list[int]], response_ids: list[list[int]], layers: list[int]
) -> dict[int, list[Tensor]]:
    rows = [p + r for p, r in zip(prompt_ids, response_ids)]
    width = max(len(r) for r in rows)
    captured: dict[int, Tensor] = {}
    deepest = max(layers)

    def make_hook(layer: int):
        def hook(module: Any, args: tuple, output: Any) -> None:
            captured[layer] = _hidden_of(output).detach()
            if layer == deepest:
                raise _StopForward

        return hook

    handles = [lm.layers[layer].register_forward_hook(make_hook(layer)) for layer in layers]
    try:
        padded_forward(lm, rows)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    out: dict[int, list[Tensor]] = {}
    for layer in layers:
        hidden = captured[layer]
        out[layer] = [hidden[i, width - len(r) :].float().cpu() for i, r in enumerate(response_ids)]
    return out


def capture_activations(
    lm: LanguageModel,
    prompts: Sequence[str],
    responses: Sequence[str],
    layers: Sequence[int] | int,
    *,
    pooling: Pooling = "mean",
    batch_size: int = 16,
    system_prompt: str | None = None,
    progress: bool = True,
) -> dict[int, Tensor] | dict[int, list[Tensor]]:
    """Activations of ``lm`` on each (prompt, response) pair at the given layers.

    Returns ``{layer: Tensor[n, hidden]}`` (float32, CPU) for ``pooling="mean"`` (average over
    response tokens) or ``"last"`` (last response token); for ``pooling="none"``,
    ``{layer: [Tensor[len_i, hidden], ...]}``: the per-token activations of each response, whose
    lengths are the responses' token counts. An empty response has no tokens to pool and is an
    error with ``"mean"``/``"last"``.
    """
    prompts = validate_prompts(prompts)
    responses = validate_prompts(responses, name="responses") if len(responses) else list(responses)
    if len(responses) != len(prompts):
        raise ValueError(
            f"prompts and responses must have the same length, got {len(prompts)} prompts and {len(responses)} responses"
        )
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    wanted = validate_layers(lm, layers)
    prompt_ids = [lm.encode_prompt(p, system_prompt) for p in prompts]
    response_ids = [lm.encode_response(r) for r in responses]
    if pooling != "none":
        empty = [i for i, r in enumerate(response_ids) if not r]
        if empty:
            raise ValueError(
                f"responses {empty[:10]} are empty (no tokens), so they have no activations to "
                f"{pooling}-pool; drop them first or use pooling='none'"
            )
    _check_context(lm, [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)], 0, "prompt+response pairs")
    order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]) + len(response_ids[i]))
    per_token: dict[int, list[Tensor | None]] = {layer: [None] * len(prompts) for layer in wanted}
    with progress_bar(total=len(order), desc="capturing activations", unit="pair", enabled=progress) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            got = _capture_batch(lm, [prompt_ids[i] for i in chunk], [response_ids[i] for i in chunk], wanted)
            for layer, tensors in got.items():
                for i, tensor in zip(chunk, tensors):
                    per_token[layer][i] = tensor
            bar.update(len(chunk))
    if pooling == "none":
        return {layer: [t for t in tensors if t is not None] for layer, tensors in per_token.items()}
    pool = (lambda t: t.mean(dim=0)) if pooling == "mean" else (lambda t: t[-1])
    return {layer: torch.stack([pool(t) for t in tensors if t is not None]) for layer, tensors in per_token.items()}
