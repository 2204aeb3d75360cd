"""Task: the run's Markdown report and plot (oracle score and win rate per iteration)."""

from __future__ import annotations

import io

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from storage import Manifest
from tasks.eval import summary_from_eval
from tasks.phase import PhaseContext

__all__ = ["iteration_table", "render_report", "write_report"]


def iteration_table(ctx: PhaseContext, iterations: int) -> pd.DataFrame:
    """One row per finished iteration: samples' oracle score, pairs, steering choice, win rates."""
    store = ctx.store
    manifest = Manifest.load(store, ctx.run_id)
    rows = []
    for t in range(1, iterations + 1):
        entry = manifest.entry(t, "eval")
        if entry is None or entry.status != "completed":
            continue
        row: dict = {"iteration": t}
        rankings = manifest.shard_uris(t, "rankings")
        if rankings:
            row["oracle_score"] = float(store.read_frames(rankings, "rankings")["score"].mean())
        if manifest.entry(t, "buffer"):
            row["pairs"] = manifest.entry(t, "buffer").rows
        if manifest.entry(t, "steering"):
            selection = store.read_frame(manifest.output_uri(t, "steering", "selection"), "selection")
            chosen = selection[selection["chosen"]].iloc[0]
            row["layers"] = chosen["layers"]
            row["alpha"] = float(chosen["alpha"])
            row["val_score_unsteered"] = float(selection["value"].iloc[0])
            row["val_score_chosen"] = float(chosen["value"])
        summary = summary_from_eval(store.read_frame(manifest.output_uri(t, "eval"), "eval")).set_index("condition")
        for condition in summary.index:
            prefix = "" if condition == "steered" else f"{condition}_"
            row[f"{prefix}win_rate"] = float(summary.loc[condition, "win_rate"])
            if condition == "steered":
                for metric in (
                    "ci_low",
                    "ci_high",
                    "lc_win_rate",
                    "mean_length",
                    "reference_mean_length",
                    "judge_matched_rate",
                ):
                    row[metric] = float(summary.loc[condition].get(metric, float("nan")))
        rows.append(row)
    return pd.DataFrame(rows)


def render_report(run_id: str, config: dict, table: pd.DataFrame, plot_name: str | None) -> str:
    """The Markdown report of a run."""
    lines = [f"# SIMS run `{run_id}`", ""]
    lines.append(
        f"Model `{config['model']}`, learner `{config['learner']}`, oracle `{config['oracle']}`, judge "
        f"`{config['judge']}`; {config['num_prompts']} prompts x {config['num_samples']} samples per iteration, "
        f"{config['max_new_tokens']} new tokens, temperature {config['temperature']}, seed {config['seed']}."
    )
    lines.append("")
    if table.empty:
        lines.append("No iteration has been evaluated yet.")
        return "\n".join(lines) + "\n"
    last = table.iloc[-1]
    lines.append(
        f"**Held-out win rate of iteration {int(last['iteration'])} vs the base model: {last['win_rate']:.1%} "
        f"(95% CI {last['ci_low']:.1%} to {last['ci_high']:.1%}); length-controlled {last['lc_win_rate']:.1%}.**"
    )
    for control in ("random_direction", "low_temperature"):
        column = f"{control}_win_rate"
        if column in table.columns and pd.notna(last.get(column)):
            lines.append(f"- control `{control}`: {last[column]:.1%}")
    lines.append("")
    lines.append("Iteration t's oracle score is that of the samples of pi_{t-1} (iteration 1: the base model).")
    lines.append("")
    lines.append(
        table.to_markdown(index=False, floatfmt=".4f")
        if _has_tabulate()
        else "```\n" + table.to_string(index=False) + "\n```"
    )
    if plot_name:
        lines += ["", f"![oracle score and win rate per iteration]({plot_name})"]
    return "\n".join(lines) + "\n"


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


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
    for control in ("random_direction", "low_temperature"):
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
