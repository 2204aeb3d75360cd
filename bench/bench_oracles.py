"""Judge sanity on the embedded model (SmolLM2-135M-Instruct) and the packaged MiniLM.

For hand-written prompts with one good answer each, prints per oracle how often it prefers a
prompt's own answer over another prompt's (matched rate), how often it agrees with itself when
the order is swapped, and for the pairwise self-judge how often it picks the first answer; plus
seconds per comparison. Run: python bench/bench_oracles.py
"""

from __future__ import annotations

import time

from sims_core import load_model
from sims_core.oracles import get_oracle, judge_sanity

PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How do plants make their food?", "Plants make food by photosynthesis, using sunlight, water and carbon dioxide."),
    ("Give me a tip for sleeping better.", "Go to bed at the same time every night and avoid screens before sleep."),
    ("Why is the sky blue?", "Sunlight is scattered by air molecules, and blue light scatters the most."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is 7 times 8?", "7 times 8 is 56."),
    ("Name a famous play by Shakespeare.", "Hamlet is one of Shakespeare's most famous plays."),
    ("What do bees make?", "Bees make honey and beeswax."),
    ("How can I boil an egg?", "Put the egg in boiling water for about nine minutes, then cool it in cold water."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("What language is spoken in Brazil?", "Portuguese is the main language spoken in Brazil."),
    ("How do I say hello in Spanish?", "In Spanish, hello is 'hola'."),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
    ("Who wrote 'Pride and Prejudice'?", "Jane Austen wrote Pride and Prejudice."),
    ("What gas do humans breathe out?", "Humans breathe out carbon dioxide."),
]


def main() -> None:
    prompts, answers = [p for p, _ in PAIRS], [a for _, a in PAIRS]
    lm = load_model("embedded")
    oracles = {
        "embedding": get_oracle("embedding"),
        "pmi": get_oracle("pmi", lm=lm),
        "self_judge": get_oracle("self_judge", lm=lm),
    }
    print(f"{'oracle':<12} {'n':>3} {'matched':>8} {'order_agree':>12} {'first_pos':>10} {'s/compare':>10}")
    for name, oracle in oracles.items():
        start = time.perf_counter()
        result = judge_sanity(oracle, prompts, answers, seed=0)
        per = (time.perf_counter() - start) / (2 * len(prompts))
        first = "-" if result.first_position_rate is None else f"{result.first_position_rate:.2f}"
        print(
            f"{name:<12} {result.n:>3} {result.matched_rate:>8.2f} {result.order_agreement:>12.2f} {first:>10} {per:>10.3f}"
        )


if __name__ == "__main__":
    main()
