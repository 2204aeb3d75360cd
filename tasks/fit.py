"""Task: fit the steering functions of iteration t and choose their strength."""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from sims_core import generate
from sims_core.seeding import derive_seed
from sims_core.steering import SteeringSet, fit_steering
from tasks.phase import PhaseContext, phase_logger, run_phase
from tasks.runtime import base_model, load_steering, make_oracle, policy

__all__ = ["fit_steering_set", "FIT_FIELDS"]

FIT_FIELDS = ("learner", "learner_options", "layers", "top_k", "alphas", "warm_start", "positions", "oracle",
              "oracle_options", "max_val_prompts", "max_new_tokens", "temperature", "top_p", "seed", "model",
              "system_prompt")


def _candidates(steering: SteeringSet, cfg) -> list[tuple[tuple[int, ...], float]]:
    """(layers, alpha) pairs to try on the validation prompts. Mean-difference also tries each
    of its chosen layers alone, since one well-placed vector often beats several."""
    layer_sets = [tuple(steering.layers)]
    if steering.learner == "mean_diff" and len(steering.layers) > 1:
        ranked = sorted(steering.layers, key=lambda layer: -steering.layer_scores.get(layer, 0.0))
        layer_sets += [(layer,) for layer in ranked[:2]]
    return [(layers, alpha) for layers in layer_sets for alpha in cfg.alpha_grid]


def _restrict(steering: SteeringSet, layers: tuple[int, ...], alpha: float) -> SteeringSet:
    return dataclasses.replace(steering, functions={layer: steering[layer] for layer in layers}, alpha=float(alpha))


@task(name="fit-steering", cache_policy=NO_CACHE)
def fit_steering_set(ctx: PhaseContext, activations_uri: str, split_uri: str, previous_steering_uri: str | None) -> dict[str, str]:
    """Fit the learner on the activations (warm-started from iteration t-1), then try the alpha
    grid on the validation prompts and keep the strength the training oracle likes best."""

    def compute():
        cfg = ctx.cfg
        log = phase_logger()
        store = ctx.store
        lm = base_model(cfg)
        with store.activation_reader(activations_uri) as reader:
            layers = reader.layers
            pos, neg = {}, {}
            for layer in layers:
                chosen, rejected, _ = reader.load_pairs(layer)
                pos[layer], neg[layer] = torch.from_numpy(chosen).float(), torch.from_numpy(rejected).float()
        warm = load_steering(store, previous_steering_uri, lm) if (cfg.warm_start and previous_steering_uri) else None
        if warm is not None and warm.learner != cfg.learner:
            log.warning("warm start skipped: iteration %d used learner %s, this one uses %s", ctx.iteration - 1, warm.learner, cfg.learner)
            warm = None
        fitted = fit_steering(
            cfg.learner, pos, neg, layers=layers, top_k=min(cfg.top_k, len(layers)),
            seed=derive_seed(cfg.seed, ctx.iteration, "fit"), warm_start=warm, model=lm,
            metadata={"iteration": ctx.iteration, "run_id": ctx.run_id}, **cfg.learner_options,
        )
        if cfg.positions is not None:
            fitted = dataclasses.replace(fitted, default_positions=cfg.positions)
        log.info("iteration %d: %s fitted on %d pairs; layer scores %s; kept %s", ctx.iteration, cfg.learner,
                 len(next(iter(pos.values()))), {k: round(v, 3) for k, v in fitted.layer_scores.items()}, fitted.layers)

        split = store.read_frame(split_uri, "prompts")
        val = split[split["split"] == "val"]["prompt"].tolist()[: cfg.max_val_prompts]
        oracle = make_oracle(cfg.oracle, cfg.oracle_options, lm)
        seed = derive_seed(cfg.seed, ctx.iteration, "select")

        def val_answers(candidate: SteeringSet | None) -> list[str]:
            with policy(lm, candidate):
                answers = generate(lm, val, num_samples=1, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                   top_p=cfg.top_p, seed=seed, batch_size=cfg.batch_size, progress=False)
            return [row[0].text for row in answers]

        # Every candidate (and the unsteered model, alpha 0) answers each validation prompt with the
        # same seed; the oracle scores each prompt's answers together.
        candidates = [(layer_set, alpha, _restrict(fitted, layer_set, alpha)) for layer_set, alpha in _candidates(fitted, cfg)]
        answers = [val_answers(None)] + [val_answers(c) for _, _, c in candidates]
        scores = oracle.score(val, [list(group) for group in zip(*answers)])
        means = [float(sum(row[j] for row in scores) / len(scores)) for j in range(len(answers))]
        rows = [{"metric": "val_score", "value": means[0], "layers": "", "alpha": 0.0, "chosen": False}]
        for (layer_set, alpha, _), mean in zip(candidates, means[1:]):
            rows.append({"metric": "val_score", "value": mean, "layers": ",".join(map(str, layer_set)), "alpha": float(alpha), "chosen": False})
        best_index = max(range(len(candidates)), key=lambda j: (means[j + 1], -j))
        rows[best_index + 1]["chosen"] = True
        chosen = candidates[best_index][2]
        best = (means[best_index + 1], chosen)
        table = pd.DataFrame(rows)
        log.info("iteration %d: alpha selection on %d validation prompts (unsteered %.4f): chose layers %s alpha %g (%.4f)",
                 ctx.iteration, len(val), rows[0]["value"], chosen.layers, chosen.alpha, best[0])
        chosen = dataclasses.replace(chosen, selection={**chosen.selection, "alpha_grid": list(cfg.alpha_grid),
                                                        "val_scores": rows})
        return {
            "steering": store.write_bytes(ctx.uri("steering"), chosen.to_bytes()),
            "selection": store.write_table(ctx.uri("selection"), table, "eval"),
        }

    inputs = {"activations": activations_uri, "split": split_uri}
    if ctx.cfg.warm_start and previous_steering_uri:
        inputs["previous_steering"] = previous_steering_uri
    result = run_phase(ctx, "steering", depends_on=FIT_FIELDS, inputs=inputs, compute=compute)
    return result.outputs
