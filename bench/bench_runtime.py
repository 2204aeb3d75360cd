"""Runtime benchmarks on the embedded model, each a ratio measured side by side in one run.

    python bench/bench_runtime.py [--quick]

1. Activation capture (stops after the deepest requested layer, response tokens only) vs a naive
   full forward with output_hidden_states=True on the same pairs; deepest layer at 2/3 depth.
   Target: >= 1.3x faster.
2. Mean-difference steered generation vs unsteered generation: same prompts, same number of
   tokens (end-of-turn suppressed so every answer runs to max_new_tokens). Target: >= 0.97x.
3. Sampling throughput at batch sizes 8, 16, 32, 64 (picks DEFAULT_BATCH_SIZE).
4. Decoding speed-up: `generate` as it is vs the decode loop it replaced (kept below, verbatim,
   as `baseline_generate_batch`: full-vocabulary sort and a per-row multinomial every step, a KV
   cache grown by concatenation, finished rows decoded to the end). Same prompts (the built-in
   set), 64 new tokens, temperature 0.8, top_p 0.95, batch 32, 64 and 128; answers stop at the
   end-of-turn token as they would in a run, and once more with end-of-turn masked (every answer
   runs to 64 tokens, so only the per-step cost differs). Tokens/s counts answer tokens. The
   ratio is also given in process CPU time, which other work on a shared machine disturbs less
   (run with OMP_NUM_THREADS=1 for the steadiest reading).
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

import sims_core.generation as generation  # noqa: E402
from sims_core import capture_activations, generate, load_model, steer  # noqa: E402
from sims_core.models import left_pad  # noqa: E402
from sims_core.prompts import default_prompts  # noqa: E402


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


# -- the decode loop before the generation-speed work, kept as the baseline of bench 4 --------------
def baseline_next_tokens(logits, temperature, top_p, generators):
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(generators)])


@torch.inference_mode()
def baseline_generate_batch(lm, rows, seeds, max_new_tokens, temperature, top_p):
    model, device = lm.model, lm.device
    pad_id = int(lm.tokenizer.pad_token_id)
    stop = torch.tensor(lm.stop_token_ids or (pad_id,), device=device)
    ids, mask, positions = left_pad(rows, pad_id, device)
    extra = {"logits_to_keep": 1} if generation._supports_logits_to_keep(model) else {}
    generators = []
    for seed in seeds:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        generators.append(generator)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
    batch = len(rows)
    tokens = torch.empty((batch, 0), dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    stopped = torch.zeros(batch, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        chosen = baseline_next_tokens(out.logits[:, -1, :], temperature, top_p, generators)
        chosen = torch.where(finished, torch.full_like(chosen, pad_id), chosen)
        is_stop = torch.isin(chosen, stop) & ~finished
        tokens = torch.cat(
            [tokens, torch.where(finished | is_stop, torch.full_like(chosen, -1), chosen)[:, None]], dim=1
        )
        stopped |= is_stop
        finished |= is_stop
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
        positions = positions[:, -1:] + 1
        out = model(
            input_ids=chosen[:, None],
            attention_mask=mask,
            position_ids=positions,
            past_key_values=out.past_key_values,
            use_cache=True,
            **extra,
        )
    result = []
    for i in range(batch):
        row = [int(t) for t in tokens[i].tolist() if t >= 0]
        result.append((row, bool(stopped[i])))
    return result


def bench_decode_speedup(lm, tokens, sizes, repeats, masked_stop_size):
    """Current `generate` vs the baseline decode loop above, side by side (same front end: chat
    formatting, length-sorted batches, per-sample seeds)."""
    current = generation._generate_batch
    texts = [r.prompt for r in default_prompts()]

    def run(loop, prompts, size):
        generation._generate_batch = loop
        try:
            start, cpu = time.perf_counter(), time.process_time()
            out = generate(
                lm, prompts, max_new_tokens=tokens, temperature=0.8, top_p=0.95, seed=3, batch_size=size, progress=False
            )
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            return elapsed, cpu, sum(g.num_tokens for row in out for g in row)
        finally:
            generation._generate_batch = current

    cases = [(size, False) for size in sizes] + ([(masked_stop_size, True)] if masked_stop_size else [])
    for size, masked in cases:
        prompts = texts[: max(64, size)]
        wall = {"baseline": float("inf"), "current": float("inf")}
        cpu = dict(wall)
        count = {}
        for _ in range(repeats):
            for name, loop in (("baseline", baseline_generate_batch), ("current", current)):
                if masked:
                    with no_stop(lm):
                        elapsed, used, count[name] = run(loop, prompts, size)
                else:
                    elapsed, used, count[name] = run(loop, prompts, size)
                wall[name], cpu[name] = min(wall[name], elapsed), min(cpu[name], used)
        print(
            f"decode, batch {size:>3}{' (end-of-turn masked)' if masked else ''}: {len(prompts)} prompts x {tokens} "
            f"tokens: baseline {count['baseline'] / wall['baseline']:6.1f} tok/s ({wall['baseline']:.1f}s, "
            f"{count['baseline']} tokens), current {count['current'] / wall['current']:6.1f} tok/s "
            f"({wall['current']:.1f}s, {count['current']} tokens) -> {wall['baseline'] / wall['current']:.2f}x "
            f"faster for the same prompts ({cpu['baseline'] / cpu['current']:.2f}x in process CPU time)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and tokens")
    parser.add_argument("--only-decode", action="store_true", help="run only bench 4 (decoding speed-up)")
    args = parser.parse_args()
    repeats = 2 if args.quick else 4
    torch.manual_seed(0)
    lm = load_model("embedded")
    print(f"model: {lm.name}, {lm.num_layers} layers, hidden {lm.hidden_size}, torch threads {torch.get_num_threads()}")
    if not args.only_decode:
        bench_capture(lm, repeats)
        bench_steered_generation(lm, repeats, tokens=16 if args.quick else 32)
        bench_batch_sizes(
            lm,
            tokens=16 if args.quick else 24,
            sizes=[8, 16, 32] if args.quick else [8, 16, 32, 64],
            repeats=repeats // 2,
        )
    bench_decode_speedup(
        lm,
        tokens=32 if args.quick else 64,
        sizes=[32, 64] if args.quick else [32, 64, 128],
        repeats=1 if args.quick else 2,
        masked_stop_size=None if args.quick else 64,
    )


if __name__ == "__main__":
    main()
