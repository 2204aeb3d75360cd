"""Quality sweep: which settings make the SIMS loop improve the embedded model, measured with the
default evaluation (the reference judge on held-out prompts, independent of the training oracle).

    python bench/bench_quality.py [--only NAME,NAME] [--store DIR] [--iterations T] [--set KEY=VALUE ...]

Each configuration is a full `self_improve` run on the embedded SmolLM2-135M-Instruct (same seed,
same prompts) that differs from the default in one setting. All of them share one run id, so a
phase whose key (config fields + input hashes) matches one an earlier configuration computed is
reused, not recomputed: the sweep costs much less than its configurations would alone, and the
"compute s" column is the sum of every phase's recorded duration (what a fresh run of that
configuration computes, model loading and flow overhead aside; `sims run` measures the real wall
time of the default). One markdown table is printed, a row per configuration: the final
iteration's win rate and paired score effect vs the base model with their 95% CIs and the number
of comparisons, the same vs the previous iteration, the two controls, the best-of-N line, and
the share of answers cut at the token limit. ``--set`` changes the common base of every
configuration (e.g. ``--set controls=false --set best_of_n=0`` for a first pass that ranks the
configurations on the steered model alone).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("SIMS_PROGRESS", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from sims_core.config import SimsConfig  # noqa: E402

# name -> (what it tests, overrides of the default config)
CONFIGS: dict[str, tuple[str, dict]] = {
    "default": ("the default configuration", {}),
    "top_bottom": ("pairs: top-2 vs bottom-2 of 4 samples", {"pair_strategy": "top_bottom", "pairs_per_prompt": 2}),
    "prompts_64": ("64 training prompts per iteration", {"num_prompts": 64}),
    "tokens_96": ("answers up to 96 tokens (training and eval)", {"max_new_tokens": 96}),
    "hpr": ("HPR instead of mean difference", {"learner": "hpr"}),
    "hpr_small": ("HPR with smaller strengths 0.1 and 0.25", {"learner": "hpr", "alphas": [0.1, 0.25]}),
    "one_candidate": (
        "no strength selection: layer 18, alpha 2 (the fluency guard only)",
        {"layers": [18], "alphas": [2.0]},
    ),
    "no_memory": ("memory bank off", {"memory": False}),
    "val_32": ("strength selection on 32 validation prompts", {"max_val_prompts": 32}),
    "consensus": ("consensus (MBR) training oracle", {"oracle": "consensus"}),
}


def _fmt_rate(row: dict, prefix: str = "") -> str:
    rate = row.get(f"{prefix}win_rate")
    if rate is None or (isinstance(rate, float) and math.isnan(rate)):
        return "-"
    return f"{rate:.1%} [{row[f'{prefix}ci_low']:.1%}, {row[f'{prefix}ci_high']:.1%}]"


def _fmt_effect(row: dict, prefix: str = "") -> str:
    effect = row.get(f"{prefix}effect")
    if effect is None or (isinstance(effect, float) and math.isnan(effect)):
        return "-"
    return f"{effect:+.4f} [{row[f'{prefix}effect_ci_low']:+.4f}, {row[f'{prefix}effect_ci_high']:+.4f}]"


def run_config(name: str, base: SimsConfig, overrides: dict, run_id: str) -> dict:
    from flows.self_improve import self_improve
    from storage import ArtifactStore, Manifest
    from tasks.phase import PhaseContext
    from tasks.report import iteration_table

    config = base.replace(**overrides)
    store, iterations = config.store, config.iterations
    started = time.perf_counter()
    self_improve(config=config, run_id=run_id, force=True)
    wall = time.perf_counter() - started
    artifacts = ArtifactStore.open(store)
    manifest = Manifest.load(artifacts, run_id)
    compute = sum(
        e.duration_s or 0.0 for e in manifest.entries if e.status == "completed" and e.iteration <= iterations
    )
    table = iteration_table(PhaseContext(store_url=store, run_id=run_id, iteration=0, config=config), iterations)
    last = table.iloc[-1].to_dict()
    return {"name": name, "wall": wall, "compute": compute, **last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated configuration names (default: all)")
    parser.add_argument("--store", default="./bench-runs/quality")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change every configuration")
    parser.add_argument("--run-id", default="quality-sweep")
    args = parser.parse_args()
    base = SimsConfig(store=args.store, iterations=args.iterations).with_overrides(args.set)
    names = args.only.split(",") if args.only else list(CONFIGS)
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}; known: {list(CONFIGS)}")
    rows = []
    for name in names:
        what, overrides = CONFIGS[name]
        print(f"== {name}: {what} {overrides}", flush=True)
        row = run_config(name, base, overrides, args.run_id)
        rows.append((what, row))
        print(
            f"   win rate {_fmt_rate(row)}, effect {_fmt_effect(row)}, n={row.get('n', 0):.0f}; "
            f"vs previous {_fmt_rate(row, 'previous_iteration_')}; this run {row['wall']:.0f} s, compute "
            f"{row['compute']:.0f} s",
            flush=True,
        )
    print()
    print(
        "| configuration | win rate vs base [95% CI] | score effect [95% CI] | n | vs previous iteration: win rate "
        "| vs previous: effect | random direction | temperature 0.6 | best-of-4 | cut at limit | compute s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for what, row in rows:
        print(
            f"| {row['name']} ({what}) | {_fmt_rate(row)} | {_fmt_effect(row)} | {row.get('n', 0):.0f} | "
            f"{_fmt_rate(row, 'previous_iteration_')} | {_fmt_effect(row, 'previous_iteration_')} | "
            f"{_fmt_rate(row, 'random_direction_')} | {_fmt_rate(row, 'low_temperature_')} | "
            f"{_fmt_rate(row, 'best_of_n_')} | {row.get('truncated', float('nan')):.0%} | {row['compute']:.0f} |"
        )


if __name__ == "__main__":
    main()
