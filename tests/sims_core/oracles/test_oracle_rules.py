"""User callables ("package.module:function") and weighted sums of oracles."""

from __future__ import annotations

import pytest

from sims_core.oracles import OracleError, get_oracle


@pytest.fixture()
def rules_module(importable_module):
    return importable_module(
        "my_sims_rules",
        "def length(prompt, answer):\n    return float(len(answer))\n\n"
        "def mentions(prompts, candidates):\n    return [[float(p.split()[0] in a) for a in g] for p, g in zip(prompts, candidates)]\n\n"
        "def broken(prompt, answer):\n    return float('nan')\n\nNOT_CALLABLE = 3\n",
    )


def test_callable_by_path_scores_each_answer(rules_module):
    oracle = get_oracle("callable", function=f"{rules_module}:length")
    assert oracle.name == "callable(my_sims_rules:length)"
    assert oracle.score(["p", "q"], [["ab", "abcd"], ["", "x", "xyz"]]) == [[2.0, 4.0], [0.0, 1.0, 3.0]]


def test_batched_callable_gets_all_prompts_at_once(rules_module):
    oracle = get_oracle("callable", function=f"{rules_module}:mentions", batched=True)
    assert oracle.score(["cats purr", "dogs bark"], [["cats!", "no"], ["x", "dogs"]]) == [[1.0, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_package_xyz.rules:score", r"module 'no_such_package_xyz.rules' could not be imported"),
        ("os:no_such_function", r"module 'os' has no attribute 'no_such_function'"),
        ("os.path.join", r"must be written 'package.module:function'"),
        ("my_sims_rules:NOT_CALLABLE", r"is a int, not a function"),
    ],
)
def test_callable_path_that_does_not_import_is_one_clear_error(rules_module, path, message):
    with pytest.raises(OracleError, match=message):
        get_oracle("callable", function=path)


def test_nan_from_a_callable_names_the_oracle(rules_module):
    oracle = get_oracle("callable", function=f"{rules_module}:broken")
    with pytest.raises(
        OracleError, match=r"callable\(my_sims_rules:broken\)' returned NaN for prompt 0 \('p'\), candidate 0"
    ):
        oracle.score(["p"], [["a", "b"]])


def test_weighted_sum_of_oracles(rules_module):
    oracle = get_oracle(
        "sum",
        oracles=[
            {"name": "callable", "function": f"{rules_module}:length", "weight": 0.5},
            (get_oracle("callable", function=lambda p, a: 10.0 if "!" in a else 0.0), 2.0),
        ],
    )
    assert oracle.score(["p"], [["abcd", "ab!", "x"]]) == [[2.0, 21.5, 0.5]]
    assert oracle.name.startswith("sum(0.5*callable(my_sims_rules:length) + 2*callable(")


def test_standardized_sum_weighs_components_equally_whatever_their_scale():
    big = get_oracle("callable", function=lambda p, a: 1000.0 * len(a))
    small = get_oracle("callable", function=lambda p, a: -0.001 * len(a))
    scores = get_oracle("sum", oracles=[big, small], standardize=True).score(["p"], [["a", "aaa"]])
    assert scores == [[0.0, 0.0]]


def test_sum_needs_components():
    with pytest.raises(OracleError, match="non-empty list"):
        get_oracle("sum", oracles=[])


def test_a_component_passes_the_check_exactly_when_it_builds(rules_module):
    from sims_core.oracles import check_oracle

    # [name, weight] is what YAML gives for a pair; a bare name weighs 1
    components = [["callable", 2.0], "callable"]
    with pytest.raises(OracleError, match="callable"):  # callable needs its function: refused by both
        check_oracle("sum", {"oracles": components})
    with pytest.raises(OracleError, match="callable"):
        get_oracle("sum", oracles=components)
    check_oracle("sum", {"oracles": [["pmi", 2.0], "pmi"]})
    for spec in ([3], [{"weight": 2.0}]):
        with pytest.raises(OracleError, match="each component must be|needs a 'name'"):
            check_oracle("sum", {"oracles": spec})
        with pytest.raises(OracleError, match="each component must be|needs a 'name'"):
            get_oracle("sum", oracles=spec)
    one = get_oracle("callable", function=lambda p, a: 1.0)
    assert get_oracle("sum", oracles=[[one, 2.0], one]).score(["p"], [["a", "b"]]) == [[3.0, 3.0]]
