"""Preference pairs from rankings and principles, the contrast-sampling buffer, DPO export."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from sims_core.generation import generate
from sims_core.oracles import OracleError, get_oracle
from sims_core.preferences import (
    PairSet,
    PreferenceBuffer,
    PreferencePair,
    pairs_from_scores,
    principle_contrast_pairs,
    rank_and_pair,
    to_dpo_dataframe,
    to_dpo_records,
    write_dpo,
)

DPO_COLUMNS = ["prompt", "chosen", "rejected"]  # TRL's DPO format
METADATA_COLUMNS = ["margin", "iteration", "source"]  # what metadata=True adds to it


def test_best_vs_worst_keeps_the_margin():
    result = pairs_from_scores(["p", "q"], [["a", "b", "c"], ["d", "e"]], [[0.1, 0.9, -0.5], [2.0, 3.0]], iteration=3)
    assert [(p.prompt, p.chosen, p.rejected) for p in result.pairs] == [("p", "b", "c"), ("q", "e", "d")]
    assert [p.margin for p in result.pairs] == pytest.approx([1.4, 1.0])
    assert result.pairs[0].iteration == 3 and result.pairs[0].chosen_score == 0.9
    assert (result.prompts, result.skipped) == (2, {})


def test_top_m_vs_bottom_m_pairs_rank_i_with_rank_k_minus_1_minus_i():
    result = pairs_from_scores(["p"], [["a", "b", "c", "d", "e"]], [[5, 4, 3, 2, 1]], strategy="top_bottom", m=2)
    assert [(p.chosen, p.rejected, p.margin) for p in result.pairs] == [("a", "e", 4.0), ("b", "d", 2.0)]
    short = pairs_from_scores(["p"], [["a", "b", "c"]], [[3, 2, 1]], strategy="top_bottom", m=2)
    assert len(short) == 1 and short.skipped == {"too_few_candidates": 1}


def test_ties_are_broken_by_candidate_index_or_skip_the_prompt():
    broken = pairs_from_scores(["p"], [["a", "b", "c"]], [[1.0, 1.0, 0.0]])
    assert (broken.pairs[0].chosen, broken.pairs[0].rejected) == ("a", "c")  # earlier index ranks higher
    again = pairs_from_scores(["p"], [["x", "y", "z"]], [[0.0, 1.0, 0.0]])
    assert (again.pairs[0].chosen, again.pairs[0].rejected) == ("y", "z")  # among tied worst, the later one
    skipped = pairs_from_scores(["p", "q"], [["a", "b", "c"], ["d", "e"]], [[1.0, 1.0, 0.0], [1.0, 0.0]], ties="skip")
    assert [p.prompt for p in skipped.pairs] == ["q"] and skipped.skipped == {"tied_scores": 1}


def test_all_tied_non_finite_and_identical_texts_are_skipped_and_counted():
    result = pairs_from_scores(
        ["tied", "inf", "same", "ok"],
        [["a", "b"], ["a", "b"], ["x", "x"], ["good", "bad"]],
        [[0.5, 0.5], [math.inf, 0.0], [1.0, 0.0], [1.0, 0.0]],
    )
    assert [p.prompt for p in result.pairs] == ["ok"]
    assert result.skipped == {"all_tied": 1, "non_finite": 1, "identical_text": 1}


def test_nan_score_is_an_error_naming_oracle_prompt_and_candidate():
    with pytest.raises(OracleError, match=r"oracle 'rm' returned NaN for prompt 0 \('p'\), candidate 1 \('b'\)"):
        pairs_from_scores(["p"], [["a", "b"]], [[0.0, math.nan]], oracle="rm")


def test_rank_and_pair_uses_the_oracle():
    oracle = get_oracle("callable", function=lambda p, a: float(len(a)))
    scores, result = rank_and_pair(oracle, ["p"], [["aa", "a", "aaaa"]], iteration=1)
    assert scores == [[2.0, 1.0, 4.0]]
    assert (result.pairs[0].chosen, result.pairs[0].rejected, result.pairs[0].margin) == ("aaaa", "a", 3.0)


def test_principle_contrast_answers_under_each_principle_with_the_same_seeds(tiny_lm):
    prompts = ["What is the capital of France?", "Give three tips for sleep."]
    options = dict(max_new_tokens=6, temperature=1.0, seed=7, progress=False)
    result = principle_contrast_pairs(tiny_lm, prompts, "You are kind.", "You are rude.", iteration=2, **options)
    good = generate(tiny_lm, prompts, system_prompt="You are kind.", **options)
    bad = generate(tiny_lm, prompts, system_prompt="You are rude.", **options)
    made = [(p.prompt, p.chosen, p.rejected) for p in result.pairs]
    want = [(q, g[0].text, b[0].text) for q, g, b in zip(prompts, good, bad) if g[0].text != b[0].text]
    assert made == want and len(made) + result.skipped.get("identical_text", 0) == 2
    assert all(p.source == "principle" and p.iteration == 2 and p.margin == 1.0 for p in result.pairs)


def test_principle_contrast_needs_both_principles(tiny_lm):
    with pytest.raises(ValueError, match="negative_principle must be a non-empty string"):
        principle_contrast_pairs(tiny_lm, ["q"], "Be kind.", " ")


def pair(prompt, chosen, rejected, margin, iteration=0):
    return PreferencePair(prompt, chosen, rejected, margin, iteration)


def test_buffer_keeps_highest_margins_up_to_the_budget_and_says_why_it_dropped():
    buffer = PreferenceBuffer(budget=3, min_margin=0.1)
    first = buffer.update(
        [pair("p1", "a", "b", 1.0), pair("p2", "a", "b", 0.5), pair("p3", "a", "b", 0.05)], iteration=0
    )
    assert (first.offered, first.kept, first.new_kept, first.dropped) == (3, 2, 2, {"below_margin": 1})
    second = buffer.update(
        PairSet(
            [
                pair("p1", "a", "b", 0.2, 1),
                pair("p4", "a", "b", 2.0, 1),
                pair("p5", "a", "b", 0.7, 1),
                pair("p2", "b", "a", 0.9, 1),
            ],
            prompts=5,
        ),
        iteration=1,
    )
    # p1 duplicate (the 1.0 copy from iteration 0 stays); p2 reversed with a larger margin wins.
    assert [(p.prompt, p.chosen, p.margin, p.iteration) for p in buffer.pairs] == [
        ("p4", "a", 2.0, 1),
        ("p1", "a", 1.0, 0),
        ("p2", "b", 0.9, 1),
    ]
    assert second.dropped == {"duplicate": 1, "contradicted": 1, "over_budget": 1}
    assert (second.offered, second.kept, second.new_kept) == (4, 3, 2)
    assert len(buffer.history) == 2


def test_buffer_drops_pairs_older_than_max_age():
    buffer = PreferenceBuffer(max_age=1)
    buffer.update([pair("old", "a", "b", 5.0, 0)], iteration=0)
    buffer.update([pair("mid", "a", "b", 1.0, 1)], iteration=1)
    report = buffer.update([pair("new", "a", "b", 1.0, 2)], iteration=2)
    assert sorted(p.prompt for p in buffer.pairs) == ["mid", "new"] and report.dropped == {"too_old": 1}


def test_buffer_selection_is_deterministic_on_equal_margins():
    pairs = [pair(f"p{i}", "a", "b", 1.0, i % 2) for i in range(6)]
    one, two = PreferenceBuffer(budget=3), PreferenceBuffer(budget=3)
    one.update(pairs, iteration=1)
    two.update(list(reversed(pairs)), iteration=1)
    assert one.pairs == two.pairs and all(p.iteration == 1 for p in one.pairs)  # newer first on ties


def test_buffer_rejects_non_finite_margins():
    with pytest.raises(ValueError, match="margins must be finite"):
        PreferenceBuffer().update([pair("p", "a", "b", math.inf)], iteration=0)


def test_buffer_dataframe_has_every_field():
    buffer = PreferenceBuffer()
    buffer.update([pair("p", "a", "b", 1.0, 2)], iteration=2)
    frame = buffer.to_dataframe()
    assert list(frame.columns) == DPO_COLUMNS + METADATA_COLUMNS + ["chosen_score", "rejected_score"]
    assert frame.iloc[0]["iteration"] == 2


def test_dpo_records_in_standard_and_conversational_form():
    pairs = [pair("Q?", "good", "bad", 1.0)]
    assert to_dpo_records(pairs) == [{"prompt": "Q?", "chosen": "good", "rejected": "bad"}]
    conv = to_dpo_records(pairs, conversational=True, metadata=True)[0]
    assert conv["prompt"] == [{"role": "user", "content": "Q?"}]
    assert conv["chosen"] == [{"role": "assistant", "content": "good"}] and conv["margin"] == 1.0
    assert list(to_dpo_dataframe(pairs, metadata=True).columns) == DPO_COLUMNS + METADATA_COLUMNS


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_dpo_files_read_back_as_a_datasets_dataset(tmp_path, suffix):
    import datasets

    buffer = PreferenceBuffer()
    buffer.update([pair("Q1?", "good ü", "bad", 1.0), pair("Q2?", "yes", "no", 0.5)], iteration=0)
    path = write_dpo(buffer, tmp_path / f"dpo{suffix}")
    loader = "parquet" if suffix == ".parquet" else "json"
    data = datasets.load_dataset(loader, data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert data.column_names == DPO_COLUMNS
    assert data[0] == {"prompt": "Q1?", "chosen": "good ü", "rejected": "bad"}
    if suffix == ".jsonl":
        assert json.loads(path.read_text(encoding="utf-8").splitlines()[1]) == {
            "prompt": "Q2?",
            "chosen": "yes",
            "rejected": "no",
        }
    else:
        assert pd.read_parquet(path).shape == (2, 3)


def test_write_dpo_refuses_unknown_suffixes(tmp_path):
    with pytest.raises(ValueError, match=r"must end in .parquet or .jsonl"):
        write_dpo([pair("p", "a", "b", 1.0)], tmp_path / "x.csv")


def test_ranks_put_the_best_first_and_break_ties_by_sample_order():
    from sims_core.preferences import ranks

    assert ranks([0.2, 0.9, 0.5]) == [2, 0, 1]
    assert ranks([0.5, 0.7, 0.5, 0.5]) == [1, 0, 2, 3]  # equal scores: the earlier sample ranks first
    assert ranks([]) == []
