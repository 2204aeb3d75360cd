"""Load prompts (and reference answers) from where users keep them: the built-in set, a file, or
a Hugging Face dataset.

A *prompt source* is a string:

- ``"default"``: the built-in prompt set packaged with ``sims_core``
  (`sims_core.prompts.default_prompts`), with a reference answer for every prompt; the column
  arguments and ``split`` are ignored.
- a local path or fsspec URL (``s3://bucket/key``, ``file://...``) of a ``.parquet``,
  ``.jsonl``, ``.json`` (an array of objects, an object of columns, or JSON lines) or ``.csv``
  (UTF-8, with a header row) file, read with pandas; ``split`` is ignored. ``storage_options``
  go to fsspec (e.g. s3fs's ``endpoint_url``/``key``/``secret``).
- ``"hf:NAME[:CONFIG]"``: a Hugging Face dataset, loaded with
  ``datasets.load_dataset(NAME, CONFIG, split=split)``. When NAME is a directory written by
  ``Dataset.save_to_disk``/``DatasetDict.save_to_disk`` it is read with
  ``datasets.load_from_disk`` instead (``split`` picks the split of a saved DatasetDict). When
  NAME is a packaged builder (``json``, ``csv``, ``parquet``, ``text``), CONFIG is the data
  file(s): ``"hf:json:/data/prompts.jsonl"`` is ``load_dataset("json", data_files=...)``.
  Without network access a hub dataset must already be in the local cache (set
  ``HF_HUB_OFFLINE=1`` so ``datasets`` does not try the network) or be saved locally.

Every prompt must be a non-empty string: bad values are refused with their row numbers rather
than dropped; de-duplication (reported, not silent) is `sims_core.prompts.make_prompt_records`'
job. Reference answers (``reference_column``) are optional unless ``require_reference=True``
(the reference judge needs one per prompt).

Quick tour::

    from storage import load_prompt_table
    from sims_core.prompts import make_prompt_records

    table = load_prompt_table("s3://bucket/prompts.parquet", column="instruction")
    records, report = make_prompt_records(table.texts, table.categories)
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fsspec

from sims_core.errors import NotFoundError, UserError

__all__ = [
    "DEFAULT_SOURCE",
    "HF_PREFIX",
    "SUPPORTED_EXTENSIONS",
    "PromptSourceError",
    "PromptTable",
    "load_prompt_table",
]

DEFAULT_SOURCE = "default"
HF_PREFIX = "hf:"
SUPPORTED_EXTENSIONS: tuple[str, ...] = (".parquet", ".jsonl", ".json", ".csv")
_PACKAGED_BUILDERS = ("json", "csv", "parquet", "text")
_MAX_LISTED = 5


class PromptSourceError(UserError):
    """A prompt source that cannot be read as prompts: unsupported extension, missing column,
    bad values, text that is not UTF-8, or a Hugging Face dataset that cannot be loaded."""


@dataclass(frozen=True)
class PromptTable:
    """Prompts read from a source: ``texts`` in source order; ``categories`` and ``references``
    (one per text, ``None`` where blank) when the source has those columns, else ``None``."""

    texts: list[str]
    categories: list[str | None] | None
    source: str
    column: str
    references: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.texts)


def load_prompt_table(
    source: str | os.PathLike[str],
    *,
    column: str = "prompt",
    reference_column: str | None = "reference",
    category_column: str | None = "category",
    split: str = "train",
    require_reference: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> PromptTable:
    """The prompts of ``source`` (see the module docstring), in source order, with their
    categories and reference answers where the source has those columns.

    Raises `NotFoundError` (a FileNotFoundError) for a missing file and `PromptSourceError` for an
    unsupported extension, a missing ``column``, non-string or empty prompts, text that is not
    UTF-8, a dataset that cannot be loaded, or (with ``require_reference``) a missing or
    incomplete ``reference_column``; each message is one sentence naming the source.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"prompt source must be a string or path, got {type(source).__name__}")
    source = os.fspath(source).strip()
    if not source:
        raise PromptSourceError("prompt source is empty: give 'default', a file path/URL or 'hf:NAME[:CONFIG]'")
    wanted = {"prompt": column, "category": category_column, "reference": reference_column}
    if source == DEFAULT_SOURCE:
        wanted = {k: k for k in wanted}
        from sims_core.prompts import default_prompts

        records = default_prompts()  # every built-in prompt has its reference answer
        data: dict[str, list[Any]] = {k: [getattr(r, k) for r in records] for k in wanted}
        return _table(DEFAULT_SOURCE, "the built-in prompt set", data, wanted, require_reference)
    if source.startswith(HF_PREFIX):
        return _load_hf(source, wanted, split, require_reference, storage_options)
    fs, path = fsspec.core.url_to_fs(source, **(storage_options or {}))
    if any(c in path for c in "*?["):  # a glob: every matching file, in name order
        files = sorted(f for f in fs.glob(path) if _extension(f) and not fs.isdir(f))
        if not files:
            raise NotFoundError(
                f"prompt source {source!r} matches no {', '.join(SUPPORTED_EXTENSIONS)} file; a glob or folder "
                "source reads every prompt file it names"
            )
        return _table(source, f"prompt files {source!r}", _read_files(fs, files), wanted, require_reference)
    if not fs.exists(path):
        raise NotFoundError(f"prompt file {source!r} does not exist")
    if fs.isdir(path):
        if _is_saved_dataset(fs, path):
            raise PromptSourceError(
                f"prompt source {source!r} is a saved Hugging Face dataset directory: pass it as 'hf:{source}'"
            )
        files = sorted(f for f in fs.ls(path, detail=False) if _extension(f) and not fs.isdir(f))
        if not files:
            raise PromptSourceError(
                f"prompt source {source!r} is a folder with no {', '.join(SUPPORTED_EXTENSIONS)} file (a folder or "
                f"prefix source reads every prompt file in it; 'hf:{source}' reads a dataset directory)"
            )
        return _table(source, f"prompt folder {source!r}", _read_files(fs, files), wanted, require_reference)
    ext = _extension(path)
    if ext is None:
        raise PromptSourceError(
            f"prompt file {source!r} has unsupported extension {os.path.splitext(path.lower())[1] or '(none)'}; "
            f"supported: {', '.join(SUPPORTED_EXTENSIONS)} (or 'default', or 'hf:NAME[:CONFIG]' for a Hugging Face "
            "dataset)"
        )
    data = _read_file(fs.cat_file(path), ext, source)
    return _table(source, f"prompt file {source!r}", data, wanted, require_reference)


def _extension(path: str) -> str | None:
    return next((e for e in SUPPORTED_EXTENSIONS if path.lower().endswith(e)), None)


def _read_files(fs: Any, paths: list[str]) -> dict[str, list[Any]]:
    """The columns of several prompt files, concatenated in order (a column a file lacks is None
    for its rows): a folder, prefix or glob of files that grows with new traffic."""
    parts = [_read_file(fs.cat_file(p), _extension(p), fs.unstrip_protocol(p)) for p in paths]
    columns = list(dict.fromkeys(c for part in parts for c in part))
    out: dict[str, list[Any]] = {c: [] for c in columns}
    for part in parts:
        rows = len(next(iter(part.values()), []))
        for c in columns:
            out[c] += part.get(c, [None] * rows)
    return out


def _read_file(raw: bytes, ext: str | None, source: str) -> dict[str, list[Any]]:
    """The columns of a prompt file's bytes, read with pandas (values as Python objects)."""
    import pandas as pd

    if ext == ".parquet":
        try:
            frame = pd.read_parquet(io.BytesIO(raw))
        except (ValueError, OSError) as exc:
            raise PromptSourceError(f"prompt file {source!r} is not a readable Parquet file ({exc})") from None
    else:
        bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
        try:
            text = raw[bom:].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PromptSourceError(
                f"prompt file {source!r} is not UTF-8 text: byte {exc.start + bom} (0x{raw[exc.start + bom]:02x}) "
                "is not valid UTF-8; save it as UTF-8"
            ) from None
        if not text.strip():
            frame = pd.DataFrame()
        elif ext != ".csv":
            frame = _read_json(text, source, lines=ext == ".jsonl")
        else:
            try:
                frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
            except ValueError as exc:
                raise PromptSourceError(f"prompt file {source!r} is not valid CSV ({exc})") from None
    return {str(c): [_none_if_missing(v) for v in frame[c].tolist()] for c in frame.columns}


def _read_json(text: str, source: str, *, lines: bool) -> Any:
    import pandas as pd

    try:
        return pd.read_json(io.StringIO(text), lines=lines, dtype=False)
    except ValueError as exc:
        if not lines and "Trailing data" in str(exc):  # several documents in a .json: JSON lines
            return _read_json(text, source, lines=True)
        if not lines:
            try:
                json.loads(text)
            except json.JSONDecodeError as e:
                raise PromptSourceError(
                    f"prompt file {source!r} is not valid JSON (line {e.lineno}: {e.msg})"
                ) from None
            raise PromptSourceError(
                f"prompt file {source!r} is not an array of objects, an object of equal-length column arrays, "
                f"or JSON lines ({exc})"
            ) from None
        for lineno, line in enumerate(text.splitlines(), start=1):
            try:
                row = json.loads(line) if line.strip() else {}
            except json.JSONDecodeError as e:
                raise PromptSourceError(f"prompt file {source!r} line {lineno} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise PromptSourceError(
                    f"prompt file {source!r} line {lineno} is a JSON {type(row).__name__}, expected an object "
                    'such as {"prompt": "..."}'
                ) from None
        raise PromptSourceError(f"prompt file {source!r} cannot be read as JSON lines ({exc})") from None


def _none_if_missing(value: Any) -> Any:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return None if missing or type(value).__name__ == "NAType" else value


def _is_saved_dataset(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether ``path`` is a directory written by ``Dataset(Dict).save_to_disk``."""
    base = path.rstrip("/")
    try:
        return fs.isfile(f"{base}/dataset_dict.json") or (
            fs.isfile(f"{base}/state.json") and fs.isfile(f"{base}/dataset_info.json")
        )
    except OSError:
        return False


def _load_hf(
    source: str, wanted: dict[str, str | None], split: str, require_reference: bool, storage_options: dict | None
) -> PromptTable:
    name, _, config = source[len(HF_PREFIX) :].partition(":")
    if not name:
        raise PromptSourceError(f"prompt source {source!r} names no dataset; expected 'hf:NAME[:CONFIG]'")
    import datasets

    if name in _PACKAGED_BUILDERS:
        what = f"Hugging Face {name} dataset {config!r}"
    else:
        what = f"Hugging Face dataset {name!r}" + (f" (config {config!r})" if config else "")
    try:
        saved = _is_saved_dataset(*fsspec.core.url_to_fs(name, **(storage_options or {})))
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
                    f"prompt source {source!r} uses the {name} builder without data files; write 'hf:{name}:PATH_OR_URL'"
                )
            ds = datasets.load_dataset(name, data_files=config, split=split, storage_options=storage_options)
        else:
            ds = datasets.load_dataset(name, config or None, split=split, storage_options=storage_options)
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
        if "split" in str(e).lower() and not isinstance(e, PromptSourceError):
            raise PromptSourceError(f"{what} has no split {split!r} ({e})") from e
        raise
    if not isinstance(ds, datasets.Dataset):
        raise PromptSourceError(f"{what} loaded as {type(ds).__name__}, expected one split (a Dataset)")
    data = {c: list(ds[c]) if c in wanted.values() else [] for c in ds.column_names}
    return _table(source, what, data, wanted, require_reference)


def _rows(indices: Sequence[int]) -> str:
    shown = ", ".join(str(i + 1) for i in indices[:_MAX_LISTED])
    return shown + (f", ... ({len(indices) - _MAX_LISTED} more)" if len(indices) > _MAX_LISTED else "")


def _bad_values(values: list[Any]) -> str | None:
    """'2 non-string values (NoneType, int) at rows 2, 4 and 1 empty value at rows 3', or None."""
    non_string = [i for i, v in enumerate(values) if not isinstance(v, str)]
    empty = [i for i, v in enumerate(values) if isinstance(v, str) and not v.strip()]
    parts = []
    if non_string:
        kinds = ", ".join(sorted({type(values[i]).__name__ for i in non_string}))
        parts.append(
            f"{len(non_string)} non-string value{'s' * (len(non_string) != 1)} ({kinds}) at rows {_rows(non_string)}"
        )
    if empty:
        parts.append(f"{len(empty)} empty value{'s' * (len(empty) != 1)} at rows {_rows(empty)}")
    return " and ".join(parts) or None


def _table(
    source: str, label: str, data: dict[str, list[Any]], wanted: dict[str, str | None], require_reference: bool
) -> PromptTable:
    column, reference = wanted["prompt"], wanted["reference"]
    if column not in data:
        raise PromptSourceError(
            f"{label} has no column {column!r}; its columns are {list(data)} (pass column=... to choose one)"
        )
    values = data[column]
    if not values:
        raise PromptSourceError(f"{label} has no rows: a prompt set needs at least one prompt")
    bad = _bad_values(values)
    if bad:
        raise PromptSourceError(
            f"column {column!r} of {label} has {bad} (rows counted from 1, out of {len(values)}); every prompt "
            "must be a non-empty string"
        )
    bad_references = _bad_values(data[reference]) if require_reference and reference in data else None
    if require_reference and (reference not in data or bad_references):
        problem = f"has {bad_references} in" if reference in data else "has no"
        raise PromptSourceError(
            f"{label} {problem} reference column {reference!r} (its columns are {list(data)}): the reference "
            "judge needs one reference answer (a non-empty string) per prompt; pass reference_column=... to "
            "choose the column"
        )

    def optional(name: str | None) -> list[str | None] | None:
        if not name or name == column or name not in data:
            return None
        return [None if v is None or (isinstance(v, str) and not v.strip()) else str(v) for v in data[name]]

    return PromptTable(list(values), optional(wanted["category"]), source, column, optional(reference))
