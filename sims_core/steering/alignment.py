"""Preparing training pairs: token alignment of responses, and validation of activations.

`align_pairs` turns per-response token activations (``capture_activations(...,
pooling="none")``) of a preferred and a disfavoured response to the same prompt into row-aligned
pairs, as HPR trains on them: position t of one response with position t of the other, up to the
shorter length, skipping positions whose two vectors are nearly identical (shared prefixes, where
there is nothing to contrast). What is skipped is counted and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["AlignStats", "align_pairs", "validate_activations"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlignStats:
    """What `align_pairs` kept and skipped.

    Attributes:
        responses: response pairs given.
        positions: positions compared (sum of the shorter lengths).
        kept: aligned pairs returned.
        skipped_identical: positions skipped as nearly identical.
        unpaired_tokens: tokens beyond the shorter response of each pair (not used).
    """

    responses: int
    positions: int
    kept: int
    skipped_identical: int
    unpaired_tokens: int


def _check_tokens(name: str, index: int, t: object, hidden: int | None) -> Tensor:
    if not isinstance(t, Tensor) or t.dim() != 2:
        shape = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{name}[{index}] must be a tensor [tokens, hidden], got {shape}")
    if hidden is not None and t.shape[1] != hidden:
        raise ValueError(f"{name}[{index}] has hidden size {t.shape[1]}, expected {hidden} like {name}[0]")
    if not t.is_floating_point():
        raise ValueError(f"{name}[{index}] must be floating point, got {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}[{index}] contains NaN or infinite values")
    return t


def _align_one(
    pos_tokens: Sequence[Tensor], neg_tokens: Sequence[Tensor], ident_threshold: float, rtol: float, atol: float
) -> tuple[Tensor, Tensor, AlignStats]:
    if isinstance(pos_tokens, Tensor) or isinstance(neg_tokens, Tensor):
        raise TypeError(
            "pos_tokens and neg_tokens must be lists of per-response tensors [len_i, hidden], not one tensor"
        )
    if len(pos_tokens) != len(neg_tokens):
        raise ValueError(
            f"pos_tokens has {len(pos_tokens)} responses but neg_tokens has {len(neg_tokens)}; they must pair one to one"
        )
    if len(pos_tokens) == 0:
        raise ValueError("pos_tokens and neg_tokens are empty: give at least one response pair")
    hidden = None
    kept_pos: list[Tensor] = []
    kept_neg: list[Tensor] = []
    positions = skipped = unpaired = 0
    for i, (p, n) in enumerate(zip(pos_tokens, neg_tokens)):
        p = _check_tokens("pos_tokens", i, p, hidden)
        hidden = p.shape[1]
        n = _check_tokens("neg_tokens", i, n, hidden)
        m = min(p.shape[0], n.shape[0])
        unpaired += p.shape[0] + n.shape[0] - 2 * m
        positions += m
        if m == 0:
            continue
        a, b = p[:m].float(), n[:m].float()
        equal = torch.isclose(a, b, rtol=rtol, atol=atol).float().mean(dim=-1)
        keep = equal < ident_threshold
        skipped += int((~keep).sum())
        kept_pos.append(a[keep])
        kept_neg.append(b[keep])
    stats = AlignStats(len(pos_tokens), positions, positions - skipped, skipped, unpaired)
    if stats.kept == 0:
        raise ValueError(
            f"no aligned pairs left: {stats.positions} positions compared, {stats.skipped_identical} skipped as nearly "
            f"identical (ident_threshold={ident_threshold})"
        )
    return torch.cat(kept_pos), torch.cat(kept_neg), stats


def align_pairs(
    pos_tokens: Sequence[Tensor] | Mapping[int, Sequence[Tensor]],
    neg_tokens: Sequence[Tensor] | Mapping[int, Sequence[Tensor]],
    ident_threshold: float = 0.75,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    return_stats: bool = False,
):
    """Align token activations of paired responses into rows ``[n, hidden]``.

    Args:
        pos_tokens / neg_tokens: lists (one entry per response pair, same order) of
            ``Tensor[len_i, hidden]``; or ``{layer: list}`` to align several layers at once
            (then ``{layer: Tensor}`` dicts are returned).
        ident_threshold: a position is skipped when at least this fraction of its coordinates
            are equal in the two responses (``torch.isclose`` with ``rtol``/``atol``).
        return_stats: also return the `AlignStats` (per layer for dict input).

    Returns:
        ``(pos, neg)`` (float32), row i of ``pos`` pairing with row i of ``neg``, and the
        stats when ``return_stats``.
    """
    if not (isinstance(ident_threshold, (int, float)) and 0.0 < ident_threshold <= 1.0):
        raise ValueError(f"ident_threshold must be a fraction in (0, 1], got {ident_threshold!r}")
    if isinstance(pos_tokens, Mapping) or isinstance(neg_tokens, Mapping):
        if not (isinstance(pos_tokens, Mapping) and isinstance(neg_tokens, Mapping)):
            raise TypeError("pos_tokens and neg_tokens must both be lists or both be {layer: list} dicts")
        if set(pos_tokens) != set(neg_tokens):
            raise ValueError(
                f"pos_tokens has layers {sorted(pos_tokens)} but neg_tokens has layers {sorted(neg_tokens)}; they must match"
            )
        out_pos, out_neg, all_stats = {}, {}, {}
        for layer in sorted(pos_tokens):
            out_pos[layer], out_neg[layer], all_stats[layer] = _align_one(
                pos_tokens[layer], neg_tokens[layer], ident_threshold, rtol, atol
            )
            _log_stats(all_stats[layer], f"layer {layer}")
        return (out_pos, out_neg, all_stats) if return_stats else (out_pos, out_neg)
    pos, neg, stats = _align_one(pos_tokens, neg_tokens, ident_threshold, rtol, atol)
    _log_stats(stats, "")
    return (pos, neg, stats) if return_stats else (pos, neg)


def _log_stats(stats: AlignStats, where: str) -> None:
    log.info(
        "align_pairs%s: %d response pairs, %d aligned positions, %d kept, %d skipped as nearly identical, "
        "%d tokens beyond the shorter response unused",
        f" ({where})" if where else "",
        stats.responses,
        stats.positions,
        stats.kept,
        stats.skipped_identical,
        stats.unpaired_tokens,
    )


def validate_activations(
    pos: Mapping[int, Tensor], neg: Mapping[int, Tensor], *, paired: bool, learner: str
) -> tuple[dict[int, Tensor], dict[int, Tensor], int]:
    """Check ``{layer: Tensor[n, hidden]}`` activations; return float32 copies (usable for
    autograd even when captured under inference mode) and the hidden size."""
    for name, value in (("pos", pos), ("neg", neg)):
        if not isinstance(value, Mapping) or not value:
            raise TypeError(f"{name} must be a non-empty dict {{layer: Tensor[n, hidden]}}, got {type(value).__name__}")
    if set(pos) != set(neg):
        only_pos, only_neg = sorted(set(pos) - set(neg)), sorted(set(neg) - set(pos))
        detail = "; ".join(
            s
            for s in (
                f"layer(s) {only_pos} are in pos but missing from neg" if only_pos else "",
                f"layer(s) {only_neg} are in neg but missing from pos" if only_neg else "",
            )
            if s
        )
        raise ValueError(f"pos and neg must have the same layers: {detail}")
    hidden: int | None = None
    out_pos: dict[int, Tensor] = {}
    out_neg: dict[int, Tensor] = {}
    for layer in sorted(pos):
        if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
            raise ValueError(f"layer keys must be non-negative integers, got {layer!r}")
        for name, source, target in (("pos", pos, out_pos), ("neg", neg, out_neg)):
            t = source[layer]
            if not isinstance(t, Tensor) or t.dim() != 2 or t.shape[0] == 0:
                shape = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"{name}[{layer}] must be a non-empty tensor [n, hidden], got {shape}")
            if not t.is_floating_point():
                raise ValueError(f"{name}[{layer}] must be floating point, got {t.dtype}")
            if hidden is None:
                hidden = int(t.shape[1])
            elif t.shape[1] != hidden:
                raise ValueError(f"{name}[{layer}] has hidden size {t.shape[1]}, but other activations have {hidden}")
            if not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).any(dim=-1).sum())
                raise ValueError(f"{name}[{layer}] contains NaN or infinite values ({bad} of {t.shape[0]} rows)")
            target[layer] = t.detach().to(device="cpu", dtype=torch.float32).clone()
        if paired and out_pos[layer].shape[0] != out_neg[layer].shape[0]:
            raise ValueError(
                f"learner {learner!r} needs paired rows, but pos[{layer}] has {out_pos[layer].shape[0]} rows and "
                f"neg[{layer}] has {out_neg[layer].shape[0]} (use align_pairs for token activations)"
            )
    assert hidden is not None
    return out_pos, out_neg, hidden
