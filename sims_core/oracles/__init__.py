"""Oracles: order a model's own samples, the self-improvement signal of SIMS.

    from sims_core.oracles import get_oracle
    oracle = get_oracle("embedding")                  # or "reward_model", "self_judge", "pmi",
    scores = oracle.score(prompts, candidates)       #    "consensus", "callable", "sum"
    # candidates: one list of K >= 2 answers per prompt -> one float per answer, higher = better
    judge = get_oracle("reference")                   # needs a reference answer per prompt:
    scores = score_candidates(judge, prompts, candidates, references)
    oracle_info("consensus").can_judge                # capabilities, without building it

Every oracle follows the `Oracle` protocol (``name`` and ``score``) and declares its
capabilities as class attributes (``needs_reference``, ``can_judge``, ``uses_policy_model``,
``comparable_scores``: see `sims_core.oracles.base`), set with the `declare_capabilities` class
decorator; installed packages add oracles under the entry-point group ``sims.oracles``.
`judge_sanity` measures whether a judge can tell a prompt's
own answer from another prompt's and whether it agrees with itself when the order is swapped.
"""

from sims_core.oracles.base import (
    ENTRY_POINT_GROUP,
    Oracle,
    OracleError,
    OracleInfo,
    PairwiseJudge,
    check_oracle,
    check_scores,
    declare_capabilities,
    get_oracle,
    known_oracles,
    oracle_capabilities,
    oracle_factory,
    oracle_info,
    register_oracle,
    score_candidates,
    validate_candidates,
    validate_references,
)
from sims_core.oracles.consensus import ConsensusOracle
from sims_core.oracles.embedding import EmbeddingOracle, SentenceEncoder, packaged_minilm_path
from sims_core.oracles.judge import SelfJudgeOracle, bradley_terry
from sims_core.oracles.pmi import PMIOracle
from sims_core.oracles.reference import ReferenceJudge
from sims_core.oracles.reward_model import RewardModelOracle
from sims_core.oracles.rules import CallableOracle, SumOracle, import_callable
from sims_core.oracles.sanity import JudgeSanity, judge_sanity

register_oracle("reward_model", RewardModelOracle)
register_oracle("self_judge", SelfJudgeOracle)
register_oracle("pmi", PMIOracle)
register_oracle("embedding", EmbeddingOracle)
register_oracle("reference", ReferenceJudge)
register_oracle("consensus", ConsensusOracle)
register_oracle("callable", CallableOracle)
register_oracle("sum", SumOracle)

__all__ = [
    "ENTRY_POINT_GROUP",
    "CallableOracle",
    "ConsensusOracle",
    "EmbeddingOracle",
    "JudgeSanity",
    "Oracle",
    "OracleError",
    "OracleInfo",
    "PMIOracle",
    "PairwiseJudge",
    "ReferenceJudge",
    "RewardModelOracle",
    "SelfJudgeOracle",
    "SentenceEncoder",
    "SumOracle",
    "bradley_terry",
    "check_oracle",
    "check_scores",
    "declare_capabilities",
    "get_oracle",
    "import_callable",
    "judge_sanity",
    "known_oracles",
    "oracle_capabilities",
    "oracle_factory",
    "oracle_info",
    "packaged_minilm_path",
    "register_oracle",
    "score_candidates",
    "validate_candidates",
    "validate_references",
]
