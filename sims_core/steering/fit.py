"""`fit_steering`: choose layers and fit one learner on preferred vs disfavoured activations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from sims_core.models import LanguageModel
from sims_core.progress import progress_bar
from sims_core.steering.alignment import validate_activations
from sims_core.steering.learners import get_learner, layer_seed
from sims_core.steering.selection import choose_layers, holdout_split
from sims_core.steering.steering_set import ModelIdentity, SteeringSet

__all__ = ["fit_steering", "score_layers"]


def score_layers(
    learner: Any,
    pos: Mapping[int, Tensor],
    neg: Mapping[int, Tensor],
    layers: Sequence[int],
    *,
    holdout: float,
    seed: int,
) -> dict[int, float]:
    """Held-out score of each layer: fit the learner's scorer on the kept pairs, score it on
    the held-out ones. Paired rows are split together; the split is the same for every layer
    with the same row counts."""
    scores: dict[int, float] = {}
    for layer in layers:
        p, n = pos[layer], neg[layer]
        if learner.paired:
            train, test = holdout_split(
                p.shape[0], holdout, torch.Generator().manual_seed(layer_seed(seed, 0, "holdout"))
            )
            scores[layer] = float(learner.score(p[train], n[train], p[test], n[test]))
        else:
            gen = torch.Generator().manual_seed(layer_seed(seed, 0, "holdout"))
            ptr, pte = holdout_split(p.shape[0], holdout, gen)
            ntr, nte = holdout_split(n.shape[0], holdout, gen)
            scores[layer] = float(learner.score(p[ptr], n[ntr], p[pte], n[nte]))
    return scores


def fit_steering(
    learner: str,
    pos: Mapping[int, Tensor],
    neg: Mapping[int, Tensor],
    layers: Sequence[int] | None = None,
    top_k: int | None = 4,
    seed: int = 0,
    warm_start: SteeringSet | None = None,
    *,
    min_score: float | None = None,
    holdout: float = 0.2,
    model: LanguageModel | ModelIdentity | None = None,
    alpha: float = 1.0,
    metadata: Mapping[str, Any] | None = None,
    progress: bool = True,
    **options: Any,
) -> SteeringSet:
    """Fit steering functions with the learner named ``learner``.

    Args:
        learner: ``"hpr"`` (default in SIMS), ``"mean_diff"``, ``"linear_shift"`` or any
            registered learner.
        pos / neg: ``{layer: Tensor[n, hidden]}``; row i of ``pos`` pairs with row i of ``neg``
            (token-aligned with `align_pairs` for HPR). ``"mean_diff"`` also accepts unpaired
            (e.g. mean-pooled) rows of different counts.
        layers: candidate layers (default: every layer in ``pos``).
        top_k: keep the ``top_k`` best-scoring candidates (None: all that pass ``min_score``).
        seed: seeds the held-out split, initialisation and shuffling (fits are bit-identical
            for the same seed and inputs).
        warm_start: a previous `SteeringSet` of the same learner; layers it has start from
            its functions.
        min_score: keep only candidates whose held-out score is at least this.
        holdout: fraction of the pairs held out to score layers; the chosen layers are then
            fitted on all pairs.
        model: the base model (or its `ModelIdentity`), recorded so the set cannot be applied
            to another model by mistake; required to save the set (or use ``s.bind(lm)``).
        alpha: the set's default strength.
        metadata: JSON-serialisable extras stored with the set.
        progress: show a progress bar.
        **options: the learner's options (e.g. HPR: lr, epochs, batch_size, warmup, schedule,
            depth, activation); an unknown one is an error listing the allowed ones.
    """
    spec = get_learner(learner)(**options)
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if min_score is not None and not isinstance(min_score, (int, float)):
        raise ValueError(f"min_score must be a number or None, got {min_score!r}")
    if not (isinstance(holdout, (int, float)) and 0.0 < holdout < 1.0):
        raise ValueError(f"holdout must be a fraction in (0, 1), got {holdout!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    pos_f, neg_f, hidden = validate_activations(pos, neg, paired=spec.paired, learner=learner)
    if layers is None:
        candidates = sorted(pos_f)
    else:
        if isinstance(layers, int) or isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
            raise ValueError(f"layers must be a non-empty list of layer indices or None, got {layers!r}")
        missing = [layer for layer in layers if layer not in pos_f]
        if missing:
            raise ValueError(
                f"layer(s) {missing} were asked for but are missing from pos and neg (which have {sorted(pos_f)})"
            )
        candidates = sorted(set(layers))
    identity = ModelIdentity.of(model) if isinstance(model, LanguageModel) else model
    if identity is not None:
        if identity.hidden_size != hidden:
            raise ValueError(
                f"the activations have hidden size {hidden} but {identity.name} has {identity.hidden_size}"
            )
        beyond = [layer for layer in candidates if layer >= identity.num_layers]
        if beyond:
            raise ValueError(f"layer(s) {beyond} do not exist in {identity.name} (layers 0..{identity.num_layers - 1})")
    if warm_start is not None:
        if not isinstance(warm_start, SteeringSet):
            raise TypeError(f"warm_start must be a SteeringSet or None, got {type(warm_start).__name__}")
        if warm_start.learner != learner:
            raise ValueError(f"cannot warm-start learner {learner!r} from a {warm_start.learner!r} steering set")
        if warm_start.hidden_size != hidden:
            raise ValueError(f"warm_start has hidden size {warm_start.hidden_size} but the activations have {hidden}")

    scores = score_layers(spec, pos_f, neg_f, candidates, holdout=holdout, seed=seed)
    chosen = choose_layers(scores, top_k, min_score)
    total = sum(spec.steps(pos_f[layer].shape[0], neg_f[layer].shape[0]) for layer in chosen)
    functions = {}
    with progress_bar(
        total=total, desc=f"fitting {learner} on {len(chosen)} layer(s)", unit="step", enabled=progress
    ) as bar:
        for layer in chosen:
            init = warm_start.functions.get(layer) if warm_start is not None else None
            functions[layer] = spec.fit_layer(
                pos_f[layer], neg_f[layer], seed=layer_seed(seed, layer), init=init, on_step=bar.update
            )
    selection = {
        "candidates": candidates,
        "top_k": top_k,
        "min_score": min_score,
        "holdout": holdout,
        "seed": seed,
        "pairs": {str(layer): [int(pos_f[layer].shape[0]), int(neg_f[layer].shape[0])] for layer in chosen},
        "warm_start": warm_start is not None,
    }
    return SteeringSet(
        learner=learner,
        functions=functions,
        hidden_size=hidden,
        layer_scores=scores,
        default_positions=spec.default_positions,
        alpha=float(alpha),
        model=identity,
        options=spec.options(),
        selection=selection,
        metadata=dict(metadata or {}),
    )
