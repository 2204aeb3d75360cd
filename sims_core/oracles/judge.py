"""Self-judge ("prompt ranking", SIMS-PR): a causal LM compares two answers.

The judge (by default the policy itself) sees a comparison prompt and its decision is read from
the log-probabilities of the answer tokens ``"A"`` and ``"B"`` at the start of its reply, never
by parsing generated text: P(A) = softmax over the two logits. Every pair is judged in both
orders and averaged, which cancels position bias: a judge that always says "A" gives 0.5 for
every pair (a tie), not a fake preference. For K candidates all K(K-1)/2 pairs are judged and
aggregated into a score per candidate: soft win counts (``"wins"``) or log Bradley-Terry
strengths (``"bradley_terry"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from sims_core.models import LanguageModel
from sims_core.oracles._lm import next_token_logprobs, resolve_lm, single_token_id
from sims_core.oracles.base import Candidates, Scores, check_scores, declare_capabilities, validate_candidates

__all__ = ["DEFAULT_JUDGE_TEMPLATE", "SelfJudgeOracle", "bradley_terry"]

DEFAULT_JUDGE_TEMPLATE = (
    "Which response answers the question better: more helpful, correct and clear?\n\n"
    "Question: {prompt}\n\nResponse A: {first}\n\nResponse B: {second}\n\n"
    "Reply with a single letter, A or B."
)


def bradley_terry(wins: np.ndarray, iterations: int = 200, prior: float = 0.1, tol: float = 1e-10) -> np.ndarray:
    """Log-strengths of a Bradley-Terry model fitted to a (soft) win matrix ``wins[i, j]`` = how
    often i beat j, by the MM algorithm (Hunter 2004). ``prior`` adds that many virtual wins
    each way to every pair, so a candidate that won or lost everything stays finite. The
    result is centred (mean 0)."""
    k = wins.shape[0]
    w = wins + prior * (1 - np.eye(k))
    games = w + w.T
    total = w.sum(axis=1)
    strength = np.ones(k)
    for _ in range(iterations):
        denom = (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        new = total / denom
        new /= np.exp(np.log(new).mean())
        if np.max(np.abs(new - strength)) < tol:
            strength = new
            break
        strength = new
    logs = np.log(strength)
    return logs - logs.mean()


# its scores are win shares against the other candidates
@declare_capabilities(needs_reference=False, can_judge=True, uses_policy_model=True, comparable_scores=False)
@dataclass
class SelfJudgeOracle:
    """A causal LM judge comparing pairs by the log-probabilities of "A" and "B".

    Args:
        lm: the judge model (usually the policy being improved); or
        model: a LanguageModel or anything `load_model` accepts (``"embedded"``, a hub id, a dir).
        aggregation: ``"wins"`` (sum over opponents of P(win)) or ``"bradley_terry"``.
        template: the comparison prompt, with ``{prompt}``, ``{first}`` and ``{second}``.
        system_prompt: system message for the judge's chat formatting (None: the model's default).
        labels: the two answer tokens (each must be a single token).
        batch_size, progress: forward batch size and progress bar.
    """

    lm: LanguageModel | None = None
    model: LanguageModel | str | None = None
    aggregation: Literal["wins", "bradley_terry"] = "wins"
    template: str = DEFAULT_JUDGE_TEMPLATE
    system_prompt: str | None = None
    labels: tuple[str, str] = ("A", "B")
    batch_size: int = 16
    progress: bool = False
    name: str = field(init=False, default="self_judge")

    def __post_init__(self) -> None:
        if self.aggregation not in ("wins", "bradley_terry"):
            raise ValueError(f"self_judge: aggregation must be 'wins' or 'bradley_terry', got {self.aggregation!r}")
        for key in ("{prompt}", "{first}", "{second}"):
            if key not in self.template:
                raise ValueError(f"self_judge: template must contain {key}")
        self.judge = resolve_lm(self.model, self.lm, "self_judge")
        self.lm = self.model = None  # keep one reference, in .judge
        self.label_ids = (
            single_token_id(self.judge, self.labels[0], "self_judge"),
            single_token_id(self.judge, self.labels[1], "self_judge"),
        )
        if self.label_ids[0] == self.label_ids[1]:
            raise ValueError(f"self_judge: labels {self.labels} map to the same token")
        self.name = f"self_judge({self.judge.name})"

    def judge_pairs(self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]) -> list[float]:
        """P(first answer is better) for each pair, in this order only (position bias included)."""
        if not (len(prompts) == len(firsts) == len(seconds)):
            raise ValueError("self_judge: prompts, firsts and seconds must have the same length")
        rows = [
            self.judge.encode_prompt(self.template.format(prompt=p, first=a, second=b), self.system_prompt)
            for p, a, b in zip(prompts, firsts, seconds)
        ]
        logps = next_token_logprobs(
            self.judge, rows, self.label_ids, batch_size=self.batch_size, progress=self.progress, desc="judging pairs"
        )
        out = []
        for la, lb in logps:
            out.append(float(1.0 / (1.0 + np.exp(lb - la))))
        return out

    def preference_matrices(self, prompts: Sequence[str], candidates: Candidates) -> list[np.ndarray]:
        """Per prompt, ``P[i, j]`` = probability that candidate i beats j, averaged over both
        orders (so ``P[i, j] + P[j, i] = 1``; the diagonal is 0)."""
        prompts, candidates = validate_candidates(prompts, candidates, self.name)
        jobs: list[tuple[int, int, int]] = []
        for p, group in enumerate(candidates):
            for i in range(len(group)):
                for j in range(len(group)):
                    if i != j:
                        jobs.append((p, i, j))
        probs = self.judge_pairs(
            [prompts[p] for p, _, _ in jobs],
            [candidates[p][i] for p, i, _ in jobs],
            [candidates[p][j] for p, _, j in jobs],
        )
        raw = [np.zeros((len(g), len(g))) for g in candidates]
        for (p, i, j), prob in zip(jobs, probs):
            raw[p][i, j] += prob / 2  # i shown first
            raw[p][j, i] += (1 - prob) / 2  # j shown second, lost with 1 - prob
        return raw

    def score(self, prompts: Sequence[str], candidates: Candidates) -> Scores:
        prompts, candidates = validate_candidates(prompts, candidates, self.name)
        matrices = self.preference_matrices(prompts, candidates)
        if self.aggregation == "wins":
            scores = [m.sum(axis=1).tolist() for m in matrices]
        else:
            scores = [bradley_terry(m).tolist() for m in matrices]
        return check_scores(self.name, prompts, candidates, scores)
