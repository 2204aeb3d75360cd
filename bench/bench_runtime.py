"""Runtime benchmarks on the embedded model, each a ratio measured side by side in one run.

    python bench/bench_runtime.py [--quick]

1. Activation capture (stops after the deepest requested layer, response tokens only) vs a naive
   full forward with output_hidden_states=True on the same pairs; deepest layer at 2/3 depth.
   Target: >= 1.3x faster.
2. Mean-difference steered generation vs unsteered generation: same prompts, same number of
   tokens (end-of-turn suppressed so every answer runs to max_new_tokens). Target: >= 0.97x.
3. Sampling throughput at batch sizes 8, 16, 32, 64 (picks DEFAULT_BATCH_SIZE).
Runs alternate (A, B, A, B, ...) and the best of each is kept, since the machines are noisy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("SIMS_PROGRESS", "0")

import torch  # noqa: E402
from _shared import PROMPTS, no_stop  # noqa: E402

from sims_core import capture_activations, generate, load_model, steer  # noqa: E402


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_capture(lm, repeats):
    answers = [g[0].text for g in generate(lm, PROMPTS, max_new_tokens=48, temperature=0.8, seed=0, progress=False)]
    deepest = (2 * lm.num_layers) // 3
    layers = [deepest // 2, deepest]

    def ours():
        capture_activations(lm, PROMPTS, answers, layers, pooling="mean", batch_size=16, progress=False)

    def naive():
        with torch.inference_mode():
            rows = [lm.encode_prompt(p) + lm.encode_response(a) for p, a in zip(PROMPTS, answers)]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), lm.tokenizer.pad_token_id)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(rows):
                ids[i, width - len(r) :] = torch.tensor(r)
                mask[i, width - len(r) :] = 1
            out = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            _ = [out.hidden_states[layer + 1] for layer in layers]

    ours(), naive()  # warm up
    t_ours = t_naive = float("inf")
    for _ in range(repeats):
        t_ours = min(t_ours, best_of(ours, 1))
        t_naive = min(t_naive, best_of(naive, 1))
    ratio = t_naive / t_ours
    print(
        f"capture: ours {t_ours:.3f}s vs naive full forward {t_naive:.3f}s on {len(PROMPTS)} pairs, "
        f"layers {layers} -> {ratio:.2f}x faster (target >= 1.3x) {'PASS' if ratio >= 1.3 else 'MISS'}"
    )


def bench_steered_generation(lm, repeats, tokens):
    acts = capture_activations(lm, PROMPTS[:8], PROMPTS[8:], [16], progress=False)[16]
    vector = acts[:4].mean(0) - acts[4:].mean(0)

    def run(steered):
        def go():
            if steered:
                with steer(lm, {16: vector}):
                    generate(lm, PROMPTS, max_new_tokens=tokens, temperature=0.8, seed=1, batch_size=16, progress=False)
            else:
                generate(lm, PROMPTS, max_new_tokens=tokens, temperature=0.8, seed=1, batch_size=16, progress=False)

        return go

    total = len(PROMPTS) * tokens
    with no_stop(lm):
        run(False)()
        t_plain = t_steer = float("inf")
        for _ in range(repeats):
            t_plain = min(t_plain, best_of(run(False), 1))
            t_steer = min(t_steer, best_of(run(True), 1))
    ratio = t_plain / t_steer
    print(
        f"steered generation: {total / t_steer:.1f} tok/s steered vs {total / t_plain:.1f} tok/s plain "
        f"({len(PROMPTS)} x {tokens} tokens) -> {ratio:.3f}x (target >= 0.97x) {'PASS' if ratio >= 0.97 else 'MISS'}"
    )


def bench_batch_sizes(lm, tokens, sizes, repeats):
    """Sizes are interleaved across repeats (8, 16, 32, 64, 8, 16, ...) and the best time kept."""
    prompts = (PROMPTS * 4)[: max(sizes)]
    best = {size: float("inf") for size in sizes}
    with no_stop(lm):
        for _ in range(repeats):
            for size in sizes:
                batch = prompts[:size]
                elapsed = best_of(
                    lambda: generate(
                        lm, batch, max_new_tokens=tokens, temperature=0.8, seed=2, batch_size=size, progress=False
                    ),
                    1,
                )
                best[size] = min(best[size], elapsed)
    rates = {size: size * tokens / best[size] for size in sizes}
    for size in sizes:
        print(
            f"sampling throughput, batch {size:>3}: {rates[size]:6.1f} tok/s ({rates[size] / rates[sizes[0]]:.2f}x batch {sizes[0]})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and tokens")
    args = parser.parse_args()
    repeats = 2 if args.quick else 4
    torch.manual_seed(0)
    lm = load_model("embedded")
    print(f"model: {lm.name}, {lm.num_layers} layers, hidden {lm.hidden_size}, torch threads {torch.get_num_threads()}")
    bench_capture(lm, repeats)
    bench_steered_generation(lm, repeats, tokens=16 if args.quick else 32)
    bench_batch_sizes(
        lm, tokens=16 if args.quick else 24, sizes=[8, 16, 32] if args.quick else [8, 16, 32, 64], repeats=repeats // 2
    )


if __name__ == "__main__":
    main()
