"""The steering phase: fit the steering functions of iteration t and choose their strength."""

from __future__ import annotations

import dataclasses

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from sims_core.seeding import derive_seed
from sims_core.steering import fit_steering
from sims_core.steering.strength import select_strength
from tasks.phase import PhaseContext, phase_logger, run_phase, shard_inputs
from tasks.runtime import load_steering, runtime

__all__ = ["STEERING_FIELDS", "steering_phase"]

STEERING_FIELDS = (
    "learner",
    "learner_options",
    "layers",
    "top_k",
    "alphas",
    "max_nll_increase",
    "warm_start",
    "positions",
    "oracle",
    "oracle_options",
    "max_val_prompts",
    "max_new_tokens",
    "temperature",
    "top_p",
    "seed",
    "model",
    "system_prompt",
)


@task(name="steering", cache_policy=NO_CACHE)
def steering_phase(
    ctx: PhaseContext, activations_uris: list[str], split_uri: str, previous_steering_uri: str | None
) -> dict[str, str]:
    """Fit the learner on the activations (every shard, merged in pair-id order; warm-started from
    iteration t-1), then try the alpha grid on the validation prompts and keep the strength the
    training oracle likes best."""

    def compute():
        cfg = ctx.config
        log = phase_logger()
        store = ctx.store
        lm = runtime().model(cfg)
        layers = store.activation_layers(activations_uris)
        pos, neg = {}, {}
        for layer in layers:
            chosen, rejected, _ = store.load_activation_pairs(activations_uris, layer)
            pos[layer], neg[layer] = torch.from_numpy(chosen).float(), torch.from_numpy(rejected).float()
        warm = load_steering(store, previous_steering_uri, lm) if (cfg.warm_start and previous_steering_uri) else None
        if warm is not None and warm.learner != cfg.learner:
            log.warning(
                "warm start skipped: iteration %d used learner %s, this one uses %s",
                ctx.iteration - 1,
                warm.learner,
                cfg.learner,
            )
            warm = None
        fitted = fit_steering(
            cfg.learner,
            pos,
            neg,
            layers=layers,
            top_k=min(cfg.top_k, len(layers)),
            seed=derive_seed(cfg.seed, ctx.iteration, "fit"),
            warm_start=warm,
            model=lm,
            metadata={"iteration": ctx.iteration, "run_id": ctx.run_id},
            **cfg.learner_options,
        )
        if cfg.positions is not None:
            fitted = dataclasses.replace(fitted, default_positions=cfg.positions)
        log.info(
            "iteration %d: %s fitted on %d pairs; layer scores %s; kept %s",
            ctx.iteration,
            cfg.learner,
            len(next(iter(pos.values()))),
            {k: round(v, 3) for k, v in fitted.layer_scores.items()},
            fitted.layers,
        )

        split = store.read_frame(split_uri, "prompts")
        val = split[split["split"] == "val"]["prompt"].tolist()[: cfg.max_val_prompts]
        selection = select_strength(
            lm,
            fitted,
            val,
            runtime().oracle(cfg.oracle, cfg.oracle_options, lm),
            alphas=cfg.alpha_grid,
            max_nll_increase=cfg.max_nll_increase,
            positions=cfg.positions,
            seed=derive_seed(cfg.seed, ctx.iteration, "select"),
            sampling=cfg.sampling,
        )
        rows = selection.rows
        chosen_row = next(row for row in rows if row["chosen"])
        if selection.disabled:
            log.warning(
                "iteration %d: no strength kept the answers fluent (NLL within %.2f nats of unsteered %.3f): "
                "steering is off (alpha 0) this iteration",
                ctx.iteration,
                cfg.max_nll_increase,
                rows[0]["nll"],
            )
        log.info(
            "iteration %d: strength selection on %d validation prompts (unsteered score %.4f, NLL %.3f): chose "
            "layers %s alpha %g (score %.4f, NLL %.3f)",
            ctx.iteration,
            len(val),
            rows[0]["score"],
            rows[0]["nll"],
            selection.steering.layers,
            selection.steering.alpha,
            chosen_row["score"],
            chosen_row["nll"],
        )
        kept = dataclasses.replace(
            selection.steering,
            selection={**selection.steering.selection, "alpha_grid": list(cfg.alpha_grid), "candidates": rows},
        )
        return {
            "steering": store.write_bytes(ctx.uri("steering"), kept.to_bytes()),
            "selection": store.write_table(
                ctx.uri("selection"),
                [{**row, "metric": "val_score", "value": row["score"]} for row in rows],
                "selection",
            ),
        }

    inputs = shard_inputs("activations", activations_uris) | {"split": split_uri}
    if ctx.config.warm_start and previous_steering_uri:
        inputs["previous_steering"] = previous_steering_uri
    result = run_phase(ctx, "steering", depends_on=STEERING_FIELDS, inputs=inputs, compute=compute)
    return result.state(result.outputs)
