"""The promotion gate of a lineage on known comparisons: a better, a worse and an unclear new steering."""

from __future__ import annotations

import pytest

from sims_core.config import ConfigError
from sims_core.promotion import promotion_decision


def summary(win_rate, ci, effect=None, effect_ci=None, n=300):
    basis = "paired_effect" if effect is not None else "win_rate"
    low, null = (effect_ci[0], 0.0) if effect is not None else (ci[0], 0.5)
    verdict = "steered better" if low > null else "no measured difference or worse"  # as summarize says it
    row = {"win_rate": win_rate, "ci_low": ci[0], "ci_high": ci[1], "n": n, "verdict_basis": basis, "verdict": verdict}
    if effect is not None:
        row |= {"effect": effect, "effect_ci_low": effect_ci[0], "effect_ci_high": effect_ci[1]}
    return row


BETTER = summary(0.62, (0.56, 0.68), effect=0.021, effect_ci=(0.009, 0.033))
WORSE = summary(0.41, (0.35, 0.47), effect=-0.018, effect_ci=(-0.030, -0.006))
UNCLEAR = summary(0.53, (0.47, 0.59), effect=0.004, effect_ci=(-0.006, 0.014))


def test_significant_promotes_only_a_measurably_better_steering():
    promote, reason = promotion_decision(BETTER)
    assert promote and reason.startswith("promoted: paired score effect +0.0210 (95% CI +0.0090 to +0.0330)")
    for worse_or_unclear in (WORSE, UNCLEAR):
        promote, reason = promotion_decision(worse_or_unclear)
        assert not promote and reason.startswith("kept the current steering: paired score effect")
        assert "rule 'significant'" in reason


def test_significant_on_win_rate_when_scores_are_not_comparable():
    assert promotion_decision(summary(0.6, (0.55, 0.65)))[0]
    promote, reason = promotion_decision(summary(0.6, (0.49, 0.71)))
    assert not promote and "its interval does not lie above 50%" in reason


def test_win_rate_rule_uses_the_threshold():
    assert promotion_decision(UNCLEAR, "win_rate", 0.5) == (
        True,
        "promoted: win rate 53.0% (95% CI 47.0% to 59.0%, n=300) is above the threshold 50.0% (rule 'win_rate')",
    )
    assert promotion_decision(UNCLEAR, "win_rate", 0.55)[0] is False
    assert promotion_decision(WORSE, "win_rate", 0.5)[0] is False


def test_always_promotes_and_says_against_what():
    promote, reason = promotion_decision(WORSE, "always", against="the base model")
    assert promote and "against the base model: win rate 41.0%" in reason


def test_unknown_rule_names_the_choices():
    with pytest.raises(ConfigError, match=r"promotion must be one of \['significant', 'win_rate', 'always'\]"):
        promotion_decision(BETTER, "sometimes")
