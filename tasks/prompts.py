"""The prompts phase: the run's split (iteration 0) and each iteration's training sample."""

from __future__ import annotations

import json

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from sims_core.errors import UserError
from sims_core.oracles import oracle_info
from sims_core.prompts import (
    PromptRecord,
    make_prompt_records,
    records_to_rows,
    sample_prompts,
    split_prompts,
    unused_prompts,
)
from storage import load_prompt_table
from tasks.phase import PhaseContext, phase_logger, run_phase

__all__ = ["SAMPLE_FIELDS", "SPLIT_FIELDS", "prompts_phase"]

SPLIT_FIELDS = ("prompts", "prompt_column", "reference_column", "prompt_split", "eval_fraction", "val_fraction", "seed")
SAMPLE_FIELDS = ("num_prompts", "seed")
PROMPT_COLUMNS = ("prompt_id", "prompt", "category", "split", "reference")


@task(name="prompts", cache_policy=NO_CACHE)
def prompts_phase(ctx: PhaseContext, split_uri: str | None = None, lineage_uri: str | None = None) -> str:
    """Iteration 0: load the prompt source and split it into train / val / eval (for a lineage run,
    only prompts no earlier run of the lineage drew, at most ``lineage_prompts``). Iteration t:
    choose the iteration's N training prompts from the split (seeded by run seed and iteration)."""
    if ctx.iteration == 0:
        result = run_phase(
            ctx,
            "prompts",
            depends_on=SPLIT_FIELDS + ("lineage_prompts",),
            inputs={"lineage": lineage_uri} if lineage_uri else {},
            compute=lambda: _split(ctx, lineage_uri),
        )
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


def _split(ctx: PhaseContext, lineage_uri: str | None) -> dict:
    cfg = ctx.config
    log = phase_logger()
    source = load_prompt_table(
        cfg.prompts,
        column=cfg.prompt_column,
        reference_column=cfg.reference_column,
        split=cfg.prompt_split,
        require_reference=cfg.judge != "auto" and oracle_info(cfg.judge).needs_reference,
    )
    records, report = make_prompt_records(source.texts, source.categories, source.references)
    if report.n_dropped:
        log.warning("prompts from %s: %s", cfg.prompts, report.message)
    if lineage_uri is not None:
        used = json.loads(ctx.store.read_bytes(lineage_uri))["used_prompt_ids"]
        fresh, new = unused_prompts(records, used, cfg.lineage_prompts)
        log.info(
            "lineage %s: %d of %d prompts from %s are new (earlier runs drew %d); this run draws %d",
            cfg.lineage,
            new,
            len(records),
            cfg.prompts,
            len(used),
            len(fresh),
        )
        if not fresh:
            raise UserError(
                f"lineage {cfg.lineage!r}: every prompt of {cfg.prompts!r} was drawn by an earlier run; add new "
                "prompts to the source (a file, folder or glob that grows with new traffic)"
            )
        records = fresh
    records = split_prompts(
        records,
        eval_fraction=cfg.eval_fraction,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        allow_empty_splits=False,  # a run needs all three; the advice must be one the config accepts
    )
    counts = pd.Series([r.split for r in records]).value_counts().to_dict()
    log.info("prompts: %d from %s, split %s", len(records), cfg.prompts, counts)
    return {"prompts": ctx.store.write_table(ctx.uri("prompts", iteration=0), records_to_rows(records), "prompts")}


def _sample(ctx: PhaseContext, split_uri: str) -> dict:
    cfg = ctx.config
    frame = ctx.store.read_frame(split_uri, "prompts")
    train = frame[frame["split"] == "train"]
    columns = train[list(PROMPT_COLUMNS)].astype(object)
    records = [PromptRecord(**row) for row in columns.where(columns.notna(), None).to_dict("records")]
    sample = sample_prompts(records, cfg.num_prompts, seed=cfg.seed, iteration=ctx.iteration)
    if sample.shortfall:
        phase_logger().warning("iteration %d: %s", ctx.iteration, sample.message)
    return {"prompts": ctx.store.write_table(ctx.uri("prompts"), records_to_rows(sample.records), "prompts")}
