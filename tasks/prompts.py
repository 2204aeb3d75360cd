"""The prompts phase: the run's split (iteration 0) and each iteration's training sample."""

from __future__ import annotations

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from sims_core.prompts import PromptRecord, make_prompt_records, sample_prompts, split_prompts
from storage import load_prompt_table
from tasks.phase import PhaseContext, phase_logger, run_phase

__all__ = ["SAMPLE_FIELDS", "SPLIT_FIELDS", "prompts_phase"]

SPLIT_FIELDS = ("prompts", "prompt_column", "prompt_split", "eval_fraction", "val_fraction", "seed")
SAMPLE_FIELDS = ("num_prompts", "seed")


def _frame(records) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt_id": [r.prompt_id for r in records],
            "prompt": [r.prompt for r in records],
            "split": [r.split for r in records],
            "category": [r.category or "" for r in records],
        }
    )


@task(name="prompts", cache_policy=NO_CACHE)
def prompts_phase(ctx: PhaseContext, split_uri: str | None = None) -> str:
    """Iteration 0: load the prompt source and split it into train / val / eval. Iteration t:
    choose the iteration's N training prompts from the split (seeded by run seed and iteration)."""
    if ctx.iteration == 0:
        result = run_phase(ctx, "prompts", depends_on=SPLIT_FIELDS, inputs={}, compute=lambda: _split(ctx))
    else:
        if split_uri is None:
            raise ValueError(f"iteration {ctx.iteration} prompts need the split of iteration 0 (split_uri)")
        result = run_phase(
            ctx,
            "prompts",
            depends_on=SAMPLE_FIELDS,
            inputs={"split": split_uri},
            compute=lambda: _sample(ctx, split_uri),
        )
    return result.state(result.uri)


def _split(ctx: PhaseContext) -> dict:
    cfg = ctx.config
    log = phase_logger()
    source = load_prompt_table(cfg.prompts, column=cfg.prompt_column, split=cfg.prompt_split)
    records, report = make_prompt_records(source.texts, source.categories)
    if report.n_dropped:
        log.warning("prompts from %s: %s", cfg.prompts, report.message)
    records = split_prompts(
        records,
        eval_fraction=cfg.eval_fraction,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        allow_empty_splits=False,  # a run needs all three; the advice must be one the config accepts
    )
    counts = pd.Series([r.split for r in records]).value_counts().to_dict()
    log.info("prompts: %d from %s, split %s", len(records), cfg.prompts, counts)
    return {"prompts": ctx.store.write_table(ctx.uri("prompts", iteration=0), _frame(records), "prompts")}


def _sample(ctx: PhaseContext, split_uri: str) -> dict:
    cfg = ctx.config
    frame = ctx.store.read_frame(split_uri, "prompts")
    train = frame[frame["split"] == "train"]
    records = [
        PromptRecord(r.prompt_id, r.prompt, r.category or None, r.split)
        for r in train[["prompt_id", "prompt", "category", "split"]].itertuples(index=False)
    ]
    sample = sample_prompts(records, cfg.num_prompts, seed=cfg.seed, iteration=ctx.iteration)
    if sample.shortfall:
        phase_logger().warning("iteration %d: %s", ctx.iteration, sample.message)
    return {"prompts": ctx.store.write_table(ctx.uri("prompts"), _frame(sample.records), "prompts")}
