"""The eval phase: held-out evaluation of pi_t against the base model, judged by the evaluation judge
(not the training oracle): win rate and paired score effect with prompt-bootstrap CIs, the
iteration-over-iteration comparison, controls and the best-of-N line."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from sims_core.errors import UserError
from sims_core.evaluation import CONTROLS, Comparison, compare, sample_conditions
from sims_core.generation import Generation
from tasks.baseline import baseline_answers, eval_judge, eval_prompts, eval_seed
from tasks.phase import PhaseContext, phase_key, phase_logger, run_phase
from tasks.runtime import load_steering, runtime

__all__ = ["EVAL_FIELDS", "eval_phase", "eval_table", "summary_from_eval"]

EVAL_FIELDS = (
    "judge",
    "judge_options",
    "eval_samples",
    "max_eval_prompts",
    "max_new_tokens",
    "temperature",
    "top_p",
    "control_temperature",
    "reference_column",
    "seed",
    "model",
    "system_prompt",
    "positions",
)


def summary_from_eval(frame: pd.DataFrame) -> pd.DataFrame:
    """The eval artifact's summary rows as a wide table: one row per condition, numbers and text
    metrics (the verdict and what it rests on) side by side."""
    part = frame[frame["kind"] == "summary"]
    order = list(dict.fromkeys(part["condition"]))
    wide = part.pivot_table(index="condition", columns="metric", values="value", sort=False, dropna=False)
    if "text" in part.columns:
        texts = part[part["text"].notna()]
        for metric, group in texts.groupby("metric"):
            wide[metric] = group.set_index("condition")["text"].reindex(wide.index)
    wide = wide.reindex(order)
    wide.columns.name = None
    return wide.reset_index()


@task(name="eval", cache_policy=NO_CACHE)
def eval_phase(
    ctx: PhaseContext,
    steering_uri: str,
    split_uri: str,
    baseline_uri: str,
    previous_eval_uri: str | None = None,
    with_controls: bool = False,
) -> str:
    """pi_t vs the base model on the held-out prompts: the steered answers (same per-sample seeds
    as the cached baseline answers) judged against the baseline; against iteration t-1's answers
    (``previous_eval_uri``); and, with controls (the last iteration), a same-size random
    direction, a lower temperature and the best-of-N line, all against the same baseline."""

    def compute():
        cfg = ctx.config
        log = phase_logger()
        lm = runtime().model(cfg)
        store = ctx.store
        prompts = eval_prompts(store.read_frame(split_uri, "prompts"), cfg)
        texts = prompts["prompt"].tolist()
        judge_name, refs = eval_judge(prompts, cfg)
        judge = runtime().oracle(judge_name, cfg.judge_options, lm)
        cached = store.read_frame(baseline_uri, "baseline")
        base = baseline_answers(cached)
        baseline = [base[pid] for pid in prompts["prompt_id"]]
        steering = load_steering(store, steering_uri, lm)
        with runtime().exclusive(lm):
            conditions, notes = sample_conditions(
                lm,
                texts,
                steering,
                controls=CONTROLS if with_controls else (),
                num_samples=cfg.eval_samples,
                sampling=cfg.sampling,
                seed=eval_seed(cfg),
                positions=cfg.positions,
                control_temperature=cfg.control_temperature,
                unsteered=baseline,
            )
        comparisons = [Comparison("steered", texts, conditions["steered"], baseline, refs)]
        if previous_eval_uri is not None:
            previous_answers = steered_answers(store.read_frame(previous_eval_uri, "eval"), texts, cfg.eval_samples)
            previous = [[a.text for a in answers] for answers in previous_answers]  # judged as text, as it always was
            comparisons.append(Comparison("previous_iteration", texts, conditions["steered"], previous, refs))
        comparisons += [Comparison(c, texts, conditions[c], baseline, refs) for c in CONTROLS if c in conditions]
        if with_controls:
            chosen = baseline_answers(cached[cached["chosen"].fillna(False).astype(bool)], kind="candidate")
            keep = [i for i, pid in enumerate(prompts["prompt_id"]) if pid in chosen]
            if keep:
                comparisons.append(
                    Comparison(
                        "best_of_n",
                        [texts[i] for i in keep],
                        [chosen[prompts["prompt_id"][i]] for i in keep],
                        [baseline[i][:1] for i in keep],
                        [refs[i] for i in keep] if refs is not None else None,
                    )
                )
        rows, summary, _, more = compare(judge, comparisons, seed=eval_seed(cfg), sanity=with_controls)
        for note in notes + more:
            log.info("iteration %d evaluation: %s", ctx.iteration, note)
        for row in summary.itertuples(index=False):
            log.info(
                "iteration %d %s (n=%d): win rate %.3f [%.3f, %.3f]; score effect %+.4f [%+.4f, %+.4f]; %s",
                ctx.iteration,
                row.condition,
                row.n,
                row.win_rate,
                row.ci_low,
                row.ci_high,
                row.effect,
                row.effect_ci_low,
                row.effect_ci_high,
                row.verdict,
            )
        return {"eval": store.write_table(ctx.uri("eval"), eval_table(summary, rows), "eval")}

    inputs = {"steering": steering_uri, "split": split_uri, "baseline": baseline_uri}
    if previous_eval_uri is not None:
        inputs["previous_eval"] = previous_eval_uri
    # An eval computed with controls also serves when none are asked (a finished run that is
    # extended keeps its old final iteration's evaluation and controls).
    extra = {"controls": True} if with_controls or _has_controls(ctx) else {"controls": False}
    result = run_phase(ctx, "eval", depends_on=EVAL_FIELDS, inputs=inputs, compute=compute, extra_key=extra)
    return result.state(result.uri)


def _has_controls(ctx: PhaseContext) -> bool:
    """Whether this iteration's eval artifact was completed under the with-controls key."""
    entry = ctx.manifest().entry(ctx.iteration, "eval")
    return (
        entry is not None
        and entry.status == "completed"
        and entry.config_hash == phase_key(ctx, EVAL_FIELDS, {"controls": True})
    )


def steered_answers(frame: pd.DataFrame, prompts: list[str], samples: int) -> list[list[Generation]]:
    """The steered answers to ``prompts`` that an eval artifact judged, in sample order (an
    iteration's, read by the next one and by the promotion phase)."""
    part = frame[(frame["kind"] == "comparison") & (frame["condition"] == "steered")]
    by_key = {(r.prompt, int(r.sample)): r for r in part.itertuples(index=False)}
    missing = [p for p in prompts for s in range(samples) if (p, s) not in by_key]
    if missing:
        raise UserError(
            f"the previous iteration's evaluation lacks answers to {len(missing)} of these held-out prompts "
            f"(e.g. {missing[0][:60]!r}); was it evaluated with another eval split?"
        )

    def answer(r: Any) -> Generation:
        seed = int(r.seed) if pd.notna(r.seed) else 0
        return Generation(
            text=r.response, num_tokens=int(r.response_tokens), finish_reason=r.response_finish or "stop", seed=seed
        )

    return [[answer(by_key[(p, s)]) for s in range(samples)] for p in prompts]


def eval_table(summary: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """The eval artifact: one ``summary`` row per (condition, metric), text metrics (the verdict)
    in ``text``, then one ``comparison`` row per judged pair (its preference in ``value``)."""
    long = []
    for condition, metrics in summary.set_index("condition").to_dict("index").items():
        for metric, value in metrics.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            long.append(
                {
                    "kind": "summary",
                    "condition": condition,
                    "metric": metric,
                    "value": float(value) if number else None,
                    "text": None if number else str(value),
                }
            )
    comparisons = rows.rename(columns={"preference": "value"}).assign(kind="comparison", metric="preference")
    table = pd.concat([pd.DataFrame(long), comparisons], ignore_index=True)
    for column in ("prompt", "response", "reference", "response_finish", "reference_finish", "reference_answer"):
        if column in table.columns:
            table[column] = table[column].fillna("").astype(str)
    return table
