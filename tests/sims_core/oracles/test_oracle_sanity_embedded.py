"""On the embedded SmolLM2-135M-Instruct: the PMI judge tells a prompt's own answer from
another prompt's, which SmolLM2 as a pairwise "A or B" judge cannot (it answers "A")."""

from __future__ import annotations

import pytest

from sims_core.oracles import get_oracle, judge_sanity

pytestmark = pytest.mark.slow

PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("Who wrote 'Pride and Prejudice'?", "Jane Austen wrote Pride and Prejudice."),
    ("What do bees make?", "Bees make honey and beeswax."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth."),
]


def test_pmi_judge_is_sane_and_the_pairwise_judge_is_position_biased(embedded_lm):
    prompts, answers = [p for p, _ in PAIRS], [a for _, a in PAIRS]
    pmi = judge_sanity(get_oracle("pmi", lm=embedded_lm), prompts, answers)
    assert pmi.matched_rate >= 5 / 6 and pmi.order_agreement == 1.0
    pairwise = judge_sanity(get_oracle("self_judge", lm=embedded_lm), prompts[:3], answers[:3])
    assert pairwise.first_position_rate >= 5 / 6  # measured 1.0 on 16 prompts (bench/bench_oracles.py)
