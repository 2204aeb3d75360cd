"""Steering-learner benchmarks, each a ratio measured side by side in one run.

    python bench/bench_steering.py [--quick]

1. HPR fit time per layer: 10k token-aligned pairs at hidden 576 (the embedded model's width),
   default options (5 epochs, batches of 16 pairs). Ours reflects in O(d) (and the loss needs no
   reflection at all); the baseline is the same training step plus what a d x d implementation
   does every step: build H = I - 2 w w^T / w.w and reflect the batch with it. Target: ours faster.
   Also: applying a fitted HPR layer to a batch of vectors, O(d) vs the d x d matrix.
2. HPR-steered generation on the embedded model vs unsteered: an HPR set (top 4 of 8 candidate
   layers) fitted on real token-aligned activations of hand-written preferred/disfavoured answers;
   same prompts, greedy, end-of-turn suppressed so every answer has max_new_tokens tokens.
   Target: >= 0.90x tokens/s.
Runs alternate (A, B, A, B, ...) and the best of each is kept, since the machines are noisy.
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

import torch  # noqa: E402
from _shared import PROMPTS, no_stop  # noqa: E402

from sims_core import capture_activations, generate, load_model, steer  # noqa: E402
from sims_core.steering import align_pairs, fit_steering  # noqa: E402
from sims_core.steering.hpr import HPR, _HPRNet, angle_between, hpr_loss, pseudo_rotate  # noqa: E402

GOOD = [
    "The capital of France is Paris, a city known for its art and history.",
    "Keep a regular schedule: go to bed and wake up at the same time every day.",
    "Soft rain on the roof, puddles gather quiet light, the garden drinks deep.",
    "Plants use sunlight, water and air to make their own food, and they give us oxygen.",
    "Place the egg in boiling water for about nine minutes, then cool it in cold water.",
    "The three primary colors are red, yellow and blue.",
    "Sunlight scatters off air molecules, and blue light scatters the most, so the sky looks blue.",
    "How about Shelly? It is friendly and easy to remember.",
]
BAD = [
    "France? Figure it out yourself, it is not my job to answer that.",
    "Sleep is overrated, just drink more coffee and stop complaining.",
    "Rain rain rain whatever, I do not write poems for people like you.",
    "Plants do plant stuff. Look it up, I am not your teacher.",
    "Just throw it in some water and hope for the best, who cares.",
    "Colors are colors. Why would anyone ask something so pointless?",
    "It just is blue. Stop asking silly questions.",
    "Name it Turtle. That is obviously good enough.",
]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _hpr_fit(pos: torch.Tensor, neg: torch.Tensor, seed: int, reflect) -> None:
    """HPR's training step (its loss and `train` with its options) plus ``reflect(x, w)`` of the
    batch ``x`` by the probe's weights ``w`` at every step."""
    learner = HPR()
    net = _HPRNet(pos.shape[1], learner.config.depth, learner.config.activation)
    target = angle_between(neg, pos)
    n = pos.shape[0]
    ones, zeros = torch.ones(n), torch.zeros(n)

    def loss_fn(index):
        x = torch.cat([pos[index], neg[index]])
        logits, angles = net(x)
        reflected = reflect(x, net.probe.weight[0])
        loss = hpr_loss(
            logits, angles, torch.cat([ones[index], zeros[index]]), torch.cat([zeros[index], target[index]])
        )
        return loss + 0.0 * reflected.sum()

    learner.train(net, n, loss_fn, seed=seed, on_step=lambda k: None)


def dense_fit(pos: torch.Tensor, neg: torch.Tensor, seed: int) -> None:
    """The baseline: HPR's training step plus a d x d Householder matrix built from w and applied
    to the batch every step (what an implementation with an explicit matrix computes)."""
    eye = torch.eye(pos.shape[1])
    _hpr_fit(pos, neg, seed, lambda x, w: x @ (eye - 2.0 * torch.outer(w, w) / (w @ w)).T)  # d x d: O(d^2) per vector


def ours_with_reflection_fit(pos: torch.Tensor, neg: torch.Tensor, seed: int) -> None:
    """Like-for-like with the baseline: the same step plus an O(d) reflection of the batch."""
    _hpr_fit(pos, neg, seed, lambda x, w: x - (2.0 * (x @ w) / (w @ w)).unsqueeze(-1) * w)


def bench_fit(pairs: int, repeats: int) -> None:
    d = 576
    g = torch.Generator().manual_seed(0)
    u = torch.randn(d, generator=g)
    u = u / u.norm()
    base = 20.0 * torch.randn(pairs, d, generator=g)
    pos, neg = base + 30.0 * u, base - 30.0 * u + torch.randn(pairs, d, generator=g)
    learner = HPR()
    fitted = {}

    def ours():
        fitted["fn"] = learner.fit_layer(pos, neg, seed=0, init=None, on_step=lambda k: None)

    best = {"ours": math.inf, "ours+O(d) reflect": math.inf, "dense d x d": math.inf}
    for _ in range(repeats):
        best["ours"] = min(best["ours"], timed(ours))
        best["ours+O(d) reflect"] = min(best["ours+O(d) reflect"], timed(lambda: ours_with_reflection_fit(pos, neg, 0)))
        best["dense d x d"] = min(best["dense d x d"], timed(lambda: dense_fit(pos, neg, 0)))
    steps = 5 * math.ceil(pairs / 16)
    print(
        f"HPR fit, {pairs} pairs, hidden {d}, {steps} steps, 1 layer: ours {best['ours']:.2f}s/layer, "
        f"ours + O(d) reflection {best['ours+O(d) reflect']:.2f}s, dense d x d Householder {best['dense d x d']:.2f}s "
        f"-> dense/ours {best['dense d x d'] / best['ours']:.2f}x, dense/(ours+reflect) "
        f"{best['dense d x d'] / best['ours+O(d) reflect']:.2f}x (target > 1) "
        f"{'PASS' if best['dense d x d'] > best['ours'] else 'MISS'}"
    )
    fn = fitted["fn"]
    probe_acc = ((pos @ fn.probe_weight > 0).float().mean() + (neg @ fn.probe_weight < 0).float().mean()).item() / 2
    h = neg[:4096]
    w = fn.probe_weight
    a = fn.angle(h)
    eye = torch.eye(d)

    def apply_dense():
        hh = h @ (eye - 2.0 * torch.outer(w, w) / (w @ w)).T
        gamma = angle_between(h, hh)
        return (torch.sin(a)[:, None] * hh + torch.sin(gamma - a)[:, None] * h) / torch.sin(gamma)[:, None]

    t_ours = min(timed(lambda: pseudo_rotate(h, w, a)) for _ in range(20))
    t_dense = min(timed(apply_dense) for _ in range(20))
    print(
        f"  fitted probe training accuracy {probe_acc:.3f}; applying the rotation to {h.shape[0]} vectors: "
        f"ours {t_ours * 1e3:.2f} ms vs dense {t_dense * 1e3:.2f} ms -> {t_dense / t_ours:.1f}x"
    )


def bench_steered_generation(lm, repeats: int, tokens: int) -> None:
    candidates = list(range(6, 22, 2))
    prompts = PROMPTS[: len(GOOD)]
    good = capture_activations(lm, prompts, GOOD, candidates, pooling="none", progress=False)
    bad = capture_activations(lm, prompts, BAD, candidates, pooling="none", progress=False)
    pos, neg, stats = align_pairs(good, bad, return_stats=True)
    start = time.perf_counter()
    s = fit_steering("hpr", pos, neg, top_k=4, seed=0, model=lm, progress=False)
    fit_time = time.perf_counter() - start
    print(
        f"HPR set: {stats[candidates[0]].kept} token pairs/layer, layers {s.layers} chosen from {candidates} "
        f"(held-out probe accuracy {', '.join(f'{l}: {s.layer_scores[l]:.2f}' for l in s.layers)}), fitted in {fit_time:.1f}s"
    )

    def run(steered: bool):
        def go():
            if steered:
                with steer(lm, s):
                    out = generate(
                        lm, PROMPTS, max_new_tokens=tokens, temperature=0.0, seed=1, batch_size=16, progress=False
                    )
            else:
                out = generate(
                    lm, PROMPTS, max_new_tokens=tokens, temperature=0.0, seed=1, batch_size=16, progress=False
                )
            counts.append(sum(row[0].num_tokens for row in out))
            texts[steered] = out

        return go

    counts: list[int] = []
    texts: dict[bool, list] = {}
    with no_stop(lm):
        run(False)()
        t_plain = t_steer = math.inf
        for _ in range(repeats):
            t_plain = min(t_plain, timed(run(False)))
            t_steer = min(t_steer, timed(run(True)))
    total = len(PROMPTS) * tokens
    assert all(c == total for c in counts), counts
    changed = sum(a[0].token_ids != b[0].token_ids for a, b in zip(texts[False], texts[True]))
    ratio = t_plain / t_steer
    print(
        f"HPR-steered generation: {total / t_steer:.1f} tok/s steered vs {total / t_plain:.1f} tok/s plain "
        f"({len(PROMPTS)} x {tokens} tokens, greedy; {changed}/{len(PROMPTS)} answers changed) -> {ratio:.3f}x "
        f"(target >= 0.90x) {'PASS' if ratio >= 0.90 else 'MISS'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer pairs, repeats and tokens")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    start = time.perf_counter()
    bench_fit(pairs=2000 if args.quick else 10_000, repeats=1 if args.quick else 2)
    print(f"  [fit benchmark took {time.perf_counter() - start:.0f}s]")
    start = time.perf_counter()
    lm = load_model("embedded")
    print(
        f"model: {lm.name}, {lm.num_layers} layers, hidden {lm.hidden_size} (loaded in {time.perf_counter() - start:.0f}s)"
    )
    start = time.perf_counter()
    bench_steered_generation(lm, repeats=2 if args.quick else 3, tokens=16 if args.quick else 32)
    print(f"  [generation benchmark took {time.perf_counter() - start:.0f}s]")


if __name__ == "__main__":
    main()
