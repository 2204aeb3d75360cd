"""The buffer phase: rankings become preference pairs, merged into the contrast-sampling bank."""

from __future__ import annotations

import hashlib

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from sims_core.errors import UserError
from sims_core.preferences import PreferenceBuffer, PreferencePair, pairs_from_scores
from sims_core.prompts import prompt_id
from tasks.phase import PhaseContext, phase_logger, run_phase, shard_inputs

__all__ = ["BUFFER_FIELDS", "buffer_phase", "pair_id", "pairs_from_frame"]

BUFFER_FIELDS = ("pair_strategy", "pairs_per_prompt", "min_margin", "memory", "buffer_budget")


def pair_id(prompt: str, chosen: str, rejected: str) -> str:
    return hashlib.sha256(f"{prompt}\x1f{chosen}\x1f{rejected}".encode()).hexdigest()[:16]


def pairs_from_frame(frame: pd.DataFrame) -> list[PreferencePair]:
    return [
        PreferencePair(
            prompt=r.prompt,
            chosen=r.chosen,
            rejected=r.rejected,
            margin=float(r.margin),
            iteration=int(r.source_iteration),
            source=r.source,
            chosen_score=float(r.chosen_score),
            rejected_score=float(r.rejected_score),
        )
        for r in frame.itertuples(index=False)
    ]


@task(name="buffer", cache_policy=NO_CACHE)
def buffer_phase(
    ctx: PhaseContext, generations_uris: list[str], rankings_uris: list[str], previous_buffer_uri: str | None
) -> str:
    """Best-vs-worst (or top-m vs bottom-m) pairs of this iteration, merged with the previous
    iteration's bank (when ``memory``) and cut to the highest-margin ``buffer_budget`` pairs.
    Reads every shard of the generations and rankings phases and merges them in prompt-id order."""

    def compute():
        cfg = ctx.config
        store = ctx.store
        gens = store.read_frames(generations_uris, "generations")
        ranks = store.read_frames(rankings_uris, "rankings")
        merged = gens.merge(ranks, on=["prompt_id", "sample_index"], how="inner", validate="one_to_one")
        if len(merged) != len(gens):
            raise ValueError(
                f"the rankings {rankings_uris} score {len(merged)} of the {len(gens)} answers in "
                f"the generations {generations_uris}"
            )
        merged = merged.sort_values(["prompt_id", "sample_index"])
        groups = [g for _, g in merged.groupby("prompt_id", sort=False)]
        empty = int((merged["text"].str.strip() == "").sum())
        pairset = pairs_from_scores(
            [g["prompt"].iloc[0] for g in groups],
            [g["text"].tolist() for g in groups],
            [g["score"].tolist() for g in groups],
            strategy=cfg.pair_strategy,
            m=cfg.pairs_per_prompt,
            iteration=ctx.iteration,
            oracle=cfg.oracle,
        )
        usable = [p for p in pairset.pairs if p.chosen.strip() and p.rejected.strip()]
        skipped = dict(pairset.skipped)
        if len(usable) < len(pairset.pairs):
            skipped["empty_answer"] = len(pairset.pairs) - len(usable)
        bank = PreferenceBuffer(budget=cfg.buffer_budget, min_margin=cfg.min_margin)
        if cfg.memory and previous_buffer_uri:
            bank.pairs = pairs_from_frame(store.read_frame(previous_buffer_uri, "buffer"))
        report = bank.update(usable, ctx.iteration)
        phase_logger().info(
            "iteration %d buffer: %d new pairs from %d prompts (%d empty answers; skipped %s); bank keeps %d "
            "(%d new), dropped %s",
            ctx.iteration,
            len(usable),
            pairset.prompts,
            empty,
            skipped or "none",
            report.kept,
            report.new_kept,
            report.dropped or "none",
        )
        if not bank.pairs:
            raise UserError(
                f"iteration {ctx.iteration}: no preference pairs survived (skipped {skipped}, dropped "
                f"{report.dropped}); the oracle {cfg.oracle!r} may score every answer alike, or min_margin="
                f"{cfg.min_margin} is too high"
            )
        rows = [
            {
                "pair_id": pair_id(p.prompt, p.chosen, p.rejected),
                "prompt_id": prompt_id(p.prompt),
                "prompt": p.prompt,
                "chosen": p.chosen,
                "rejected": p.rejected,
                "margin": p.margin,
                "source_iteration": p.iteration,
                "source": p.source,
                "chosen_score": p.chosen_score,
                "rejected_score": p.rejected_score,
            }
            for p in bank.pairs
        ]
        return {"buffer": store.write_table(ctx.uri("buffer"), rows, "buffer")}

    inputs = shard_inputs("generations", generations_uris) | shard_inputs("rankings", rankings_uris)
    if ctx.config.memory and previous_buffer_uri:
        inputs["previous_buffer"] = previous_buffer_uri
    result = run_phase(ctx, "buffer", depends_on=BUFFER_FIELDS, inputs=inputs, compute=compute)
    return result.state(result.uri)
