"""The baseline phase (iteration 0): the base model's answers to the held-out prompts, sampled once
per run, and the best-of-N candidates.

Every iteration's eval compares pi_t with these same answers (same prompts, same per-sample
seeds), so they are generated once instead of once per iteration. The best-of-N line draws K more
base samples per prompt (other seeds) for the first ``best_of_n_prompts`` held-out prompts and
records which one the training oracle picks: what the same oracle reaches at inference time,
with K times the compute, instead of steering.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from sims_core import generate
from sims_core.config import SimsConfig
from sims_core.evaluation import best_of_n
from sims_core.generation import Generation
from sims_core.oracles import oracle_info
from sims_core.seeding import derive_seed
from tasks.generations import generation_rows
from tasks.phase import PhaseContext, phase_logger, run_phase
from tasks.runtime import runtime

__all__ = ["BASELINE_FIELDS", "baseline_answers", "baseline_phase", "eval_prompts", "eval_seed"]

BASELINE_FIELDS = (
    "model",
    "device",
    "dtype",
    "system_prompt",
    "eval_samples",
    "max_eval_prompts",
    "max_new_tokens",
    "temperature",
    "top_p",
    "seed",
    "best_of_n",
    "best_of_n_prompts",
    "oracle",
    "oracle_options",
)


def eval_seed(config: SimsConfig) -> int:
    """The seed of every held-out answer (baseline, steered, controls): sample s of prompt p gets
    the same generator on every side."""
    return derive_seed(config.seed, 0, "eval")


def eval_prompts(split: pd.DataFrame, config: SimsConfig) -> pd.DataFrame:
    """The held-out prompts the evaluation uses: the eval split, at most ``max_eval_prompts``."""
    return split[split["split"] == "eval"].head(config.max_eval_prompts).reset_index(drop=True)


def eval_judge(prompts: pd.DataFrame, config: SimsConfig) -> tuple[str, list[str] | None]:
    """The judge of the held-out ``prompts`` (``config.judge``; ``auto`` resolved on whether every
    prompt has a reference answer) and the references to give it (None when it needs none; the
    judge checks each one, naming a prompt whose reference is missing)."""
    references: list[Any] = prompts["reference"].tolist() if "reference" in prompts.columns else [None] * len(prompts)
    name = config.judge_for(all(isinstance(r, str) and r.strip() for r in references))
    return name, references if oracle_info(name).needs_reference else None


def _rows(prompts: pd.DataFrame, answers: list[list[Generation]], kind: str, **extra: list) -> list[dict]:
    """`generation_rows` of ``kind``, with extra columns given per answer (nested like ``answers``)."""
    flat = {key: [value for per_prompt in values for value in per_prompt] for key, values in extra.items()}
    return [
        row | {"kind": kind} | {key: values[j] for key, values in flat.items()}
        for j, row in enumerate(generation_rows(prompts, answers))
    ]


def baseline_answers(frame: pd.DataFrame, kind: str = "baseline") -> dict[str, list[Generation]]:
    """prompt_id -> its answers of ``kind`` in sample order, as `Generation` objects."""
    part = frame[frame["kind"] == kind].sort_values(["prompt_id", "sample_index"])
    return {
        pid: [
            Generation(text=r.text, num_tokens=int(r.num_tokens), finish_reason=r.finish_reason, seed=int(r.seed))
            for r in group.itertuples(index=False)
        ]
        for pid, group in part.groupby("prompt_id", sort=False)
    }


@task(name="baseline", cache_policy=NO_CACHE)
def baseline_phase(ctx: PhaseContext, split_uri: str) -> str:
    """The base model's ``eval_samples`` answers to each held-out prompt, and the best-of-N
    candidates with the training oracle's scores and choice."""

    def compute():
        cfg = ctx.config
        lm = runtime().model(cfg)
        prompts = eval_prompts(ctx.store.read_frame(split_uri, "prompts"), cfg)
        texts = prompts["prompt"].tolist()
        with runtime().exclusive(lm):
            answers = generate(
                lm, texts, num_samples=cfg.eval_samples, sampling=cfg.sampling, seed=eval_seed(cfg), progress=True
            )
            rows = _rows(
                prompts,
                answers,
                "baseline",
                oracle_score=[[None] * len(a) for a in answers],
                chosen=[[False] * len(a) for a in answers],
            )
            if cfg.best_of_n >= 2:
                head = prompts.head(cfg.best_of_n_prompts)
                oracle = runtime().oracle(cfg.oracle, cfg.oracle_options, lm)
                picked = best_of_n(
                    lm,
                    head["prompt"].tolist(),
                    oracle,
                    k=cfg.best_of_n,
                    sampling=cfg.sampling,
                    seed=derive_seed(cfg.seed, 0, "best_of_n"),
                )
                chosen = [[j == index for j in range(cfg.best_of_n)] for index in picked.index]
                rows += _rows(head, picked.candidates, "candidate", oracle_score=picked.scores, chosen=chosen)
        truncated = sum(g.finish_reason == "length" for row in answers for g in row) / max(1, sum(map(len, answers)))
        phase_logger().info(
            "baseline: %d held-out prompts x %d sample(s) (%.0f%% cut at %d tokens)%s",
            len(texts),
            cfg.eval_samples,
            100 * truncated,
            cfg.max_new_tokens,
            f"; best-of-{cfg.best_of_n} candidates for {min(len(texts), cfg.best_of_n_prompts)} prompts"
            if cfg.best_of_n >= 2
            else "",
        )
        return {"baseline": ctx.store.write_table(ctx.uri("baseline", iteration=0), rows, "baseline")}

    result = run_phase(ctx, "baseline", depends_on=BASELINE_FIELDS, inputs={"split": split_uri}, compute=compute)
    return result.state(result.uri)
