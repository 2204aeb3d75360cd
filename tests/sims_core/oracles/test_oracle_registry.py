"""The oracle registry, input validation and score checks: one clear error per bad input."""

from __future__ import annotations

import math

import pytest

from sims_core.oracles import (
    Oracle,
    OracleError,
    check_scores,
    get_oracle,
    known_oracles,
    oracle_info,
    validate_candidates,
)


def test_known_oracles_are_registered():
    assert {"embedding", "reward_model", "self_judge", "pmi", "callable", "sum", "reference", "consensus"} <= set(
        known_oracles()
    )


def test_unknown_oracle_name_lists_the_known_ones():
    with pytest.raises(
        OracleError,
        match=r"unknown oracle 'magic'; known oracles: callable, consensus, embedding, pmi, reference, reward_model, "
        r"self_judge, sum$",
    ):
        get_oracle("magic")
    with pytest.raises(OracleError, match=r"unknown oracle 'magic'; known oracles: callable, consensus, embedding"):
        oracle_info("magic")


def test_bad_option_names_the_oracle_and_its_options():
    with pytest.raises(OracleError, match=r"bad options for oracle 'callable'.*its options are: function, batched"):
        get_oracle("callable", function=len, colour="red")


@pytest.mark.parametrize(
    ("prompts", "candidates", "message"),
    [
        (["q"], [], "candidates is empty"),
        (["q"], [["only one"]], r"K=1 candidates; ranking needs K >= 2"),
        (["q"], [[]], r"K=0 candidates"),
        (["q", "r"], [["a", "b"]], "2 prompts but 1 candidate lists"),
        ("q", [["a", "b"]], "prompts must be a list"),
        (["q"], [["a", 3]], r"candidates\[0\]\[1\] must be a string"),
    ],
)
def test_bad_candidates_get_one_clear_error(prompts, candidates, message):
    with pytest.raises(OracleError, match=message):
        validate_candidates(prompts, candidates, "test")


def test_candidates_may_have_different_k_per_prompt():
    prompts, candidates = validate_candidates(("p", "q"), (("a", "b"), ("c", "d", "e")))
    assert prompts == ["p", "q"] and candidates == [["a", "b"], ["c", "d", "e"]]


def test_nan_score_is_an_error_naming_oracle_prompt_and_candidate():
    with pytest.raises(
        OracleError, match=r"oracle 'judge-x' returned NaN for prompt 1 \('second prompt'\), candidate 2 \('c'\)"
    ):
        check_scores("judge-x", ["first", "second prompt"], [["a", "b"], ["a", "b", "c"]], [[1, 2], [0, 1, math.nan]])


def test_wrong_score_shape_and_non_numbers_are_errors():
    with pytest.raises(OracleError, match="returned 1 scores for prompt 0 which has 2 candidates"):
        check_scores("o", ["p"], [["a", "b"]], [[1.0]])
    with pytest.raises(OracleError, match="non-number 'x'"):
        check_scores("o", ["p"], [["a", "b"]], [[1.0, "x"]])


def test_infinite_scores_pass_the_check():
    assert check_scores("o", ["p"], [["a", "b"]], [[math.inf, 0]]) == [[math.inf, 0.0]]


def test_oracle_protocol_is_structural():
    class Mine:
        name = "mine"

        def score(self, prompts, candidates):
            return [[0.0] * len(g) for g in candidates]

    assert isinstance(Mine(), Oracle)
    assert isinstance(get_oracle("callable", function=lambda p, a: 1.0), Oracle)


def test_oracle_factory_returns_the_registered_class_or_names_the_known_ones():
    from sims_core.oracles import EmbeddingOracle, OracleError, PMIOracle, oracle_factory

    assert oracle_factory("pmi") is PMIOracle and oracle_factory("embedding") is EmbeddingOracle
    with pytest.raises(OracleError, match="unknown oracle 'nope'; known oracles: .*embedding"):
        oracle_factory("nope")
