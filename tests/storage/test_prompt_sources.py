"""Prompt sources: the built-in set, files in every supported format (local and S3), Hugging
Face datasets from local files and save_to_disk directories, and the error messages."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from sims_core.prompts import default_prompts, make_prompt_records
from storage.prompt_sources import SUPPORTED_EXTENSIONS, PromptSourceError, PromptTable, load_prompt_table

PROMPTS = ["What is 2 + 2?", "Name a red fruit.", "Write a haiku about tea.", "Why is ice cold?"]
CATS = ["math", "factual", "creative", None]


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep datasets' cache inside the test's tmp dir and the hub offline."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf-cache"


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"prompt": PROMPTS, "category": CATS, "n": [1, 2, 3, 4]})


def refused(*args, error: type[Exception] = PromptSourceError, **kwargs) -> str:
    """The message of the ``error`` that loading a prompt table (and reading its texts) raises."""
    with pytest.raises(error) as info:
        load_prompt_table(*args, **kwargs).texts
    return str(info.value)


def _write(path, fmt: str, df: pd.DataFrame | None = None) -> None:
    df = _frame() if df is None else df
    if fmt == "parquet":
        df.to_parquet(path, index=False)
    elif fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            for row in df.to_dict(orient="records"):
                f.write(json.dumps(row) + "\n")
    elif fmt == "json":
        with open(path, "w", encoding="utf-8") as f:
            json.dump(df.to_dict(orient="records"), f)
    else:
        raise AssertionError(fmt)


def test_default_source_is_the_packaged_set():
    table = load_prompt_table("default")
    records = default_prompts()
    assert table.texts == [r.prompt for r in records]
    assert table.categories == [r.category for r in records]
    assert len(set(table.texts)) == len(table.texts) >= 200
    assert load_prompt_table("default").texts == table.texts
    _, report = make_prompt_records(table.texts, table.categories)
    assert report.n_dropped == 0


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl", "json"])
def test_local_file_round_trip(tmp_path, fmt):
    path = tmp_path / f"prompts.{fmt}"
    _write(path, fmt)
    table = load_prompt_table(str(path))
    assert table == PromptTable(texts=PROMPTS, categories=CATS, source=str(path), column="prompt")
    assert load_prompt_table(path).texts == PROMPTS  # a Path works too


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl", "json"])
def test_other_column_and_no_category(tmp_path, fmt):
    path = tmp_path / f"p.{fmt}"
    _write(path, fmt, pd.DataFrame({"instruction": PROMPTS, "id": ["a", "b", "c", "d"]}))
    table = load_prompt_table(str(path), column="instruction")
    assert table.texts == PROMPTS and table.categories is None


def test_json_column_object_and_json_lines_in_dot_json(tmp_path):
    cols = tmp_path / "cols.json"
    cols.write_text(json.dumps({"prompt": PROMPTS}), encoding="utf-8")
    assert load_prompt_table(str(cols)).texts == PROMPTS
    lines = tmp_path / "lines.json"
    lines.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8")
    assert load_prompt_table(str(lines)).texts == PROMPTS


def test_csv_keeps_text_that_looks_like_numbers_or_na(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt\n42\nNA\n"Hello, world"\n', encoding="utf-8")
    assert load_prompt_table(str(path)).texts == ["42", "NA", "Hello, world"]


def test_s3_parquet_and_jsonl_round_trip(s3_bucket, aws_env):
    import fsspec

    opts = {"endpoint_url": aws_env}
    for fmt in ("parquet", "jsonl"):
        url = f"s3://{s3_bucket}/sets/prompts.{fmt}"
        fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True, **opts)
        with fs.open(path, "wb") as f:
            if fmt == "parquet":
                _frame().to_parquet(f, index=False)
            else:
                f.write("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS).encode())
        assert load_prompt_table(url, storage_options=opts).texts == PROMPTS
    assert (
        refused(f"s3://{s3_bucket}/sets/missing.parquet", storage_options=opts, error=FileNotFoundError)
        == f"prompt file 's3://{s3_bucket}/sets/missing.parquet' does not exist"
    )


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.jsonl"
    assert refused(str(path), error=FileNotFoundError) == f"prompt file '{path}' does not exist"


def test_unknown_extension_lists_supported(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("hello\n")
    assert refused(str(path)) == (
        f"prompt file '{path}' has unsupported extension .txt; supported: "
        ".parquet, .jsonl, .json, .csv (or 'default', or 'hf:NAME[:CONFIG]' for a Hugging Face "
        "dataset)"
    )
    assert SUPPORTED_EXTENSIONS == (".parquet", ".jsonl", ".json", ".csv")


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_missing_column_names_file_column_and_existing_columns(tmp_path, fmt):
    path = tmp_path / f"p.{fmt}"
    _write(path, fmt)
    assert refused(str(path), column="question") == (
        f"prompt file '{path}' has no column 'question'; its columns are "
        "['prompt', 'category', 'n'] (pass column=... to choose one)"
    )


def test_non_string_and_empty_values_reported_with_rows_and_counts(tmp_path):
    path = tmp_path / "bad.jsonl"
    rows = [{"prompt": "ok"}, {"prompt": 5}, {"prompt": "  "}, {"other": "x"}, {"prompt": ""}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert refused(str(path)) == (
        f"column 'prompt' of prompt file '{path}' has 2 non-string values (NoneType, int) at "
        "rows 2, 4 and 2 empty values at rows 3, 5 (rows counted from 1, out of 5); every "
        "prompt must be a non-empty string"
    )


def test_parquet_null_and_csv_empty_cell(tmp_path):
    pq_path = tmp_path / "n.parquet"
    pd.DataFrame({"prompt": ["a", None, "c"]}).to_parquet(pq_path, index=False)
    with pytest.raises(PromptSourceError, match=r"1 non-string value \(NoneType\) at rows 2 "):
        load_prompt_table(str(pq_path)).texts
    csv_path = tmp_path / "e.csv"
    csv_path.write_text("prompt,category\na,x\n,y\n", encoding="utf-8")
    with pytest.raises(PromptSourceError, match=r"1 empty value at rows 2 \(rows counted"):
        load_prompt_table(str(csv_path)).texts


def test_empty_file_and_bad_json(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(PromptSourceError, match="has no column 'prompt'; its columns are \\[\\]"):
        load_prompt_table(str(empty)).texts
    no_rows = tmp_path / "none.parquet"
    pd.DataFrame({"prompt": pd.Series([], dtype=str)}).to_parquet(no_rows, index=False)
    with pytest.raises(PromptSourceError, match="has no rows"):
        load_prompt_table(str(no_rows)).texts
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(PromptSourceError, match="line 2 is not valid JSON"):
        load_prompt_table(str(broken)).texts


def test_duplicates_are_kept_by_storage_and_reported_by_core(tmp_path):
    path = tmp_path / "dups.csv"
    pd.DataFrame({"prompt": ["a", "b", "a", "a"]}).to_csv(path, index=False)
    texts = load_prompt_table(str(path)).texts
    assert texts == ["a", "b", "a", "a"]
    records, report = make_prompt_records(texts)
    assert [r.prompt for r in records] == ["a", "b"] and report.n_duplicates == 2


def test_hf_json_builder_with_local_data_file(tmp_path, hf_cache):
    path = tmp_path / "p.jsonl"
    _write(path, "jsonl")
    table = load_prompt_table(f"hf:json:{path}")
    assert table.texts == PROMPTS and table.categories == CATS
    assert hf_cache.exists()  # datasets' cache went to the tmp dir
    with pytest.raises(PromptSourceError, match="has no split 'test'"):
        load_prompt_table(f"hf:json:{path}", split="test").texts
    with pytest.raises(
        PromptSourceError, match=r"data files '.*missing\.jsonl' for the Hugging Face json builder were not found"
    ):
        load_prompt_table(f"hf:json:{tmp_path / 'missing.jsonl'}").texts


def test_hf_local_data_directory(tmp_path, hf_cache):
    data = tmp_path / "my_prompts"
    data.mkdir()
    _write(data / "train.jsonl", "jsonl")
    assert load_prompt_table(f"hf:{data}").texts == PROMPTS


def test_hf_save_to_disk_dataset_and_dataset_dict(tmp_path, hf_cache):
    import datasets

    ds = datasets.Dataset.from_pandas(_frame())
    ds.save_to_disk(str(tmp_path / "saved"))
    assert load_prompt_table(f"hf:{tmp_path / 'saved'}").texts == PROMPTS
    evals = datasets.Dataset.from_dict({"prompt": ["e1", "e2"]})
    datasets.DatasetDict({"train": ds, "eval": evals}).save_to_disk(str(tmp_path / "dd"))
    assert load_prompt_table(f"hf:{tmp_path / 'dd'}").texts == PROMPTS
    assert load_prompt_table(f"hf:{tmp_path / 'dd'}", split="eval").texts == ["e1", "e2"]
    assert refused(f"hf:{tmp_path / 'dd'}", split="test") == (
        f"Hugging Face dataset '{tmp_path / 'dd'}' (saved on disk) has no split 'test'; its "
        "splits are ['eval', 'train']"
    )
    assert refused(f"hf:{tmp_path / 'saved'}", column="text") == (
        f"Hugging Face dataset '{tmp_path / 'saved'}' has no column 'text'; its columns are "
        "['prompt', 'category', 'n'] (pass column=... to choose one)"
    )
    # the directory given without hf: is pointed to the right spelling
    with pytest.raises(PromptSourceError, match=r"saved Hugging Face dataset directory: pass it as 'hf:"):
        load_prompt_table(str(tmp_path / "saved")).texts


def test_hf_hub_dataset_offline_names_dataset_and_suggests_fixes(hf_cache):
    msg = refused("hf:no-such-user/no-such-prompts:cfg")
    assert msg.startswith("Hugging Face dataset 'no-such-user/no-such-prompts' (config 'cfg') could not be loaded")
    assert "HF_HUB_OFFLINE=1" in msg and "save_to_disk" in msg


def test_bad_source_strings():
    with pytest.raises(PromptSourceError, match="prompt source is empty"):
        load_prompt_table("  ").texts
    with pytest.raises(PromptSourceError, match="names no dataset"):
        load_prompt_table("hf:").texts
    with pytest.raises(PromptSourceError, match="without data files; write 'hf:json:PATH_OR_URL'"):
        load_prompt_table("hf:json").texts


REFS = ["4.", "An apple.", "Steam curls and rises", None]


def _with_references() -> pd.DataFrame:
    return _frame().assign(reference=REFS)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl", "json"])
def test_references_are_read_from_every_file_format(tmp_path, fmt):
    path = tmp_path / f"refs.{fmt}"
    _write(path, fmt, _with_references())
    table = load_prompt_table(str(path))
    assert table.texts == PROMPTS and table.categories == CATS
    assert table.references == REFS  # a blank or missing reference is None
    assert load_prompt_table(str(path), reference_column=None).references is None
    _write(path, fmt, _frame().assign(answer=["a", "b", "c", "d"]))
    assert load_prompt_table(str(path), reference_column="answer").references == ["a", "b", "c", "d"]


def test_references_from_a_saved_dataset_and_the_default_set(tmp_path, hf_cache):
    import datasets

    datasets.Dataset.from_pandas(_with_references()).save_to_disk(str(tmp_path / "saved"))
    table = load_prompt_table(f"hf:{tmp_path / 'saved'}")
    assert table.references == REFS and table.texts == PROMPTS
    default = load_prompt_table("default", require_reference=True)
    assert len(default.references) == len(default.texts) == 600
    assert all(isinstance(r, str) and r.strip() for r in default.references)
    packaged = [json.loads(line) for line in open(_packaged_prompts(), encoding="utf-8") if line.strip()]
    assert default.references[0] == packaged[0]["reference"] and default.texts[0] == packaged[0]["prompt"]


def _packaged_prompts() -> str:
    from importlib import resources

    return str(resources.files("sims_core").joinpath("data/default_prompts.jsonl"))


def test_files_without_references_have_none(tmp_path):
    path = tmp_path / "p.jsonl"
    _write(path, "jsonl")
    assert load_prompt_table(str(path)).references is None


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_required_reference_column_missing_names_source_column_and_columns(tmp_path, fmt):
    path = tmp_path / f"p.{fmt}"
    _write(path, fmt)
    assert refused(str(path), require_reference=True) == (
        f"prompt file '{path}' has no reference column 'reference' (its columns are ['prompt', 'category', 'n']): "
        "the reference judge needs one reference answer (a non-empty string) per prompt; pass reference_column=... "
        "to choose the column"
    )


def test_required_references_must_all_be_non_empty_strings(tmp_path, hf_cache):
    path = tmp_path / "p.parquet"
    _write(path, "parquet", _with_references())
    assert refused(str(path), require_reference=True) == (
        f"prompt file '{path}' has 1 non-string value (NoneType) at rows 4 in reference column 'reference' (its "
        "columns are ['prompt', 'category', 'n', 'reference']): the reference judge needs one reference answer "
        "(a non-empty string) per prompt; pass reference_column=... to choose the column"
    )
    import datasets

    datasets.Dataset.from_pandas(_frame()).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(PromptSourceError, match=r"^Hugging Face dataset '.*saved' has no reference column 'reference'"):
        load_prompt_table(f"hf:{tmp_path / 'saved'}", require_reference=True)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json"])
def test_a_file_that_is_not_utf8_names_the_file_and_the_offset_of_the_first_bad_byte(tmp_path, fmt):
    path = tmp_path / f"latin1.{fmt}"
    head = {"csv": b"prompt\nok\n", "jsonl": b'{"prompt": "ok"}\n', "json": b'[{"prompt": "ok"}, '}[fmt]
    path.write_bytes(head + "caf\u00e9".encode("latin-1"))
    offset = len(head) + 3
    assert refused(str(path)) == (
        f"prompt file '{path}' is not UTF-8 text: byte {offset} (0xe9) is not valid UTF-8; save it as UTF-8"
    )


def test_a_utf8_bom_is_skipped_and_counted_in_offsets(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfprompt\nok\n")
    assert load_prompt_table(str(path)).texts == ["ok"]
    path.write_bytes(b"\xef\xbb\xbfprompt\n\xff\n")
    with pytest.raises(PromptSourceError, match="byte 10 \\(0xff\\)"):
        load_prompt_table(str(path))


def test_a_damaged_parquet_prompt_file_names_the_file(tmp_path):
    path = tmp_path / "p.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(PromptSourceError, match=f"^prompt file '{path}' is not a readable Parquet file"):
        load_prompt_table(str(path))
