"""Oracles: order a model's own samples, the self-improvement signal of SIMS.

    from sims_core.oracles import get_oracle
    oracle = get_oracle("embedding")                  # or "reward_model", "self_judge", "pmi",
    scores = oracle.score(prompts, candidates)       #    "callable", "sum"
    # candidates: one list of K >= 2 answers per prompt -> one float per answer, higher = better

Every oracle follows the `Oracle` protocol (``name`` and ``score``); `judge_sanity` measures
whether a judge can tell a prompt's own answer from another prompt's and whether it agrees with
itself when the order is swapped.
"""

from sims_core.oracles.base import (
    Oracle,
    OracleError,
    OracleInfo,
    PairwiseJudge,
    check_scores,
    get_oracle,
    known_oracles,
    oracle_factory,
    oracle_info,
    register_oracle,
    validate_candidates,
)
from sims_core.oracles.embedding import EmbeddingOracle, packaged_minilm_path
from sims_core.oracles.judge import SelfJudgeOracle, bradley_terry
from sims_core.oracles.pmi import PMIOracle
from sims_core.oracles.reward_model import RewardModelOracle
from sims_core.oracles.rules import CallableOracle, SumOracle, import_callable
from sims_core.oracles.sanity import JudgeSanity, judge_sanity

register_oracle("reward_model", RewardModelOracle)
register_oracle("self_judge", SelfJudgeOracle)
register_oracle("pmi", PMIOracle)
register_oracle("embedding", EmbeddingOracle)
register_oracle("callable", CallableOracle)
register_oracle("sum", SumOracle)

__all__ = [
    "CallableOracle",
    "EmbeddingOracle",
    "JudgeSanity",
    "Oracle",
    "OracleError",
    "PMIOracle",
    "PairwiseJudge",
    "RewardModelOracle",
    "SelfJudgeOracle",
    "SumOracle",
    "bradley_terry",
    "check_scores",
    "get_oracle",
    "OracleInfo",
    "oracle_factory",
    "oracle_info",
    "import_callable",
    "judge_sanity",
    "known_oracles",
    "packaged_minilm_path",
    "register_oracle",
    "validate_candidates",
]
