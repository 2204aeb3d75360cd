"""Prompt sets: ids, validation with reported drops, deterministic splits and samples, the
packaged default set."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from importlib import resources

import pytest

from sims_core.errors import UserError
from sims_core.prompts import (
    SPLITS,
    PromptRecord,
    default_prompts,
    make_prompt_records,
    normalize_prompt,
    prompt_id,
    records_to_rows,
    sample_prompts,
    split_counts,
    split_prompts,
)

TEXTS = [f"Question number {i}: what is {i} plus {i}?" for i in range(200)]


def test_prompt_id_is_short_sha256_of_normalized_text():
    assert prompt_id("Hi there") == hashlib.sha256(b"Hi there").hexdigest()[:16]
    assert prompt_id("  Hi \n\t there ") == prompt_id("Hi there")
    assert prompt_id("Hi there") != prompt_id("hi there")  # case is kept
    assert normalize_prompt("Caf\u0065\u0301  au lait ") == "Caf\u00e9 au lait"  # NFC


def test_make_prompt_records_assigns_ids_and_keeps_order():
    records, report = make_prompt_records(["  B? ", "A?"], ["x", None])
    assert records == [
        PromptRecord(prompt_id=prompt_id("B?"), prompt="B?", category="x"),
        PromptRecord(prompt_id=prompt_id("A?"), prompt="A?", category=None),
    ]
    assert (report.n_input, report.n_kept, report.n_duplicates, report.n_empty) == (2, 2, 0, 0)
    assert report.message == "kept 2 of 2 prompts"


def test_duplicates_and_empties_are_dropped_and_counted():
    texts = ["a", "b", "a", "  ", "b ", "c", "", "a"]
    records, report = make_prompt_records(texts)
    assert [r.prompt for r in records] == ["a", "b", "c"]
    assert report.n_duplicates == 3
    assert report.duplicate_indices == (2, 4, 7)
    assert report.n_empty == 2
    assert report.empty_indices == (3, 6)
    assert report.n_dropped == 5
    assert report.message == (
        "kept 3 of 8 prompts; dropped 3 duplicates (input positions 2, 4, 7) and "
        "2 empty or whitespace-only (input positions 3, 6)"
    )


def test_duplicate_keeps_first_category():
    records, report = make_prompt_records(["q", "q"], ["first", "second"])
    assert [(r.prompt, r.category) for r in records] == [("q", "first")]
    assert report.n_duplicates == 1


@pytest.mark.parametrize(
    ("texts", "error", "match"),
    [
        ([], ValueError, "texts is empty"),
        ("one prompt", TypeError, "wrap it in a list"),
        (["ok", 3], TypeError, r"texts\[1\] is int"),
        (["", "  "], ValueError, "all 2 texts are empty"),
    ],
)
def test_make_prompt_records_rejects_bad_input(texts, error, match):
    with pytest.raises(error, match=match):
        make_prompt_records(texts)


def test_categories_length_must_match():
    with pytest.raises(ValueError, match="categories has 1 entries but texts has 2"):
        make_prompt_records(["a", "b"], ["x"])


def test_split_is_deterministic_and_hits_fractions_roughly():
    records, _ = make_prompt_records(TEXTS)
    a = split_prompts(records, eval_fraction=0.25, val_fraction=0.15, seed=0)
    b = split_prompts(records, eval_fraction=0.25, val_fraction=0.15, seed=0)
    assert a == b
    assert [r.prompt_id for r in a] == [r.prompt_id for r in records]  # input order kept
    counts = split_counts(a)
    assert sum(counts[s] for s in SPLITS) == 200
    assert 30 <= counts["eval"] <= 70 and 12 <= counts["val"] <= 50 and counts["train"] >= 90
    other_seed = split_prompts(records, seed=1)
    assert [r.split for r in other_seed] != [r.split for r in a]


def test_split_of_a_prompt_ignores_order_and_other_prompts():
    records, _ = make_prompt_records(TEXTS)
    full = {r.prompt_id: r.split for r in split_prompts(records, seed=7)}
    shuffled = records[:]
    random.Random(3).shuffle(shuffled)
    assert {r.prompt_id: r.split for r in split_prompts(shuffled, seed=7)} == full
    subset = records[::3]
    for r in split_prompts(subset, seed=7):
        assert r.split == full[r.prompt_id]


def test_split_matches_documented_hash_rule():
    records, _ = make_prompt_records(TEXTS[:20])
    for r in split_prompts(records, eval_fraction=0.3, val_fraction=0.2, seed=5):
        digest = hashlib.sha256(f"split:5:{r.prompt_id}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2.0**64
        assert r.split == ("eval" if u < 0.3 else "val" if u < 0.5 else "train")


def test_split_refuses_an_empty_split_and_names_it():
    records, _ = make_prompt_records(["only one prompt"])
    with pytest.raises(ValueError) as info:
        split_prompts(records, eval_fraction=0.25, val_fraction=0.15, seed=0)
    assert str(info.value) == (
        "split 'train' would be empty with 1 prompt (train 0, val 0, eval 1; eval_fraction=0.25, "
        "val_fraction=0.15, seed=0): add prompts or lower eval_fraction/val_fraction"
    )
    four, _ = make_prompt_records(["a", "b", "c", "d"])
    with pytest.raises(ValueError) as info:
        split_prompts(four, seed=0)
    assert str(info.value) == (
        "split 'val' would be empty with 4 prompts (train 4, val 0, eval 0; eval_fraction=0.25, "
        "val_fraction=0.15, seed=0): add prompts, or set eval_fraction=0.55 and val_fraction=0.15 (every split "
        "then has a prompt), or set val_fraction=0 to have no val split"
    )


@pytest.mark.parametrize("texts", [["a", "b", "c", "d"], ["What is 2+2?", "Name a colour.", "Write a haiku."]])
def test_the_advice_of_a_split_error_works_and_never_suggests_what_a_run_refuses(texts):
    from sims_core.config import SimsConfig
    from sims_core.prompts import PromptSplitError

    records, _ = make_prompt_records(texts)
    with pytest.raises(PromptSplitError) as info:
        split_prompts(records, seed=0, allow_empty_splits=False)
    message = str(info.value)
    assert "=0 " not in message and not message.endswith("=0")
    suggested = dict(re.findall(r"(eval_fraction|val_fraction)=([0-9.]+) ", message.split(": ", 1)[1] + " "))
    fractions = {k: float(v) for k, v in suggested.items()}
    assert set(fractions) == {"eval_fraction", "val_fraction"}
    SimsConfig(**fractions)  # the config accepts the advice ...
    assert {r.split for r in split_prompts(records, seed=0, **fractions)} == {
        "train",
        "val",
        "eval",
    }  # ... and it works


def test_too_few_distinct_prompts_for_a_run_say_how_many_are_needed():
    records, report = make_prompt_records(["the same prompt"] * 60)
    assert report.n_duplicates == 59
    with pytest.raises(ValueError, match="a run needs at least 3 distinct prompts"):
        split_prompts(records, allow_empty_splits=False)


def test_split_zero_fraction_means_no_such_split():
    records, _ = make_prompt_records(TEXTS[:50])
    out = split_prompts(records, eval_fraction=0.3, val_fraction=0.0)
    counts = split_counts(out)
    assert counts["val"] == 0 and counts["eval"] > 0 and counts["train"] > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eval_fraction": 1.0}, r"eval_fraction must be a number in \[0, 1\)"),
        ({"val_fraction": -0.1}, "val_fraction must be"),
        ({"eval_fraction": 0.6, "val_fraction": 0.4}, "must be below 1"),
    ],
)
def test_split_rejects_bad_fractions(kwargs, match):
    records, _ = make_prompt_records(TEXTS[:10])
    with pytest.raises(ValueError, match=match):
        split_prompts(records, **kwargs)


def test_split_rejects_duplicate_ids():
    records, _ = make_prompt_records(["a", "b"])
    with pytest.raises(ValueError, match="appears twice"):
        split_prompts(records + records[:1])


def test_sample_is_deterministic_per_iteration_and_only_train():
    records = split_prompts(make_prompt_records(TEXTS)[0], seed=0)
    n_train = split_counts(records)["train"]
    s1 = sample_prompts(records, 16, seed=0, iteration=1)
    assert s1 == sample_prompts(records, 16, seed=0, iteration=1)
    assert len(s1.records) == 16 and s1.shortfall == 0 and s1.available == n_train
    assert all(r.split == "train" for r in s1.records)
    assert len({r.prompt_id for r in s1.records}) == 16
    s2 = sample_prompts(records, 16, seed=0, iteration=2)
    assert {r.prompt_id for r in s2.records} != {r.prompt_id for r in s1.records}
    s3 = sample_prompts(records, 16, seed=1, iteration=1)
    assert {r.prompt_id for r in s3.records} != {r.prompt_id for r in s1.records}
    assert s1.message == f"sampled 16 of {n_train} train prompts for iteration 1 (seed 0)"
    assert s1.prompts == [r.prompt for r in s1.records]


def test_sample_ignores_input_order():
    records = split_prompts(make_prompt_records(TEXTS)[0], seed=0)
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    a = sample_prompts(records, 10, seed=4, iteration=3)
    b = sample_prompts(shuffled, 10, seed=4, iteration=3)
    assert {r.prompt_id for r in a.records} == {r.prompt_id for r in b.records}
    # returned in input order
    order = {r.prompt_id: i for i, r in enumerate(shuffled)}
    assert [order[r.prompt_id] for r in b.records] == sorted(order[r.prompt_id] for r in b.records)


def test_sample_more_than_available_returns_all_and_says_so():
    records = split_prompts(make_prompt_records(TEXTS[:40])[0], seed=0)
    n_train = split_counts(records)["train"]
    sample = sample_prompts(records, 1000, seed=0, iteration=0)
    assert len(sample.records) == n_train
    assert sample.shortfall == 1000 - n_train
    assert sample.message == (
        f"asked for 1000 train prompts at iteration 0 but only {n_train} exist: using all {n_train}"
    )


def test_sample_errors():
    records, _ = make_prompt_records(TEXTS[:5])
    with pytest.raises(ValueError, match="assign splits with split_prompts first"):
        sample_prompts(records, 2, seed=0, iteration=0)
    assert len(sample_prompts(records, 2, seed=0, iteration=0, split=None).records) == 2
    with pytest.raises(ValueError, match="n must be a positive integer"):
        sample_prompts(records, 0, seed=0, iteration=0, split=None)
    with pytest.raises(ValueError, match="split must be one of"):
        sample_prompts(records, 1, seed=0, iteration=0, split="test")


def test_records_to_rows_matches_prompts_artifact_columns():
    records = split_prompts(make_prompt_records(TEXTS[:30], ["maths"] * 30)[0])
    rows = records_to_rows(records)
    assert rows[0] == {
        "prompt_id": records[0].prompt_id,
        "prompt": TEXTS[0],
        "split": records[0].split,
        "category": "maths",
        "reference": None,
    }


def test_default_prompts_packaged_set():
    records = default_prompts()
    assert len(records) == 600
    assert len({r.prompt_id for r in records}) == len(records)
    assert len({r.prompt.lower() for r in records}) == len(records)
    assert all(r.category for r in records) and all(r.split is None for r in records)
    by_category = Counter(r.category for r in records)
    assert len(by_category) == 12 and set(by_category.values()) == {50}
    # short requests; summaries and rewrites quote the passage they work on
    assert all(len(r.prompt.split()) <= 60 for r in records)
    assert sum(len(r.prompt.split()) <= 25 for r in records) >= 500
    # every prompt has its own non-empty reference answer
    assert all(r.reference and r.reference == r.reference.strip() for r in records)
    assert len({r.reference for r in records}) == len(records)
    assert records[0].prompt == "What is the capital city of Australia?"
    assert records[0].reference.startswith("The capital of Australia is Canberra.")
    # the file is a JSON-lines resource with exactly these keys
    raw = resources.files("sims_core").joinpath("data/default_prompts.jsonl").read_text("utf-8")
    rows = [json.loads(line) for line in raw.splitlines()]
    assert all(set(row) == {"prompt", "category", "reference"} for row in rows)
    assert [r.reference for r in records] == [row["reference"] for row in rows]
    # the default set splits with every split populated, and the references follow their prompts
    split = split_prompts(records)
    counts = split_counts(split)
    assert min(counts[s] for s in SPLITS) >= 60
    assert [r.reference for r in split] == [r.reference for r in records]
    sample = sample_prompts(split, 40, seed=0, iteration=1, split="eval")
    by_id = {r.prompt_id: r.reference for r in records}
    assert all(r.reference == by_id[r.prompt_id] for r in sample.records)


def test_a_default_prompts_line_without_a_reference_is_an_error_naming_the_line(monkeypatch):
    import sims_core.prompts as prompts_module

    lines = [
        json.dumps({"prompt": "Why is the sky blue?", "category": "explanation", "reference": "Rayleigh scattering."}),
        json.dumps({"prompt": "Name a prime.", "category": "math"}),
    ]

    class Fake:
        def joinpath(self, name):
            return self

        def read_text(self, encoding):
            return "\n".join(lines)

    monkeypatch.setattr(prompts_module.resources, "files", lambda package: Fake())
    with pytest.raises(UserError, match=r"default_prompts.jsonl line 2 has no reference answer"):
        default_prompts()


def test_references_travel_with_their_prompts_and_duplicates_drop_theirs():
    records, report = make_prompt_records(
        ["Q1?", " Q2? ", "Q1?", "Q3?"], references=["  A1. ", "A2.", "another A1", "  "]
    )
    assert [(r.prompt, r.reference) for r in records] == [("Q1?", "A1."), ("Q2?", "A2."), ("Q3?", None)]
    assert report.duplicate_indices == (2,)
    with pytest.raises(UserError, match="references has 1 entries but texts has 2"):
        make_prompt_records(["a", "b"], references=["x"])
    with pytest.raises(UserError, match=r"references\[1\] is int"):
        make_prompt_records(["a", "b"], references=["x", 3])
