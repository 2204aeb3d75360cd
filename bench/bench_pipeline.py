"""Pipeline benchmarks, measured side by side in one run.

    python bench/bench_pipeline.py overhead      # flow vs a plain loop, tiny model (~5 min)
    python bench/bench_pipeline.py demo          # the default `sims run` demo (~10 min)

overhead: the self_improve flow (Prefect tasks, Parquet artifacts, manifest, report) against the
same sims_core calls in a plain in-memory loop, same tiny configuration, same process. The flow is
timed twice: its first run includes starting Prefect's ephemeral server; the second is steady
state. Target: steady state <= 1.15x the plain loop.

demo: the default `sims run` (embedded model) timed end to end, then its held-out win rate by the
PMI judge (not the training oracle) next to the two controls, as the run reports them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SIMS_PROGRESS", "0")


def plain_loop(cfg) -> float:
    """Every phase of every iteration with sims_core only: no Prefect, no storage."""
    import torch

    from sims_core import capture_activations, generate, load_model
    from sims_core.evaluation import CONTROLS, Comparison, best_of_n, compare, evaluate
    from sims_core.oracles import get_oracle, oracle_info
    from sims_core.preferences import PreferenceBuffer, pairs_from_scores
    from sims_core.prompts import default_prompts, sample_prompts, split_prompts
    from sims_core.seeding import derive_seed
    from sims_core.steering import fit_steering, steer
    from sims_core.steering.strength import select_strength

    start = time.perf_counter()
    lm = load_model(cfg.model)
    oracle = get_oracle(cfg.oracle)
    records = split_prompts(default_prompts(), cfg.eval_fraction, cfg.val_fraction, cfg.seed)
    val = [r.prompt for r in records if r.split == "val"][: cfg.max_val_prompts]
    evaluated = [r for r in records if r.split == "eval"][: cfg.max_eval_prompts]
    held_out, refs = [r.prompt for r in evaluated], [r.reference for r in evaluated]
    name = cfg.judge_for(all(refs))  # the built-in prompts have references: the reference judge
    judge = get_oracle(name, **({"lm": lm} if oracle_info(name).uses_policy_model else {}))
    eval_seed = derive_seed(cfg.seed, 0, "eval")
    # the baseline phase: the base model's held-out answers once per run, and the best-of-N line
    baseline = generate(lm, held_out, num_samples=cfg.eval_samples, sampling=cfg.sampling, seed=eval_seed)
    line = best_of_n(
        lm,
        held_out[: cfg.best_of_n_prompts],
        oracle,
        k=cfg.best_of_n,
        sampling=cfg.sampling,
        seed=derive_seed(cfg.seed, 0, "best_of_n"),
        progress=False,
    )
    previous = None
    bank = PreferenceBuffer(budget=cfg.buffer_budget)
    steering = None
    layers = cfg.candidate_layers(lm.num_layers)
    for t in range(1, cfg.iterations + 1):
        prompts = [r.prompt for r in sample_prompts(records, cfg.num_prompts, cfg.seed, t).records]
        context = steer(lm, steering) if steering is not None else None
        answers = generate(
            lm,
            prompts,
            num_samples=cfg.num_samples,
            sampling=cfg.sampling,
            seed=derive_seed(cfg.seed, t, "generations"),
            progress=False,
        )
        if context is not None:
            context.remove()
        texts = [[a.text for a in row] for row in answers]
        scores = oracle.score(prompts, texts)
        bank.update(pairs_from_scores(prompts, texts, scores, iteration=t), t)
        pairs = [p for p in bank.pairs if p.chosen.strip() and p.rejected.strip()]
        pos = capture_activations(lm, [p.prompt for p in pairs], [p.chosen for p in pairs], layers, progress=False)
        neg = capture_activations(lm, [p.prompt for p in pairs], [p.rejected for p in pairs], layers, progress=False)
        fitted = fit_steering(cfg.learner, pos, neg, layers=layers, top_k=cfg.top_k, seed=t, model=lm, progress=False)
        steering = select_strength(  # the steering phase's strength (and layer) selection
            lm,
            fitted,
            val,
            oracle,
            alphas=cfg.alpha_grid,
            max_nll_increase=cfg.max_nll_increase,
            seed=derive_seed(cfg.seed, t, "select"),
            sampling=cfg.sampling,
        ).steering
        last = t == cfg.iterations  # the eval phase: steered (and, last, the controls) vs the cached baseline
        result = evaluate(
            lm,
            held_out,
            steering,
            judge=judge,
            references=refs,
            baseline_answers=baseline,
            controls=CONTROLS if last else (),
            control_temperature=cfg.control_temperature,
            num_samples=cfg.eval_samples,
            sampling=cfg.sampling,
            seed=eval_seed,
            sanity=last,
            progress=False,
        )
        steered = result.rows[result.rows["condition"] == "steered"].sort_values(["prompt_index", "sample"])
        answers = steered.groupby("prompt_index", sort=True)["response"].apply(list).tolist()
        more = [Comparison("previous_iteration", held_out, answers, previous, refs)] if previous else []
        if last:  # the best-of-N line against the first baseline sample
            n = len(line.chosen)
            more.append(
                Comparison(
                    "best_of_n", held_out[:n], [[g] for g in line.chosen], [b[:1] for b in baseline[:n]], refs[:n]
                )
            )
        if more:
            compare(judge, more, seed=eval_seed)
        previous = answers
        torch.manual_seed(t)
    return time.perf_counter() - start


CONFIGS = {
    # the orchestration cost is per task and per artifact, so its ratio depends on how much model
    # work each phase does: both sizes are reported.
    "micro": (
        {"hidden": 64, "layers": 4, "max_positions": 512},
        {"num_prompts": 16, "max_new_tokens": 16, "max_eval_prompts": 12},
    ),
    "small": (
        {"hidden": 256, "layers": 6, "max_positions": 512},
        {"num_prompts": 32, "max_new_tokens": 48, "max_eval_prompts": 24},
    ),
}


def bench_overhead() -> None:
    from flows.self_improve import self_improve
    from sims_core.config import SimsConfig
    from sims_core.testing import save_tiny_model

    print("orchestration overhead: self_improve flow vs the same sims_core calls in a plain loop (2 iterations)")
    for name, (model_size, sizes) in CONFIGS.items():
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = str(save_tiny_model(Path(tmp) / "tiny", "llama", **model_size))
            values = {
                "model": model_dir,
                "store": str(Path(tmp) / "runs"),
                "iterations": 2,
                "num_samples": 4,
                "max_val_prompts": 6,
                "eval_samples": 2,
                "alphas": [1.0, 4.0],
                "top_k": 1,
                **sizes,
            }
            cfg = SimsConfig.from_dict(values)
            plain_loop(cfg)  # warm caches (tokenizer, MiniLM, torch kernels)
            start = time.perf_counter()
            self_improve(run_id="bench-first", config=values)
            first = time.perf_counter() - start
            times_flow, times_plain = [], []
            for i in range(2):
                start = time.perf_counter()
                self_improve(run_id=f"bench-{i}", config=values)
                times_flow.append(time.perf_counter() - start)
                times_plain.append(plain_loop(cfg))
        flow, plain = min(times_flow), min(times_plain)
        print(
            f"  {name} (tiny llama {model_size}, {sizes['num_prompts']} prompts x 4 samples x {sizes['max_new_tokens']} tokens):"
        )
        print(f"    plain sims_core loop  {plain:6.1f} s")
        print(
            f"    self_improve flow     {flow:6.1f} s -> {flow / plain:.2f}x (target <= 1.15x) "
            f"{'PASS' if flow / plain <= 1.15 else 'MISS'}; overhead {flow - plain:.1f} s"
        )
        print(f"    first flow run in the process (starts Prefect's ephemeral server) {first:.1f} s")


def bench_demo() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = subprocess.run(
            [str(Path(sys.executable).with_name("sims")), "run", "--store", tmp, "--run-id", "demo"],
            capture_output=True,
            text=True,
            env={**os.environ, "SIMS_PROGRESS": "0"},
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-3000:])
            raise SystemExit(f"sims run failed with status {done.returncode}")
        from sims_core.config import SimsConfig
        from storage import ArtifactStore
        from tasks.phase import PhaseContext
        from tasks.report import iteration_table

        ctx = PhaseContext(store_url=tmp, run_id="demo", iteration=0, config=SimsConfig(store=tmp).to_dict())
        table = iteration_table(ctx, SimsConfig().iterations)
        report = ArtifactStore.open(tmp).read_bytes(ArtifactStore.open(tmp).report_uri("demo")).decode()
    print(f"default demo (`sims run`): wall time {wall:.0f} s (target <= 600 s) {'PASS' if wall <= 600 else 'MISS'}")
    columns = [
        c
        for c in (
            "iteration",
            "oracle_score",
            "layers",
            "alpha",
            "win_rate",
            "ci_low",
            "ci_high",
            "lc_win_rate",
            "random_direction_win_rate",
            "low_temperature_win_rate",
            "mean_length",
            "reference_mean_length",
            "judge_matched_rate",
        )
        if c in table.columns
    ]
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    last = table.iloc[-1]
    controls = [last.get("random_direction_win_rate"), last.get("low_temperature_win_rate")]
    ahead = all(c is not None and last["win_rate"] > c for c in controls)
    print(
        f"final win rate {last['win_rate']:.3f} (target >= 0.60 and ahead of both controls): "
        f"{'PASS' if last['win_rate'] >= 0.6 and ahead else 'MISS'}"
    )
    print(json.dumps({"report_head": report.splitlines()[:6]}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["overhead", "demo"])
    args = parser.parse_args()
    {"overhead": bench_overhead, "demo": bench_demo}[args.which]()


if __name__ == "__main__":
    main()
