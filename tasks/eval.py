"""The eval phase: held-out evaluation of pi_t against the base model, judged by the evaluation judge."""

from __future__ import annotations

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from sims_core.evaluation import CONTROLS, evaluate
from sims_core.seeding import derive_seed
from tasks.phase import PhaseContext, phase_logger, run_phase
from tasks.runtime import load_steering, runtime

__all__ = ["EVAL_FIELDS", "eval_phase", "summary_from_eval"]

EVAL_FIELDS = (
    "judge",
    "judge_options",
    "eval_samples",
    "max_eval_prompts",
    "max_new_tokens",
    "temperature",
    "top_p",
    "control_temperature",
    "seed",
    "model",
    "system_prompt",
    "positions",
)
_METRICS = (
    "win_rate",
    "ci_low",
    "ci_high",
    "lc_win_rate",
    "mean_score",
    "reference_mean_score",
    "mean_length",
    "reference_mean_length",
    "truncated",
    "distinct_2",
    "reference_distinct_2",
    "judge_matched_rate",
    "judge_order_agreement",
    "n",
)


def summary_from_eval(frame: pd.DataFrame) -> pd.DataFrame:
    """The eval artifact's summary rows as a wide table: one row per condition."""
    part = frame[frame["kind"] == "summary"]
    return part.pivot_table(index="condition", columns="metric", values="value", sort=False, dropna=False).reset_index()


@task(name="eval", cache_policy=NO_CACHE)
def eval_phase(ctx: PhaseContext, steering_uri: str, split_uri: str, with_controls: bool) -> str:
    """pi_t vs the base model on the eval split (same seeds on both sides, several samples per
    prompt); with controls, also a same-norm random direction and a lower temperature."""

    def compute():
        cfg = ctx.config
        lm = runtime().model(cfg)
        store = ctx.store
        split = store.read_frame(split_uri, "prompts")
        prompts = split[split["split"] == "eval"]["prompt"].tolist()[: cfg.max_eval_prompts]
        steering = load_steering(store, steering_uri, lm)
        judge = runtime().oracle(cfg.judge, cfg.judge_options, lm)
        result = evaluate(
            lm,
            prompts,
            steering,
            judge=judge,
            positions=cfg.positions,
            num_samples=cfg.eval_samples,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=derive_seed(cfg.seed, 0, "eval"),
            batch_size=cfg.batch_size,
            controls=CONTROLS if with_controls else (),
            control_temperature=cfg.control_temperature,
            sanity=with_controls,  # the judge's sanity figures only depend on the base model's answers
        )
        log = phase_logger()
        for note in result.notes:
            log.info("iteration %d evaluation: %s", ctx.iteration, note)
        summary = result.summary
        for row in summary.itertuples(index=False):
            log.info(
                "iteration %d %s: win rate %.3f [%.3f, %.3f], length-controlled %.3f, judge %s",
                ctx.iteration,
                row.condition,
                row.win_rate,
                row.ci_low,
                row.ci_high,
                row.lc_win_rate,
                row.judge,
            )
        long = [
            {"kind": "summary", "condition": row["condition"], "metric": metric, "value": float(row[metric])}
            for _, row in summary.iterrows()
            for metric in _METRICS
            if metric in summary.columns
        ]
        rows = result.rows.rename(columns={"preference": "value"}).assign(kind="comparison", metric="preference")
        table = pd.concat([pd.DataFrame(long), rows], ignore_index=True)
        for column in ("prompt", "response", "reference", "response_finish", "reference_finish"):
            table[column] = table[column].fillna("").astype(str)
        return {"eval": store.write_table(ctx.uri("eval"), table, "eval")}

    result = run_phase(
        ctx,
        "eval",
        depends_on=EVAL_FIELDS,
        inputs={"steering": steering_uri, "split": split_uri},
        compute=compute,
        extra_key={"controls": bool(with_controls)},
    )
    return result.state(result.uri)
