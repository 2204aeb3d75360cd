"""The lineage phases of a run that advances a lineage (config ``lineage``).

- ``lineage`` (iteration 0): a snapshot of the lineage as the run starts: its current steering
  (pi_0 of this run: iteration 1 samples with it and warm-starts from it), its memory bank, and the
  prompt ids earlier runs drew (this run draws others). The snapshot is an artifact of the run, so a
  resumed or retried run starts from the same state whatever happened to the lineage meanwhile.
- ``promotion`` (last iteration): the new steering against the one that was current, on the
  held-out prompts with the same seeds (against the base model when there was none), and the
  gate's decision (`sims_core.promotion`).
- `publish_night`: after the promotion phase, the lineage's record of the run, and when the gate
  says so, the new steering becomes current (`storage.lineage.Lineage.promote`). Idempotent: a run
  whose record exists is not published twice.
"""

from __future__ import annotations

import json

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from sims_core.evaluation import COMPARISON_NUMBERS, Comparison, compare, sample_conditions
from sims_core.promotion import promotion_decision
from storage.lineage import Lineage
from tasks.baseline import eval_judge, eval_prompts, eval_seed
from tasks.eval import eval_table, steered_answers, summary_from_eval
from tasks.phase import PhaseContext, phase_logger, run_phase
from tasks.runtime import load_steering, runtime

__all__ = ["lineage_phase", "promotion_phase", "publish_night"]

PROMOTION_FIELDS = ("promotion", "promotion_threshold", "judge", "judge_options", "seed", "model", "system_prompt")


@task(name="lineage", cache_policy=NO_CACHE)
def lineage_phase(ctx: PhaseContext) -> dict[str, str]:
    """Snapshot the lineage's current steering, memory bank and used prompt ids into the run."""

    def compute():
        assert ctx.config.lineage is not None  # the flow runs this phase only for a lineage
        snapshot, steering, bank = Lineage(ctx.store, ctx.config.lineage).snapshot()
        pointer, out = snapshot["current"], {}
        if steering is not None:
            out["steering"] = ctx.store.write_bytes(ctx.uri("steering", iteration=0), steering)
        if bank is not None:
            out["buffer"] = ctx.store.write_bytes(ctx.uri("buffer", iteration=0), bank)
        out["lineage"] = ctx.store.write_bytes(ctx.uri("lineage", ext="json", iteration=0), json.dumps(snapshot))
        phase_logger().info(
            "lineage %s: %s; %d prompt(s) drawn by earlier runs",
            snapshot["lineage"],
            f"starts from the steering of run {pointer['run_id']}" if pointer else "no current steering yet",
            len(snapshot["used_prompt_ids"]),
        )
        return out

    result = run_phase(ctx, "lineage", depends_on=("lineage",), inputs={}, compute=compute)
    return result.state(result.outputs)


@task(name="promotion", cache_policy=NO_CACHE)
def promotion_phase(
    ctx: PhaseContext, steering_uri: str, eval_uri: str, split_uri: str, current_uri: str | None
) -> dict:
    """The run's final steering against the lineage's current one (``current_uri``: the snapshot;
    None before the first promotion, then against the base model), and the gate's decision."""

    def compute():
        cfg = ctx.config
        store = ctx.store
        evaluation = store.read_frame(eval_uri, "eval")
        if current_uri is None:  # nothing current yet: the run's own comparison with the base model
            row = summary_from_eval(evaluation).set_index("condition").loc["steered"].to_dict()
            against, table = "the base model", evaluation[evaluation["condition"] == "steered"]
        else:
            lm = runtime().model(cfg)
            prompts = eval_prompts(store.read_frame(split_uri, "prompts"), cfg)
            texts = prompts["prompt"].tolist()
            judge_name, refs = eval_judge(prompts, cfg)
            with runtime().exclusive(lm):
                current, _ = sample_conditions(
                    lm,
                    texts,
                    load_steering(store, current_uri, lm),
                    controls=(),
                    num_samples=cfg.eval_samples,
                    sampling=cfg.sampling,
                    seed=eval_seed(cfg),
                    positions=cfg.positions,
                )
            candidate = steered_answers(evaluation, texts, cfg.eval_samples)
            judge = runtime().oracle(judge_name, cfg.judge_options, lm)
            rows, summary_frame, _, _ = compare(
                judge, [Comparison("vs_current", texts, candidate, current["steered"], refs)], seed=eval_seed(cfg)
            )
            row = summary_frame.iloc[0].to_dict()
            against, table = "the current steering", eval_table(summary_frame, rows)
        promote, reason = promotion_decision(row, cfg.promotion, cfg.promotion_threshold, against)
        phase_logger().info("lineage %s, run %s: %s", cfg.lineage, ctx.run_id, reason)
        decision = pd.DataFrame(
            {
                "kind": "decision",
                "condition": "vs_current",
                "metric": ["promote", "against"],
                "value": [float(promote), None],
                "text": [reason, against],
            }
        )
        frame = pd.concat([table, decision], ignore_index=True)
        return {"promotion": store.write_table(ctx.uri("promotion"), frame, "eval")}

    inputs = {"steering": steering_uri, "eval": eval_uri, "split": split_uri}
    if current_uri is not None:
        inputs["current"] = current_uri
    result = run_phase(ctx, "promotion", depends_on=PROMOTION_FIELDS, inputs=inputs, compute=compute)
    return result.state(result.uri)


def read_decision(frame: pd.DataFrame) -> tuple[bool, str, dict]:
    """(promote, reason, comparison numbers) from a promotion artifact."""
    decision = frame[frame["kind"] == "decision"].set_index("metric")
    summary = frame[frame["kind"] == "summary"]
    numbers = {
        r.metric: r.value
        for r in summary.itertuples(index=False)
        if r.metric in COMPARISON_NUMBERS and r.condition in ("vs_current", "steered")
    }
    return (
        bool(decision.loc["promote", "value"]),
        str(decision.loc["promote", "text"]),
        numbers | {"against": str(decision.loc["against", "text"])},
    )


@task(name="publish", cache_policy=NO_CACHE)
def publish_night(
    ctx: PhaseContext, promotion_uri: str, steering_uri: str, buffer_uri: str, split_uri: str, snapshot: dict[str, str]
) -> dict:
    """Record the run in its lineage and, when the gate said so, make its steering current."""
    cfg = ctx.config
    store = ctx.store
    assert cfg.lineage is not None  # the flow runs this phase for lineage runs only
    lineage = Lineage(store, cfg.lineage)
    existing = lineage.night(ctx.run_id)
    if existing is not None:
        phase_logger().info("lineage %s: run %s is already recorded (%s)", lineage.name, ctx.run_id, existing["reason"])
        return existing
    promote, reason, numbers = read_decision(store.read_frame(promotion_uri, "eval"))
    start = json.loads(store.read_bytes(snapshot["lineage"]))
    split = store.read_frame(split_uri, "prompts")
    record = {
        "lineage": lineage.name,
        "iteration": ctx.iteration,
        "prompts": int(len(split)),
        "started_from": (start.get("current") or {}).get("run_id"),
        "comparison": numbers,
        "promoted": promote,
        "reason": reason,
    }
    if promote:
        pointer = lineage.promote(
            ctx.run_id,
            ctx.iteration,
            store.read_bytes(steering_uri),
            store.read_bytes(buffer_uri),
            {
                **numbers,
                "reason": reason,
                "model": ctx.config.model,
                "learner": ctx.config.learner,
            },
            (start.get("current") or {}).get("sha256"),
        )
        record["sha256"] = pointer["sha256"]
    lineage.record_night(ctx.run_id, record, split["prompt_id"].tolist())
    phase_logger().info("lineage %s, run %s: %s", lineage.name, ctx.run_id, reason)
    return record
