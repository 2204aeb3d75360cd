"""The reference judge and the consensus oracle, on known-answer cases with the real packaged
all-MiniLM-L6-v2 (offline), and with a user's similarity function."""

from __future__ import annotations

import pytest

from sims_core.oracles import OracleError, get_oracle, judge_sanity, score_candidates

PROMPT = "What is the capital of France?"
REFERENCE = "The capital of France is Paris, which stands on the river Seine."
CLOSE = "Paris is the capital city of France."
FAR = "Bananas are a good source of potassium and fibre."


@pytest.fixture(scope="module")
def reference():
    return get_oracle("reference")


@pytest.fixture(scope="module")
def consensus():
    return get_oracle("consensus")


def test_the_answer_closer_to_the_reference_wins(reference):
    (close, far), (far2, close2) = reference.score(
        [PROMPT, PROMPT], [[CLOSE, FAR], [FAR, CLOSE]], references=[REFERENCE, REFERENCE]
    )
    assert close > far + 0.3 and (close, far) == pytest.approx((close2, far2), abs=1e-6)
    assert 0.5 < close <= 1.0 and -1.0 <= far < 0.3
    assert reference.name == "reference(all-MiniLM-L6-v2)"
    # the reference answer itself is the best possible answer
    assert reference.score([PROMPT], [[REFERENCE, CLOSE]], references=[REFERENCE])[0][0] == pytest.approx(1.0)


def test_reference_judge_ties_equal_answers_and_puts_empty_answers_last(reference):
    [[a, b]] = reference.score([PROMPT], [[CLOSE, CLOSE]], references=[REFERENCE])
    assert a == b
    [[empty, blank, far]] = reference.score([PROMPT], [["", "  \n", FAR]], references=[REFERENCE])
    assert (empty, blank) == (-1.0, -1.0) and far > -1.0


def test_reference_judge_needs_one_reference_per_prompt(reference):
    with pytest.raises(OracleError, match=r"reference\(all-MiniLM-L6-v2\): this judge needs one reference answer per"):
        reference.score([PROMPT], [[CLOSE, FAR]])
    with pytest.raises(OracleError, match="needs one reference answer per prompt, got 2 for 1 prompts"):
        reference.score([PROMPT], [[CLOSE, FAR]], references=[REFERENCE, REFERENCE])
    with pytest.raises(OracleError, match=r"the reference answer of prompt 0 \('What is the capital.*'\) is empty"):
        reference.score([PROMPT], [[CLOSE, FAR]], references=["  "])
    with pytest.raises(OracleError, match=r"K=1 candidates; ranking needs K >= 2"):
        reference.score([PROMPT], [[CLOSE]], references=[REFERENCE])
    # score_candidates passes the references along (and checks the output)
    assert score_candidates(reference, [PROMPT], [[FAR, CLOSE]], [REFERENCE])[0][1] > 0.5


def test_reference_judge_sanity_with_references(reference):
    prompts = [PROMPT, "How many legs does a spider have?"]
    answers = [CLOSE, "A spider has eight legs."]
    refs = [REFERENCE, "Spiders have eight legs; insects have six."]
    result = judge_sanity(reference, prompts, answers, references=refs)
    assert (result.matched_rate, result.order_agreement) == (1.0, 1.0)


def overlap(answers, references):
    """Share of the reference's words that the answer uses (in [0, 1])."""
    return [
        len(set(a.lower().split()) & set(r.lower().split())) / len(set(r.lower().split()))
        for a, r in zip(answers, references)
    ]


def test_similarity_can_be_a_user_function_or_an_import_path():
    judge = get_oracle("reference", similarity=overlap)
    assert judge.score(["q"], [["a b", "a b c d", ""]], references=["a b c d"]) == [[0.5, 1.0, -1.0]]
    assert judge.name == "reference(overlap)"
    by_path = get_oracle("reference", similarity=f"{__name__}:overlap")
    assert by_path.score(["q"], [["a", "c d"]], references=["a b c d"]) == [[0.25, 0.5]]
    with pytest.raises(OracleError, match="give model= .* or similarity= .*, not both"):
        get_oracle("reference", model="x", similarity=overlap)
    bad = get_oracle("reference", similarity=lambda a, r: [3.0] * len(a))
    with pytest.raises(OracleError, match=r"returned 3.0 for pair 0; similarities must be finite and in \[-1, 1\]"):
        bad.score(["q"], [["a", "b"]], references=["a"])


def test_the_consensus_answer_wins(consensus):
    answers = [
        "Paris is the capital of France.",
        "The capital of France is Paris.",
        "France's capital city is Paris.",
        "I like to eat turtles on Sundays.",
    ]
    [scores] = consensus.score([PROMPT], [answers])
    assert scores.index(min(scores)) == 3
    assert min(scores[:3]) > scores[3] + 0.3
    assert consensus.name == "consensus(all-MiniLM-L6-v2)"


def test_consensus_scores_are_mean_similarity_to_the_other_non_empty_answers():
    def same_first_word(answers, others):
        return [1.0 if a.split()[0] == b.split()[0] else 0.0 for a, b in zip(answers, others)]

    oracle = get_oracle("consensus", similarity=same_first_word)
    assert oracle.score(["q"], [["x a", "x b", "y c", "x d"]]) == [[2 / 3, 2 / 3, 0.0, 2 / 3]]
    # empty answers score -1 and lend no support; a lone non-empty answer scores 0
    assert oracle.score(["q"], [["x a", "", "x b", " "]]) == [[1.0, -1.0, 1.0, -1.0]]
    assert oracle.score(["q"], [["", "x", "  "]]) == [[-1.0, 0.0, -1.0]]


def test_consensus_cannot_judge_a_pair_and_needs_two_answers(consensus):
    [[a, b]] = consensus.score([PROMPT], [[CLOSE, FAR]])
    assert a == b  # symmetric: always a tie
    assert consensus.can_judge is False
    with pytest.raises(OracleError, match=r"K=1 candidates; ranking needs K >= 2"):
        consensus.score([PROMPT], [[CLOSE]])
