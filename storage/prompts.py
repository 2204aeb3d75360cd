"""Load prompt texts from where users keep them: the built-in set, a file, or a HF dataset.

A *prompt source* is a string:

- ``"default"``: the built-in prompt set packaged with ``sims_core``
  (:func:`sims_core.prompts.default_prompts`); ``column`` and ``split`` are ignored.
- a local path or fsspec URL (``s3://bucket/key``, ``file://...``) of a ``.parquet``,
  ``.jsonl``, ``.json`` (an array of objects, an object of columns, or JSON lines) or ``.csv``
  (UTF-8, with a header row) file; ``split`` is ignored. ``storage_options`` go to fsspec
  (e.g. s3fs's ``endpoint_url``/``key``/``secret``).
- ``"hf:NAME[:CONFIG]"``: a Hugging Face dataset, loaded with
  ``datasets.load_dataset(NAME, CONFIG, split=split)``. When NAME is a directory written by
  ``Dataset.save_to_disk``/``DatasetDict.save_to_disk`` it is read with
  ``datasets.load_from_disk`` instead (``split`` picks the split of a saved DatasetDict). When
  NAME is a packaged builder (``json``, ``csv``, ``parquet``, ``text``), CONFIG is the data
  file(s): ``"hf:json:/data/prompts.jsonl"`` is ``load_dataset("json", data_files=...)``.
  Without network access a hub dataset must already be in the local cache (set
  ``HF_HUB_OFFLINE=1`` so ``datasets`` does not try the network) or be saved locally.

Every prompt must be a non-empty string: this module refuses bad values with the row numbers
rather than dropping them; de-duplication (which is reported, not silent) is
:func:`sims_core.prompts.make_prompt_records`' job.

Quick tour::

    from storage.prompts import load_prompt_table
    from sims_core.prompts import make_prompt_records

    table = load_prompt_table("s3://bucket/prompts.parquet", column="instruction")
    records, report = make_prompt_records(table.texts, table.categories)
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fsspec

from sims_core.errors import UserError

__all__ = [
    "DEFAULT_SOURCE",
    "HF_PREFIX",
    "SUPPORTED_EXTENSIONS",
    "PromptSourceError",
    "PromptTable",
    "load_prompt_table",
    "load_prompt_texts",
]

DEFAULT_SOURCE = "default"
HF_PREFIX = "hf:"
SUPPORTED_EXTENSIONS: tuple[str, ...] = (".parquet", ".jsonl", ".json", ".csv")
_PACKAGED_BUILDERS = ("json", "csv", "parquet", "text")
_MAX_LISTED = 5


class PromptSourceError(UserError):
    """A prompt source that cannot be read as prompts: unsupported extension, missing column,
    bad values, or a Hugging Face dataset that cannot be loaded."""


@dataclass(frozen=True)
class PromptTable:
    """Prompts read from a source: ``texts`` in source order, ``categories`` (one per text,
    ``None`` where blank) when the source has the category column, else ``None``."""

    texts: list[str]
    categories: list[str | None] | None
    source: str
    column: str

    def __len__(self) -> int:
        return len(self.texts)


def load_prompt_texts(
    source: str | os.PathLike[str],
    *,
    column: str = "prompt",
    split: str = "train",
    storage_options: dict[str, Any] | None = None,
) -> list[str]:
    """The prompt texts of ``source`` (see the module docstring), in source order.

    Raises ``FileNotFoundError`` for a missing file and :class:`PromptSourceError` for an
    unsupported extension, a missing ``column``, non-string or empty values, or a dataset that
    cannot be loaded; each message is one sentence naming the source.
    """
    return load_prompt_table(source, column=column, split=split, storage_options=storage_options).texts


def load_prompt_table(
    source: str | os.PathLike[str],
    *,
    column: str = "prompt",
    category_column: str | None = "category",
    split: str = "train",
    storage_options: dict[str, Any] | None = None,
) -> PromptTable:
    """Like :func:`load_prompt_texts`, plus the ``category_column`` when the source has it."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"prompt source must be a string or path, got {type(source).__name__}")
    source = os.fspath(source).strip()
    if not source:
        raise PromptSourceError("prompt source is empty: give 'default', a file path/URL or 'hf:NAME[:CONFIG]'")
    if source == DEFAULT_SOURCE:
        from sims_core.prompts import default_prompts

        records = default_prompts()
        return PromptTable(
            texts=[r.prompt for r in records],
            categories=[r.category for r in records],
            source=DEFAULT_SOURCE,
            column="prompt",
        )
    if source.startswith(HF_PREFIX):
        return _load_hf(source, column, category_column, split, storage_options)
    return _load_file(source, column, category_column, storage_options)


# --------------------------------------------------------------------------- files


def _is_saved_dataset(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether ``path`` is a directory written by ``Dataset(Dict).save_to_disk``."""
    try:
        if fs.isfile(f"{path.rstrip('/')}/dataset_dict.json"):
            return True
        return fs.isfile(f"{path.rstrip('/')}/state.json") and fs.isfile(f"{path.rstrip('/')}/dataset_info.json")
    except OSError:
        return False


def _load_file(
    source: str,
    column: str,
    category_column: str | None,
    storage_options: dict[str, Any] | None,
) -> PromptTable:
    fs, path = fsspec.core.url_to_fs(source, **(storage_options or {}))
    if not fs.exists(path):
        raise FileNotFoundError(f"prompt file {source!r} does not exist")
    if fs.isdir(path):
        if _is_saved_dataset(fs, path):
            raise PromptSourceError(
                f"prompt source {source!r} is a saved Hugging Face dataset directory: pass it as 'hf:{source}'"
            )
        raise PromptSourceError(
            f"prompt source {source!r} is a directory, not a file: give a "
            f"{', '.join(SUPPORTED_EXTENSIONS)} file, or 'hf:{source}' for a dataset directory"
        )
    lower = path.lower()
    ext = next((e for e in SUPPORTED_EXTENSIONS if lower.endswith(e)), None)
    if ext is None:
        found = os.path.splitext(lower)[1] or "(none)"
        raise PromptSourceError(
            f"prompt file {source!r} has unsupported extension {found}; supported: "
            f"{', '.join(SUPPORTED_EXTENSIONS)} (or 'default', or 'hf:NAME[:CONFIG]' for a "
            "Hugging Face dataset)"
        )
    wanted = [column] + ([category_column] if category_column and category_column != column else [])
    if ext == ".parquet":
        columns, data = _read_parquet(fs, path, wanted)
    elif ext == ".csv":
        columns, data = _read_csv(fs, path, source)
    else:
        columns, data = _read_json(fs, path, source, lines=(ext == ".jsonl"))
    return _table(source, "prompt file", columns, data, column, category_column)


def _read_parquet(
    fs: fsspec.AbstractFileSystem, path: str, wanted: list[str]
) -> tuple[list[str], dict[str, list[Any]]]:
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        names = list(pf.schema_arrow.names)
        present = [c for c in wanted if c in names]
        table = pf.read(columns=present) if present else None
    data = {c: table.column(c).to_pylist() for c in present} if table is not None else {}
    return names, data


def _read_csv(fs: fsspec.AbstractFileSystem, path: str, source: str) -> tuple[list[str], dict[str, list[Any]]]:
    with fs.open(path, "rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        reader = csv.DictReader(text)
        names = list(reader.fieldnames or [])
        data: dict[str, list[Any]] = {c: [] for c in names}
        for row in reader:
            for c in names:
                value = row.get(c)
                data[c].append(value)  # a short row leaves None: reported as non-string
    return names, data


def _read_json(
    fs: fsspec.AbstractFileSystem, path: str, source: str, *, lines: bool
) -> tuple[list[str], dict[str, list[Any]]]:
    with fs.open(path, "rb") as f:
        raw = f.read().decode("utf-8-sig")
    rows: list[Any]
    if not lines:
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # "Extra data": several documents, i.e. JSON lines
                raise PromptSourceError(f"prompt file {source!r} is not valid JSON (line {e.lineno}: {e.msg})") from e
            lines = True
        else:
            if isinstance(doc, dict) and doc and all(isinstance(v, list) for v in doc.values()):
                lengths = {len(v) for v in doc.values()}
                if len(lengths) != 1:
                    raise PromptSourceError(
                        f"prompt file {source!r} is an object of columns with different lengths {sorted(lengths)}"
                    )
                return list(doc), {k: list(v) for k, v in doc.items()}
            if not isinstance(doc, list):
                raise PromptSourceError(
                    f"prompt file {source!r} holds a JSON {type(doc).__name__}; expected an "
                    "array of objects, an object of equal-length column arrays, or JSON lines"
                )
            rows = doc
    if lines:
        rows = []
        for lineno, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise PromptSourceError(f"prompt file {source!r} line {lineno} is not valid JSON ({e.msg})") from e
    names: list[str] = []
    seen: set[str] = set()
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise PromptSourceError(
                f"prompt file {source!r} row {i} is a JSON {type(row).__name__}, expected an "
                'object such as {"prompt": "..."}'
            )
        for k in row:
            if k not in seen:
                seen.add(k)
                names.append(k)
    return names, {c: [row.get(c) for row in rows] for c in names}


# --------------------------------------------------------------------------- Hugging Face


def _load_hf(
    source: str,
    column: str,
    category_column: str | None,
    split: str,
    storage_options: dict[str, Any] | None,
) -> PromptTable:
    spec = source[len(HF_PREFIX) :]
    name, _, config = spec.partition(":")
    if not name:
        raise PromptSourceError(f"prompt source {source!r} names no dataset; expected 'hf:NAME[:CONFIG]'")
    import datasets

    if name in _PACKAGED_BUILDERS:
        what = f"Hugging Face {name} dataset {config!r}"
    else:
        what = f"Hugging Face dataset {name!r}" + (f" (config {config!r})" if config else "")
    try:
        fs, path = fsspec.core.url_to_fs(name, **(storage_options or {}))
        saved = _is_saved_dataset(fs, path)
    except (ValueError, TypeError, ImportError, OSError):
        saved = False
    try:
        if saved:
            ds = datasets.load_from_disk(name, storage_options=storage_options)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise PromptSourceError(
                        f"{what} (saved on disk) has no split {split!r}; its splits are {sorted(ds)}"
                    )
                ds = ds[split]
        elif name in _PACKAGED_BUILDERS:
            if not config:
                raise PromptSourceError(
                    f"prompt source {source!r} uses the {name} builder without data files; "
                    f"write 'hf:{name}:PATH_OR_URL'"
                )
            ds = datasets.load_dataset(name, data_files=config, split=split, storage_options=storage_options)
        else:
            ds = datasets.load_dataset(name, config or None, split=split, storage_options=storage_options)
    except PromptSourceError:
        raise
    except (FileNotFoundError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as e:
        if name in _PACKAGED_BUILDERS:
            raise PromptSourceError(
                f"data files {config!r} for the Hugging Face {name} builder were not found ({type(e).__name__}: {e})"
            ) from e
        raise PromptSourceError(
            f"{what} could not be loaded ({type(e).__name__}: {e}); check the name, and without "
            "network access use a copy in the local cache (set HF_HUB_OFFLINE=1 to read only "
            "the cache) or save one with Dataset.save_to_disk and pass 'hf:/path/to/that/dir'"
        ) from e
    except ValueError as e:
        if "split" in str(e).lower():
            raise PromptSourceError(f"{what} has no split {split!r} ({e})") from e
        raise
    if not isinstance(ds, datasets.Dataset):
        raise PromptSourceError(f"{what} loaded as {type(ds).__name__}, expected one split (a Dataset)")
    names = list(ds.column_names)
    wanted = [column] + ([category_column] if category_column and category_column != column else [])
    data = {c: list(ds[c]) for c in wanted if c in names}
    return _table(source, what, names, data, column, category_column)


# --------------------------------------------------------------------------- validation


def _rows(indices: Sequence[int]) -> str:
    shown = ", ".join(str(i + 1) for i in indices[:_MAX_LISTED])
    return shown + (f", ... ({len(indices) - _MAX_LISTED} more)" if len(indices) > _MAX_LISTED else "")


def _table(
    source: str,
    what: str,
    columns: list[str],
    data: dict[str, list[Any]],
    column: str,
    category_column: str | None,
) -> PromptTable:
    label = what if what != "prompt file" else f"prompt file {source!r}"
    if column not in columns:
        raise PromptSourceError(
            f"{label} has no column {column!r}; its columns are {columns} (pass column=... to choose one)"
        )
    values = data[column]
    if not values:
        raise PromptSourceError(f"{label} has no rows: a prompt set needs at least one prompt")
    non_string = [i for i, v in enumerate(values) if not isinstance(v, str)]
    empty = [i for i, v in enumerate(values) if isinstance(v, str) and not v.strip()]
    if non_string or empty:
        parts = []
        if non_string:
            kinds = sorted({type(values[i]).__name__ for i in non_string})
            parts.append(
                f"{len(non_string)} non-string value{'s' if len(non_string) != 1 else ''} "
                f"({', '.join(kinds)}) at rows {_rows(non_string)}"
            )
        if empty:
            parts.append(f"{len(empty)} empty value{'s' if len(empty) != 1 else ''} at rows {_rows(empty)}")
        raise PromptSourceError(
            f"column {column!r} of {label} has {' and '.join(parts)} "
            f"(rows counted from 1, out of {len(values)}); every prompt must be a non-empty string"
        )
    categories: list[str | None] | None = None
    if category_column and category_column != column and category_column in data:
        categories = [
            None if v is None or (isinstance(v, str) and not v.strip()) or v != v else str(v)
            for v in data[category_column]
        ]
    return PromptTable(texts=list(values), categories=categories, source=source, column=column)
