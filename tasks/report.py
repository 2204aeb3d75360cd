"""The run's Markdown report and plot: the verdict with its numbers and CIs, controls, best-of-N,
iteration over iteration, and one row per iteration."""

from __future__ import annotations

import io

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from sims_core.evaluation import COMPARISON_NUMBERS, CONTROLS
from tasks.eval import summary_from_eval
from tasks.phase import PhaseContext

__all__ = ["iteration_table", "render_report", "write_report"]


CONDITIONS = ("steered", "previous_iteration", *CONTROLS, "best_of_n")
_PER_CONDITION = (*COMPARISON_NUMBERS, "prompts", "verdict")
_STEERED_ONLY = (
    "lc_win_rate",
    "lc_ci_low",
    "lc_ci_high",
    "mean_length",
    "reference_mean_length",
    "truncated",
    "judge",
    "judge_matched_rate",
    "verdict_basis",
)


def _value(summary: pd.DataFrame, condition: str, metric: str) -> object:
    value = summary.loc[condition].get(metric, float("nan"))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def iteration_table(ctx: PhaseContext, iterations: int) -> pd.DataFrame:
    """One row per evaluated iteration: the training samples' oracle score, pairs, the steering
    chosen, and per judged condition (``steered`` unprefixed; ``previous_iteration_``,
    ``random_direction_``, ``low_temperature_``, ``best_of_n_``) its win rate and paired score
    effect with their 95% CIs, the number of comparisons and the verdict."""
    store = ctx.store
    manifest = ctx.manifest()
    rows = []
    for t in range(1, iterations + 1):
        entry = manifest.entry(t, "eval")
        if entry is None or entry.status != "completed":
            continue
        row: dict = {"iteration": t}
        rankings = manifest.shard_uris(t, "rankings")
        if rankings:
            row["oracle_score"] = float(store.read_frames(rankings, "rankings")["score"].mean())
        buffer = manifest.entry(t, "buffer")
        if buffer:
            row["pairs"] = buffer.rows
        if manifest.entry(t, "steering"):
            selection = store.read_frame(manifest.output_uri(t, "steering", "selection"), "selection")
            chosen = selection[selection["chosen"]].iloc[0]
            row["layers"] = chosen["layers"]
            row["alpha"] = float(chosen["alpha"])
            row["val_score_unsteered"] = float(selection["value"].iloc[0])
            row["val_score_chosen"] = float(chosen["value"])
        summary = summary_from_eval(store.read_frame(manifest.output_uri(t, "eval"), "eval")).set_index("condition")
        for condition in (c for c in CONDITIONS if c in summary.index):
            prefix = "" if condition == "steered" else f"{condition}_"
            metrics = _PER_CONDITION + (_STEERED_ONLY if condition == "steered" else ())
            row |= {f"{prefix}{metric}": _value(summary, condition, metric) for metric in metrics}
        rows.append(row)
    return pd.DataFrame(rows)


def _pct(row: pd.Series, prefix: str = "") -> str:
    return (
        f"{row[f'{prefix}win_rate']:.1%} (95% CI {row[f'{prefix}ci_low']:.1%} to {row[f'{prefix}ci_high']:.1%}, "
        f"n={int(row[f'{prefix}n'])})"
    )


def _effect(row: pd.Series, prefix: str = "") -> str:
    return f"{row[f'{prefix}effect']:+.4f} (95% CI {row[f'{prefix}effect_ci_low']:+.4f} to {row[f'{prefix}effect_ci_high']:+.4f})"


def render_report(run_id: str, config: dict, table: pd.DataFrame, plot_name: str | None) -> str:
    """The Markdown report of a run."""
    lines = [f"# SIMS run `{run_id}`", ""]
    lines.append(
        f"Model `{config['model']}`, learner `{config['learner']}`, oracle `{config['oracle']}`; "
        f"{config['num_prompts']} prompts x {config['num_samples']} samples per iteration, "
        f"{config['max_new_tokens']} new tokens, temperature {config['temperature']}, seed {config['seed']}."
    )
    lines.append("")
    if table.empty:
        lines.append("No iteration has been evaluated yet.")
        return "\n".join(lines) + "\n"
    last = table.iloc[-1]
    t = int(last["iteration"])
    basis = "paired score effect" if last.get("verdict_basis") == "paired_effect" else "win rate"
    lines += [
        f"## Iteration {t} vs the base model",
        "",
        f"Held-out prompts answered by pi_{t} and by the base model with the same per-sample seeds, judged by "
        f"`{last.get('judge')}` (not the training oracle). The verdict rests on the {basis}.",
        "",
        f"**{last['verdict']}**",
        "",
        f"- Paired score effect (judge score of the steered answer minus the base answer's): {_effect(last)}",
        f"- Held-out win rate vs the base model (ties count 1/2): {_pct(last)}",
    ]
    if pd.notna(last.get("previous_iteration_win_rate", float("nan"))):
        lines.append(
            f"- vs iteration {t - 1} (same prompts and seeds): win rate {_pct(last, 'previous_iteration_')}, "
            f"effect {_effect(last, 'previous_iteration_')}: {last['previous_iteration_verdict']}"
        )
    lines += ["", "Beside it, judged against the same base answers:", ""]
    labels = {
        "random_direction": "control: a random direction of the same size",
        "low_temperature": f"control: the unsteered model at temperature {config.get('control_temperature')}",
        "best_of_n": f"best-of-{config.get('best_of_n')}: the training oracle picks one of "
        f"{config.get('best_of_n')} base samples (inference-time compute instead of steering)",
    }
    beside = [
        f"- {label}: win rate {_pct(last, f'{control}_')}, effect {_effect(last, f'{control}_')}"
        for control, label in labels.items()
        if pd.notna(last.get(f"{control}_win_rate", float("nan")))
    ]
    lines += beside or ["- (controls and best-of-N run with the last iteration's evaluation)"]
    lines += [
        "",
        f"Length-controlled win rate {last['lc_win_rate']:.1%} (95% CI {last['lc_ci_low']:.1%} to "
        f"{last['lc_ci_high']:.1%}): the same comparisons refit with the answers' length difference as a "
        "covariate, so it is not a second confirmation; on a few hundred comparisons its interval is wide.",
        "",
        "## Per iteration",
        "",
        "Iteration t's oracle score is that of the samples of pi_{t-1} (iteration 1: the base model).",
        "",
    ]
    columns = [c for c in table.columns if not c.endswith("verdict") and c not in ("judge", "verdict_basis")]
    shown_table = table[columns]
    try:
        lines.append(shown_table.to_markdown(index=False, floatfmt=".4f"))
    except ImportError:  # pandas needs the optional tabulate package for Markdown tables
        lines.append("```\n" + shown_table.to_string(index=False) + "\n```")
    if plot_name:
        lines += ["", f"![oracle score and win rate per iteration]({plot_name})"]
    return "\n".join(lines) + "\n"


def _plot(table: pd.DataFrame) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    if "oracle_score" in table:
        left.plot(table["iteration"], table["oracle_score"], marker="o")
    left.set(title="training oracle score of samples", xlabel="iteration")
    right.errorbar(
        table["iteration"],
        table["win_rate"],
        yerr=[table["win_rate"] - table["ci_low"], table["ci_high"] - table["win_rate"]],
        marker="o",
        capsize=3,
        label="steered",
    )
    for control in ("random_direction", "low_temperature", "best_of_n"):
        column = f"{control}_win_rate"
        if column in table:
            right.scatter(table["iteration"], table[column], marker="x", label=control.replace("_", " "))
    right.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    right.set(title="held-out win rate vs base", xlabel="iteration", ylim=(0, 1))
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.set_xticks(list(table["iteration"]))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


@task(name="report", cache_policy=NO_CACHE)
def write_report(ctx: PhaseContext, iterations: int) -> dict:
    """Write ``report.md`` and ``report.png`` in the run folder; return the iteration table."""
    store = ctx.store
    table = iteration_table(ctx, iterations)
    plot_name = None
    if not table.empty:
        plot_name = "report.png"
        store.write_bytes(store.report_uri(ctx.run_id, plot_name), _plot(table))
    text = render_report(ctx.run_id, ctx.config.to_dict(), table, plot_name)
    uri = store.report_uri(ctx.run_id)
    store.write_bytes(uri, text)
    return {"report": uri, "markdown": text, "table": table.to_dict(orient="records")}
