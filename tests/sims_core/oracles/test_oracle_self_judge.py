"""Self-judge (prompt ranking): decisions read from the log-probabilities of "A" and "B",
judged in both orders, aggregated by win counts or Bradley-Terry. The judge here is a tiny LM
whose logits are forced, so the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from sims_core.oracles import bradley_terry, get_oracle, judge_sanity


def label_ids(lm):
    return lm.encode_response("A")[0], lm.encode_response("B")[0]


def prefer_paris(lm):
    """A judge that knows the answer: whichever response mentions Paris gets +5 logits."""
    a, b = label_ids(lm)

    def decide(text):
        body = text.rsplit("Response A:", 1)[1]
        first, second = body.split("Response B:", 1)
        return {a: 5.0 * ("Paris" in first), b: 5.0 * ("Paris" in second.split("Reply with")[0])}

    return decide


def test_forced_content_judge_ranks_the_right_answer_first(judge_lm, force_logits):
    force_logits(judge_lm, prefer_paris(judge_lm))
    oracle = get_oracle("self_judge", lm=judge_lm, batch_size=3)
    scores = oracle.score(["What is the capital of France?"], [["It is Lyon.", "Paris is the capital.", "No idea."]])
    p_win = 1 / (1 + np.exp(-5.0))  # both orders agree: P(Paris beats the other) = sigmoid(5)
    assert scores[0] == pytest.approx([1.5 - p_win, 2 * p_win, 1.5 - p_win], abs=1e-5)  # Lyon vs "No idea": 0.5


def test_always_a_judge_gives_ties_not_fake_preferences(judge_lm, force_logits):
    a, b = label_ids(judge_lm)
    force_logits(judge_lm, lambda text: {a: 20.0, b: 0.0})
    oracle = get_oracle("self_judge", lm=judge_lm)
    assert oracle.judge_pairs(["q"], ["x"], ["y"])[0] > 0.99  # raw: it always says "A"
    assert oracle.score(["q"], [["x", "y", "z"]]) == [pytest.approx([1.0, 1.0, 1.0])]  # both orders cancel it
    sanity = judge_sanity(oracle, ["q1", "q2", "q3"], ["a1", "a2", "a3"])
    assert (sanity.first_position_rate, sanity.order_agreement, sanity.matched_rate) == (1.0, 0.0, 0.5)


def test_sanity_of_a_judge_that_knows_the_answer(judge_lm, force_logits):
    force_logits(judge_lm, prefer_paris(judge_lm))
    oracle = get_oracle("self_judge", lm=judge_lm)
    sanity = judge_sanity(oracle, ["Capital of France?", "Capital of Italy?"], ["Paris.", "Rome."])
    # Prompt 0's own answer (Paris) wins; prompt 1's own (Rome) loses to Paris: 1/2 matched.
    assert (sanity.matched_rate, sanity.order_agreement, sanity.first_position_rate) == (0.5, 1.0, 0.5)


def test_bradley_terry_aggregation_orders_like_the_judge(judge_lm, force_logits):
    force_logits(judge_lm, prefer_paris(judge_lm))
    oracle = get_oracle("self_judge", lm=judge_lm, aggregation="bradley_terry")
    scores = oracle.score(["q"], [["Lyon", "Paris", "Nice"]])[0]
    assert scores[1] > scores[0] + 2 and scores[0] == pytest.approx(scores[2], abs=1e-6)
    assert sum(scores) == pytest.approx(0.0, abs=1e-9)


def test_bradley_terry_recovers_known_strengths():
    strengths = np.array([0.0, 1.0, 2.0])
    p = 1 / (1 + np.exp(strengths[None, :] - strengths[:, None]))  # p[i, j] = P(i beats j)
    np.fill_diagonal(p, 0.0)
    fitted = bradley_terry(1000 * p, prior=0.0, iterations=2000)
    assert fitted == pytest.approx(strengths - strengths.mean(), abs=1e-4)


def test_judge_labels_must_be_single_tokens(judge_lm, force_logits):
    with pytest.raises(ValueError, match="must be a single token"):
        get_oracle("self_judge", lm=judge_lm, labels=("Response one", "B"))


def test_self_judge_needs_a_model():
    with pytest.raises(ValueError, match="needs a judge model"):
        get_oracle("self_judge")
