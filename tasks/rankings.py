"""The rankings phase: the training oracle scores the K answers of every prompt."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from sims_core.preferences import ranks
from sims_core.sharding import shard_groups
from storage import shard_phase
from tasks.generations import prompt_groups
from tasks.phase import PhaseContext, phase_logger, run_phase
from tasks.runtime import runtime

__all__ = ["RANKING_FIELDS", "rankings_phase"]

RANKING_FIELDS = ("oracle", "oracle_options", "model", "system_prompt")


@task(name="rankings", cache_policy=NO_CACHE)
def rankings_phase(ctx: PhaseContext, generations_uri: str, prompts_uri: str, shard: int = 0, shards: int = 1) -> str:
    """Score every answer of one generations artifact (ranking shard i reads generations shard i)
    with the training oracle; rank 0 is the best of its prompt. The oracle scores the prompts in
    the canonical groups generation used, so scores do not depend on the number of shards."""
    phase = shard_phase("rankings", shard, shards)

    def compute():
        cfg = ctx.config
        runtime().setup(cfg)
        frame = ctx.store.read_frame(generations_uri, "generations").sort_values(["prompt_id", "sample_index"])
        lm = runtime().model(cfg)
        prompt_table = ctx.store.read_frame(prompts_uri, "prompts")
        batches = [
            prompt_table["prompt_id"].iloc[g].tolist()
            for g in shard_groups(prompt_groups(lm, prompt_table, cfg), shard, shards)
        ]
        by_prompt = dict(list(frame.groupby("prompt_id", sort=False)))
        expected = {pid for batch in batches for pid in batch}
        if set(by_prompt) != expected:
            raise ValueError(
                f"{generations_uri} answers prompts {sorted(set(by_prompt) ^ expected)[:3]}... that "
                f"{phase} of {prompts_uri} does not (or the reverse): was it written for another shard plan?"
            )
        groups = [(pid, by_prompt[pid]) for batch in batches for pid in batch]
        oracle = runtime().oracle(cfg.oracle, cfg.oracle_options, lm)
        scores: list[list[float]] = []
        with runtime().exclusive(lm):
            for batch in batches:  # the batches generation used, whatever the number of shards
                scores += oracle.score(
                    [by_prompt[pid]["prompt"].iloc[0] for pid in batch],
                    [by_prompt[pid]["text"].tolist() for pid in batch],
                )
        rows = []
        for (prompt_id, group), prompt_scores in zip(groups, scores):
            for sample_index, score, rank in zip(group["sample_index"], prompt_scores, ranks(prompt_scores)):
                rows.append(
                    {
                        "prompt_id": prompt_id,
                        "sample_index": int(sample_index),
                        "score": float(score),
                        "rank": rank,
                        "oracle": oracle.name,
                    }
                )
        mean = sum(row["score"] for row in rows) / len(rows) if rows else float("nan")
        phase_logger().info(
            "iteration %d %s: oracle %s mean score %.4f over %d answers",
            ctx.iteration,
            phase,
            oracle.name,
            mean,
            len(rows),
        )
        return {"rankings": ctx.store.write_table(ctx.uri(phase), rows, "rankings")}

    result = run_phase(
        ctx,
        phase,
        depends_on=RANKING_FIELDS,
        inputs={"generations": generations_uri, "prompts": prompts_uri},
        compute=compute,
    )
    return result.state(result.uri)
