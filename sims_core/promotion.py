"""The promotion gate of a lineage: does a run's new steering replace the current one?

The new steering and the current one answer the same held-out prompts with the same per-sample
seeds; the evaluation judge compares them pair by pair (`sims_core.evaluation.summarize`). The
rule decides from that summary:

- ``"significant"`` (default): promote when the summary's verdict is "steered better": the 95%
  interval of the number it rests on (the paired score effect when the judge's scores are
  comparable, else the win rate) lies above no difference (0, or 50%).
- ``"win_rate"``: promote when the win rate is above ``threshold`` (e.g. 0.5: better more often
  than not, without asking for significance).
- ``"always"``: promote every run (the gate only records the comparison).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sims_core.errors import ConfigError
from sims_core.evaluation import VERDICTS

__all__ = ["PROMOTION_RULES", "promotion_decision"]

PROMOTION_RULES = ("significant", "win_rate", "always")


def promotion_decision(
    summary: Mapping[str, Any], rule: str = "significant", threshold: float = 0.5, against: str = "the current steering"
) -> tuple[bool, str]:
    """``(promote, reason)`` for a comparison summary of the new steering against ``against``."""
    if rule not in PROMOTION_RULES:
        raise ConfigError(f"promotion must be one of {list(PROMOTION_RULES)}, got {rule!r}")
    rate, low, high = summary["win_rate"], summary["ci_low"], summary["ci_high"]
    shown_rate = f"win rate {rate:.1%} (95% CI {low:.1%} to {high:.1%}, n={int(summary['n'])})"
    if rule == "always":
        return True, f"promoted (rule 'always'); against {against}: {shown_rate}"
    if rule == "win_rate":
        ok = rate > threshold
        verb = "promoted" if ok else f"kept {against}"
        return (
            ok,
            f"{verb}: {shown_rate} is {'above' if ok else 'not above'} the threshold {threshold:.1%} (rule 'win_rate')",
        )
    ok = str(summary["verdict"]).startswith(VERDICTS[0])  # the interval the verdict rests on lies above no difference
    if summary.get("verdict_basis") == "paired_effect":
        effect, e_low, e_high = summary["effect"], summary["effect_ci_low"], summary["effect_ci_high"]
        shown = f"paired score effect {effect:+.4f} (95% CI {e_low:+.4f} to {e_high:+.4f}) vs {against}; {shown_rate}"
        return ok, (
            f"promoted: {shown}: its interval is above 0"
            if ok
            else f"kept {against}: {shown}: its interval does not exclude 0 or lies below it (rule 'significant')"
        )
    return ok, (
        f"promoted: {shown_rate} vs {against}: its interval is above 50%"
        if ok
        else f"kept {against}: {shown_rate}: its interval does not lie above 50% (rule 'significant')"
    )
