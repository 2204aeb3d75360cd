"""The generations phase: the policy pi_{t-1} samples K answers per prompt."""

from __future__ import annotations

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from sims_core import generate
from sims_core.config import SimsConfig
from sims_core.progress import progress_bar
from sims_core.seeding import derive_seed
from sims_core.sharding import canonical_groups, shard_groups
from storage import shard_phase
from tasks.phase import PhaseContext, run_phase
from tasks.runtime import load_steering, policy, runtime

__all__ = ["GENERATION_FIELDS", "generation_rows", "generations_phase", "prompt_groups"]

GENERATION_FIELDS = (
    "model",
    "device",
    "dtype",
    "system_prompt",
    "num_samples",
    "max_new_tokens",
    "temperature",
    "top_p",
    "seed",
    "positions",
)


def generation_rows(prompts: pd.DataFrame, generations) -> list[dict]:
    """One row per (prompt, sample) of the ``generations`` artifact."""
    return [
        {
            "prompt_id": prompt_id,
            "prompt": prompt,
            "sample_index": index,
            "text": g.text,
            "num_tokens": g.num_tokens,
            "finish_reason": g.finish_reason,
            "seed": g.seed,
        }
        for (prompt_id, prompt), samples in zip(prompts[["prompt_id", "prompt"]].itertuples(index=False), generations)
        for index, g in enumerate(samples)
    ]


def prompt_groups(lm, prompts: pd.DataFrame, cfg: SimsConfig) -> list[list[int]]:
    """The iteration's prompts cut into canonical groups of ``batch_size // num_samples`` prompts
    (one generation batch each), by prompt length then id (see `sims_core.sharding`)."""
    lengths = [len(lm.encode_prompt(p)) for p in prompts["prompt"]]
    return canonical_groups(prompts["prompt_id"].tolist(), lengths, max(1, cfg.batch_size // cfg.num_samples))


@task(name="generations", cache_policy=NO_CACHE)
def generations_phase(
    ctx: PhaseContext, prompts_uri: str, steering_uri: str | None, shard: int = 0, shards: int = 1
) -> str:
    """Sample ``num_samples`` answers to each of the iteration's prompts (those of ``shard`` when
    the phase is split in ``shards``) with pi_{t-1}."""
    phase = shard_phase("generations", shard, shards)

    def compute():
        cfg = ctx.config
        runtime().setup(cfg)
        lm = runtime().model(cfg)
        prompts = ctx.store.read_frame(prompts_uri, "prompts")
        groups = shard_groups(prompt_groups(lm, prompts, cfg), shard, shards)
        steering = load_steering(ctx.store, steering_uri, lm) if steering_uri else None
        order = [i for group in groups for i in group]
        out = []
        desc = "generating" if shards == 1 else f"generating ({phase})"
        with (
            runtime().exclusive(lm),
            policy(lm, steering, cfg.positions),
            progress_bar(total=len(order) * cfg.num_samples, desc=desc, unit="answer") as bar,
        ):
            for group in groups:  # one batch each: the same batches whatever the number of shards
                out += generate(
                    lm,
                    prompts["prompt"].iloc[group].tolist(),
                    num_samples=cfg.num_samples,
                    sampling=cfg.sampling,
                    seed=derive_seed(cfg.seed, ctx.iteration, "generations"),
                    progress=False,
                )
                bar.update(len(group) * cfg.num_samples)
        rows = generation_rows(prompts.iloc[order], out)
        return {"generations": ctx.store.write_table(ctx.uri(phase), rows, "generations")}

    inputs = {"prompts": prompts_uri} | ({"steering": steering_uri} if steering_uri else {})
    result = run_phase(ctx, phase, depends_on=GENERATION_FIELDS, inputs=inputs, compute=compute)
    return result.state(result.uri)
