"""Applying steering to a model's residual stream through forward hooks.

`steer(lm, steering, alpha=..., positions=...)` edits the output of decoder blocks and returns a
`SteeringHandle`; used as a context manager it removes every hook it added on exit, leaving the
model exactly as it was. ``steering`` is either

- a mapping ``{layer: edit}`` where an edit is a vector ``[hidden]`` (added as ``h + alpha * v``)
  or a callable ``h -> h'`` on ``[..., hidden]`` tensors, or
- any object with a ``steering_edits(lm, alpha)`` method returning such a mapping and a
  ``default_positions`` attribute (a fitted `SteeringSet` is one).

Which token positions are edited is decided per forward pass from the attention mask that the
model receives, so steering is correct under left padding, batching and the KV cache (where a
decoding step sees one new token per sequence). Padding positions are never edited.

positions:
    ``"all"``: every real token of every forward (prompt and generated).
    ``"prompt"``: only the tokens of the first forward of a sequence (the prefill).
    ``"generated"``: only tokens processed after the prefill (decoding steps).
    ``"last"``: only the newest real token of each forward (the last prompt token during the
    prefill, then each new token), as HPR does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from sims_core.models import LanguageModel

__all__ = ["POSITIONS", "Positions", "SteeringHandle", "SteeringSource", "steer"]

Positions = Literal["all", "prompt", "generated", "last"]
POSITIONS: tuple[str, ...] = ("all", "prompt", "generated", "last")
Edit = Tensor | Callable[[Tensor], Tensor]


@runtime_checkable
class SteeringSource(Protocol):
    """Something that can be turned into per-layer edits for a given model (e.g. SteeringSet)."""

    default_positions: str

    def steering_edits(self, lm: LanguageModel, alpha: float) -> Mapping[int, Edit]: ...


@dataclass
class _ForwardState:
    """What the current forward pass looks like: which positions are real tokens and whether
    it is the prefill (no cached past) or a decoding step."""

    real: Tensor | None = None  # [batch, seq] bool, None when unknown (assume all real)
    prefill: bool = True
    seen: bool = False  # False: no forward of the whole model is in progress


def _seq_len(args: tuple, kwargs: dict[str, Any]) -> int | None:
    for key in ("input_ids", "inputs_embeds"):
        value = kwargs.get(key)
        if isinstance(value, Tensor):
            return int(value.shape[1])
    if args and isinstance(args[0], Tensor) and args[0].dim() >= 2:
        return int(args[0].shape[1])
    return None


def _past_len(kwargs: dict[str, Any]) -> int:
    past = kwargs.get("past_key_values")
    if past is None:
        return 0
    if hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    if isinstance(past, (tuple, list)) and past and isinstance(past[0], (tuple, list)):
        return int(past[0][0].shape[-2])
    return 0


def _replace_hidden(output: Any, hidden: Tensor) -> Any:
    if isinstance(output, Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    raise TypeError(f"unexpected decoder block output of type {type(output).__name__}")


def _hidden_of(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"unexpected decoder block output of type {type(output).__name__}")


def _as_edit(layer: int, edit: Any, lm: LanguageModel, alpha: float) -> Callable[[Tensor, Tensor | None], Tensor]:
    """Normalise one edit into fn(hidden [b, s, d], selected [b, s] bool | None) -> hidden."""
    if isinstance(edit, Tensor):
        if edit.dim() != 1 or edit.shape[0] != lm.hidden_size:
            raise ValueError(
                f"steering vector for layer {layer} must have shape [{lm.hidden_size}] (the model's "
                f"hidden size), got {list(edit.shape)}"
            )
        vector = (alpha * edit.detach().to(device=lm.device, dtype=torch.float32)).to(lm.dtype)

        def add(hidden: Tensor, selected: Tensor | None) -> Tensor:
            if selected is None:
                return hidden + vector
            return hidden + vector * selected.unsqueeze(-1).to(hidden.dtype)

        return add
    if callable(edit):
        if alpha != 1.0:
            raise ValueError(
                f"alpha={alpha} cannot scale the callable given for layer {layer}; scale inside the "
                "callable, or pass a vector or a SteeringSet"
            )
        fn = edit

        def apply(hidden: Tensor, selected: Tensor | None) -> Tensor:
            if selected is None:
                return fn(hidden).to(hidden.dtype)
            out = hidden.clone()
            out[selected] = fn(hidden[selected]).to(hidden.dtype)
            return out

        return apply
    raise TypeError(f"steering for layer {layer} must be a tensor or a callable, got {type(edit).__name__}")


@dataclass
class SteeringHandle:
    """The hooks one `steer` call added. ``remove()`` (or leaving the ``with`` block) takes all
    of them off; ``apply()`` puts them back on the same model."""

    lm: LanguageModel
    edits: dict[int, Callable[[Tensor, Tensor | None], Tensor]]
    positions: str
    _hooks: list[RemovableHandle] = field(default_factory=list)
    _state: _ForwardState = field(default_factory=_ForwardState)

    @property
    def active(self) -> bool:
        return bool(self._hooks)

    @property
    def layers(self) -> list[int]:
        return sorted(self.edits)

    def apply(self) -> SteeringHandle:
        if self._hooks:
            return self
        model = self.lm.model
        self._hooks.append(model.register_forward_pre_hook(self._before_forward, with_kwargs=True))
        self._hooks.append(model.register_forward_hook(self._after_forward))
        for layer, fn in self.edits.items():
            self._hooks.append(self.lm.layers[layer].register_forward_hook(self._layer_hook(fn)))
        return self

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._state = _ForwardState()

    def __enter__(self) -> SteeringHandle:
        return self.apply()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # -- hooks -----------------------------------------------------------------------------
    def _before_forward(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        seq = _seq_len(args, kwargs)
        mask = kwargs.get("attention_mask")
        past = _past_len(kwargs)
        real = None
        if isinstance(mask, Tensor) and mask.dim() == 2 and seq is not None:
            real = mask[:, -seq:].bool()
            past = max(past, int(mask.shape[1]) - seq)
        self._state = _ForwardState(real=real, prefill=past == 0, seen=True)

    def _after_forward(self, module: Any, args: tuple, output: Any) -> None:
        self._state = _ForwardState()

    def _selected(self, hidden: Tensor) -> Tensor | None:
        """Positions to edit in this forward ([b, s] bool), or None for every position."""
        state = self._state
        batch, seq = hidden.shape[0], hidden.shape[1]
        real = state.real
        if real is not None and tuple(real.shape) != (batch, seq):
            real = None  # a forward we did not see start (e.g. a direct call into a block)
        prefill = state.prefill if state.seen else seq > 1
        if (
            self.positions == "all"
            or (self.positions == "prompt" and prefill)
            or (self.positions == "generated" and not prefill)
        ):
            return None if real is None or bool(real.all()) else real
        if self.positions in ("prompt", "generated"):
            return torch.zeros(batch, seq, dtype=torch.bool, device=hidden.device)
        # "last": the newest real token of each sequence in this forward.
        if real is None:
            selected = torch.zeros(batch, seq, dtype=torch.bool, device=hidden.device)
            selected[:, -1] = True
            return selected
        index = torch.arange(seq, device=hidden.device).expand(batch, seq)
        last = torch.where(real, index, torch.full_like(index, -1)).max(dim=1).values
        selected = index == last.unsqueeze(1)
        return selected & real

    def _layer_hook(self, fn: Callable[[Tensor, Tensor | None], Tensor]):
        def hook(module: Any, args: tuple, output: Any) -> Any:
            hidden = _hidden_of(output)
            selected = self._selected(hidden)
            if selected is not None and not bool(selected.any()):
                return output
            return _replace_hidden(output, fn(hidden, selected))

        return hook


def steer(
    lm: LanguageModel,
    steering: Mapping[int, Edit] | SteeringSource,
    *,
    alpha: float = 1.0,
    positions: Positions | None = None,
) -> SteeringHandle:
    """Steer ``lm`` until the returned handle is removed (or its ``with`` block ends).

    Args:
        lm: the model to steer.
        steering: ``{layer: vector | callable}`` or a `SteeringSet` (anything with
            ``steering_edits``). Vectors are cast to the model's dtype and device.
        alpha: strength; multiplies vectors, and is passed to a SteeringSet.
        positions: ``"all"``, ``"prompt"``, ``"generated"`` or ``"last"`` (see the module
            docstring). Default: the SteeringSet's own default, else ``"all"``.
    """
    if isinstance(steering, SteeringSource):
        raw = dict(steering.steering_edits(lm, alpha))
        default_positions = steering.default_positions
        edit_alpha = 1.0  # the source has applied alpha itself
    elif isinstance(steering, Mapping):
        raw = dict(steering)
        default_positions = "all"
        edit_alpha = alpha
    else:
        raise TypeError(
            f"steering must be a mapping {{layer: vector or callable}} or a SteeringSet, got {type(steering).__name__}"
        )
    chosen = positions if positions is not None else default_positions
    if chosen not in POSITIONS:
        raise ValueError(f"positions must be one of {list(POSITIONS)}, got {chosen!r}")
    if not raw:
        raise ValueError("steering is empty: give at least one layer")
    edits = {}
    for layer, edit in raw.items():
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < lm.num_layers:
            raise ValueError(f"steering layer {layer!r} is out of range: {lm.name} has layers 0..{lm.num_layers - 1}")
        edits[layer] = _as_edit(layer, edit, lm, edit_alpha)
    return SteeringHandle(lm=lm, edits=edits, positions=chosen).apply()
