"""`SteeringSet`: the fitted per-layer steering functions of one learner, and their file format.

A steering file is a safetensors file: the tensors of every layer (``layers.<l>.<name>``) plus a
JSON header stored in the safetensors metadata under ``"sims_steering"``, which records the
learner, the operation, the layers and how they are numbered, the hook site, the default token
positions, alpha, the dtype, the hidden size, the base model's identity (``lm.name``,
``lm.config_hash``, ``num_layers``), the per-layer selection scores and the sims version.
Loading reads only safetensors and JSON (no pickle) and refuses a model the set does not fit.

Layer numbering: decoder blocks ``0 .. L-1``; layer ``l``'s activation is the output of block
``l`` (``output_hidden_states[l + 1]``), which is also where the edit is applied.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sims_core.errors import UserError
from sims_core.models import LanguageModel, same_weights
from sims_core.steering.hooks import POSITIONS
from sims_core.steering.learners import LayerFunction, get_learner

__all__ = [
    "FILE_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "HEADER_KEY",
    "HOOK_SITE",
    "LAYER_NUMBERING",
    "IncompatibleSteeringError",
    "ModelIdentity",
    "SteeringFileError",
    "SteeringSet",
]

FORMAT = "sims-steering"
FORMAT_VERSION = 1
HEADER_KEY = "sims_steering"
HOOK_SITE = "block_output"
LAYER_NUMBERING = "decoder blocks 0..L-1; layer l is the output of block l (output_hidden_states[l + 1])"
FILE_NAME = "steering.safetensors"


class SteeringFileError(UserError):
    """A steering file (or its bytes) is not a valid sims steering file."""


class IncompatibleSteeringError(UserError):
    """A steering set does not fit the model it is being applied to."""


def _sims_version() -> str:
    import sims_core  # late: sims_core/__init__ imports this package while it initialises

    return str(getattr(sims_core, "__version__", "unknown"))


@dataclass(frozen=True)
class ModelIdentity:
    """What identifies the base model a steering set was fitted on: its name (where it was
    loaded from), a hash of its architecture config, its shape and, since sims 0.1, a fingerprint
    of its weights (`sims_core.models.weights_fingerprint`). Files written before the fingerprint
    existed lack it (``weights=None``) and are matched on name and config hash as before."""

    name: str
    config_hash: str
    num_layers: int
    hidden_size: int
    model_type: str | None = None
    weights: dict[str, Any] | None = field(default=None, compare=False)

    @classmethod
    def of(cls, lm: LanguageModel) -> ModelIdentity:
        model_type = getattr(lm.model.config, "model_type", None)
        return cls(
            lm.name,
            lm.config_hash,
            lm.num_layers,
            lm.hidden_size,
            model_type if isinstance(model_type, str) else None,
            lm.weights_fingerprint,
        )

    def mismatch(self, lm: LanguageModel) -> str | None:
        """Why ``lm`` is not the model this identity describes, or None when it is. With a weights
        fingerprint on record, the config hash and the weights decide (the same model in another
        folder fits; other weights at the same path do not); without one, name and config hash."""
        if self.config_hash != lm.config_hash:
            return f"config hash {self.config_hash} vs {lm.config_hash}"
        if self.weights is not None:
            if not same_weights(self.weights, lm.weights_fingerprint):
                return "its weights differ (weights fingerprint)"
            return None
        if self.name != lm.name:
            return f"it was {self.name!r}, the model is {lm.name!r} (this file records no weights fingerprint)"
        return None

    @classmethod
    def from_json(cls, value: object) -> ModelIdentity:
        if not isinstance(value, Mapping):
            raise SteeringFileError(f"header field 'model' must be an object, got {value!r:.80}")
        try:
            identity = cls(
                name=value["name"],
                config_hash=value["config_hash"],
                num_layers=value["num_layers"],
                hidden_size=value["hidden_size"],
                model_type=value.get("model_type"),
            )
        except KeyError as exc:
            raise SteeringFileError(f"header field 'model' lacks {exc.args[0]!r}") from None
        if not (
            isinstance(identity.name, str)
            and isinstance(identity.config_hash, str)
            and isinstance(identity.num_layers, int)
            and isinstance(identity.hidden_size, int)
        ):
            raise SteeringFileError(f"header field 'model' has fields of the wrong type: {dict(value)!r:.200}")
        weights = value.get("weights")
        if weights is not None:
            sample = weights.get("sample") if isinstance(weights, Mapping) else None
            if not (
                isinstance(weights, Mapping)
                and isinstance(weights.get("shapes"), str)
                and isinstance(sample, list)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in sample)
            ):
                raise SteeringFileError(
                    f"header field 'model.weights' must be {{'shapes': str, 'sample': [finite numbers]}}, got {weights!r:.120}"
                )
            identity = dataclasses.replace(identity, weights={"shapes": weights["shapes"], "sample": list(sample)})
        return identity


class _BoundEdit:
    """One layer's function on the model's device and dtype, with alpha applied (what `steer`
    calls on ``[..., hidden]`` tensors)."""

    def __init__(self, fn: LayerFunction, alpha: float) -> None:
        self.fn, self.alpha = fn, alpha

    def __call__(self, h: Tensor) -> Tensor:
        return self.fn(h, self.alpha)


@dataclass
class SteeringSet:
    """Fitted steering functions by layer, plus everything needed to apply them safely.

    ``s[layer](h, alpha=1.0)`` applies one layer's function; ``steer(lm, s, alpha=a)`` applies
    all of them with strength ``a * s.alpha``, on ``s.default_positions`` unless overridden.

    Attributes:
        learner: registry name of the learner (``"hpr"``, ``"mean_diff"``, ``"linear_shift"``).
        functions: ``{layer: LayerFunction}``.
        hidden_size: width of the activations.
        layer_scores: held-out score of every candidate layer (the chosen ones are ``layers``).
        default_positions: token positions `steer` edits unless told otherwise.
        alpha: the set's own strength (multiplies the ``alpha`` given to `steer`).
        model: identity of the base model (required to save; checked when applied/loaded).
        options: the learner's options; selection: how layers were chosen.
        metadata: free JSON-serialisable extras (e.g. iteration).
        allow_identity_mismatch: apply to a model of another identity with the same shapes
            (not saved; set by ``load(..., allow_identity_mismatch=True)``).
    """

    learner: str
    functions: dict[int, LayerFunction]
    hidden_size: int
    layer_scores: dict[int, float] = field(default_factory=dict)
    default_positions: str = "last"
    alpha: float = 1.0
    model: ModelIdentity | None = None
    options: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    sims_version: str = field(default_factory=_sims_version)
    allow_identity_mismatch: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.default_positions not in POSITIONS:
            raise ValueError(f"default_positions must be one of {list(POSITIONS)}, got {self.default_positions!r}")
        if not self.functions:
            raise ValueError("a SteeringSet needs at least one layer")
        for layer, fn in self.functions.items():
            if fn.hidden_size != self.hidden_size:
                raise ValueError(
                    f"layer {layer}'s function has hidden size {fn.hidden_size}, the set has {self.hidden_size}"
                )

    # -- access ------------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return sorted(self.functions)

    @property
    def operation(self) -> str:
        return get_learner(self.learner).operation

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.functions[self.layers[0]].state().values())).dtype

    def __getitem__(self, layer: int) -> LayerFunction:
        if layer not in self.functions:
            raise KeyError(f"layer {layer} is not steered by this set; its layers are {self.layers}")
        return self.functions[layer]

    def __contains__(self, layer: object) -> bool:
        return layer in self.functions

    def __iter__(self) -> Iterator[int]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.functions)

    # -- the model ---------------------------------------------------------------------------
    def bind(self, model: LanguageModel | ModelIdentity) -> SteeringSet:
        """Record the base model's identity (in place; returns self)."""
        identity = ModelIdentity.of(model) if isinstance(model, LanguageModel) else model
        if identity.hidden_size != self.hidden_size:
            raise IncompatibleSteeringError(
                f"cannot bind a steering set of hidden size {self.hidden_size} to {identity.name} (hidden size {identity.hidden_size})"
            )
        self.model = identity
        return self

    def check_compatibility(self, lm: LanguageModel, *, allow_identity_mismatch: bool | None = None) -> None:
        """Raise `IncompatibleSteeringError` unless this set fits ``lm``: same hidden size and
        layer count, its layers exist, and (unless allowed) the same model identity."""
        allow = self.allow_identity_mismatch if allow_identity_mismatch is None else allow_identity_mismatch
        if lm.hidden_size != self.hidden_size:
            raise IncompatibleSteeringError(
                f"this {self.learner} steering set has hidden size {self.hidden_size} but {lm.name} has {lm.hidden_size}"
            )
        if self.model is not None and self.model.num_layers != lm.num_layers:
            raise IncompatibleSteeringError(
                f"this steering set was fitted on {self.model.name} with {self.model.num_layers} layers but "
                f"{lm.name} has {lm.num_layers}"
            )
        if max(self.layers) >= lm.num_layers:
            raise IncompatibleSteeringError(
                f"this steering set steers layers {self.layers} but {lm.name} has layers 0..{lm.num_layers - 1}"
            )
        if self.model is not None and not allow:
            why = self.model.mismatch(lm)
            if why is not None:
                raise IncompatibleSteeringError(
                    f"this steering set was fitted on {self.model.name!r} (config hash {self.model.config_hash}) but the "
                    f"model is {lm.name!r} (config hash {lm.config_hash}): {why}; pass allow_identity_mismatch=True to "
                    "apply it anyway (shapes match)"
                )

    def steering_edits(self, lm: LanguageModel, alpha: float) -> dict[int, _BoundEdit]:
        """Per-layer callables for `steer`: checks the set fits ``lm``, moves the parameters to
        ``lm``'s device and dtype, and applies strength ``alpha * self.alpha``."""
        self.check_compatibility(lm)
        strength = float(alpha) * float(self.alpha)
        return {
            layer: _BoundEdit(fn.to(device=lm.device, dtype=lm.dtype), strength)
            for layer, fn in sorted(self.functions.items())
        }

    # -- files -------------------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        """The JSON header written with the tensors."""
        learner = get_learner(self.learner)
        if self.model is None:
            raise ValueError(
                "this steering set does not record its base model; bind it first "
                "(fit_steering(..., model=lm) or s.bind(lm)) so a file cannot be applied to the wrong model"
            )
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "learner": self.learner,
            "operation": learner.operation,
            "layers": self.layers,
            "layer_numbering": LAYER_NUMBERING,
            "hook_site": HOOK_SITE,
            "positions": self.default_positions,
            "alpha": float(self.alpha),
            "dtype": str(self.dtype).removeprefix("torch."),
            "hidden_size": self.hidden_size,
            "model": {k: v for k, v in asdict(self.model).items() if v is not None or k != "weights"},
            "sims_version": self.sims_version,
            "layer_scores": {str(k): float(v) for k, v in sorted(self.layer_scores.items())},
            "options": self.options,
            "selection": self.selection,
            "functions": {str(layer): self.functions[layer].config() for layer in self.layers},
            "metadata": self.metadata,
        }

    def to_bytes(self) -> bytes:
        """The steering file's bytes (safetensors with the JSON header in its metadata)."""
        from safetensors.torch import save

        header = json.dumps(self.header(), sort_keys=True, allow_nan=False)
        tensors = {
            f"layers.{layer}.{name}": t.detach().to("cpu").contiguous()
            for layer in self.layers
            for name, t in self.functions[layer].state().items()
        }
        return save(tensors, metadata={HEADER_KEY: header})

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        model: LanguageModel | None = None,
        allow_identity_mismatch: bool = False,
        source: str = "<bytes>",
    ) -> SteeringSet:
        """Rebuild a set from `to_bytes` output; checks it fits ``model`` when given."""
        header = _read_header(data, source)
        from safetensors.torch import load

        try:
            tensors = load(bytes(data))
        except Exception as exc:  # safetensors raises its own error types
            raise SteeringFileError(f"{source}: the tensors cannot be read: {exc}") from None
        steering = _from_parts(header, tensors, source)
        steering.allow_identity_mismatch = allow_identity_mismatch
        if model is not None:
            steering.check_compatibility(model)
        return steering

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the steering file. A path ending in ``.safetensors`` is the file; any other
        path is a directory (created) that receives ``steering.safetensors``. Written to a
        temporary name and renamed, so a reader never sees half a file. Returns the file path."""
        target = Path(path)
        if target.suffix != ".safetensors":
            target.mkdir(parents=True, exist_ok=True)
            target = target / FILE_NAME
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_bytes()
        fd, tmp = tempfile.mkstemp(prefix=target.name + ".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, model: LanguageModel | None = None, allow_identity_mismatch: bool = False
    ) -> SteeringSet:
        """Read a steering file (or a directory holding ``steering.safetensors``). With
        ``model``, raise `IncompatibleSteeringError` unless the set fits it."""
        target = Path(path)
        if target.is_dir():
            target = target / FILE_NAME
        if not target.is_file():
            raise FileNotFoundError(f"no steering file at {target}")
        return cls.from_bytes(
            target.read_bytes(), model=model, allow_identity_mismatch=allow_identity_mismatch, source=str(target)
        )

    def to_gguf(self, path: str | os.PathLike[str], *, model_hint: str | None = None, scale: float = 1.0) -> Path:
        """Export a mean-difference set as a llama.cpp control vector (see `export_gguf`)."""
        from sims_core.steering.gguf_export import export_gguf

        return export_gguf(self, path, model_hint=model_hint, scale=scale)


def _read_header(data: bytes, source: str) -> dict[str, Any]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"steering data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 8:
        raise SteeringFileError(f"{source} is not a safetensors file ({len(data)} bytes)")
    size = int.from_bytes(data[:8], "little")
    if size < 2 or size > len(data) - 8:
        raise SteeringFileError(f"{source} is not a safetensors file (its header length {size} does not fit the file)")
    try:
        raw = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SteeringFileError(f"{source} has a garbled safetensors header (not JSON)") from None
    metadata = raw.get("__metadata__") if isinstance(raw, dict) else None
    if not isinstance(metadata, dict) or HEADER_KEY not in metadata:
        raise SteeringFileError(
            f"{source} has no sims steering header (safetensors metadata key {HEADER_KEY!r} is missing); "
            "it was not written by SteeringSet.save"
        )
    try:
        header = json.loads(metadata[HEADER_KEY])
    except (TypeError, json.JSONDecodeError):
        raise SteeringFileError(f"{source} has a garbled sims steering header (not JSON)") from None
    if not isinstance(header, dict):
        raise SteeringFileError(f"{source}: the sims steering header must be a JSON object")
    _validate_header(header, source)
    return header


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "learner": str,
    "operation": str,
    "layers": list,
    "layer_numbering": str,
    "hook_site": str,
    "positions": str,
    "alpha": (int, float),
    "dtype": str,
    "hidden_size": int,
    "model": dict,
    "sims_version": str,
    "layer_scores": dict,
    "options": dict,
    "selection": dict,
    "functions": dict,
    "metadata": dict,
}


def _validate_header(header: dict[str, Any], source: str) -> None:
    missing = [key for key in _REQUIRED if key not in header]
    if missing:
        raise SteeringFileError(f"{source}: the steering header lacks {', '.join(missing)}")
    for key, kind in _REQUIRED.items():
        if not isinstance(header[key], kind) or isinstance(header[key], bool):
            raise SteeringFileError(f"{source}: header field {key!r} has the wrong type ({type(header[key]).__name__})")
    if header["format"] != FORMAT:
        raise SteeringFileError(f"{source}: header format is {header['format']!r}, expected {FORMAT!r}")
    if header["format_version"] > FORMAT_VERSION:
        raise SteeringFileError(
            f"{source} uses steering format version {header['format_version']}; this sims reads up to {FORMAT_VERSION} (upgrade sims)"
        )
    if header["hook_site"] != HOOK_SITE:
        raise SteeringFileError(f"{source}: hook site {header['hook_site']!r} is not supported (only {HOOK_SITE!r})")
    if header["positions"] not in POSITIONS:
        raise SteeringFileError(f"{source}: positions {header['positions']!r} is not one of {list(POSITIONS)}")
    layers = header["layers"]
    if not layers or not all(isinstance(l, int) and not isinstance(l, bool) and l >= 0 for l in layers):
        raise SteeringFileError(
            f"{source}: header field 'layers' must be a non-empty list of layer indices, got {layers!r:.80}"
        )
    if len(set(layers)) != len(layers):
        raise SteeringFileError(f"{source}: header field 'layers' lists a layer twice: {layers!r:.80}")
    if not math.isfinite(header["alpha"]):
        raise SteeringFileError(f"{source}: header field 'alpha' must be a finite number, got {header['alpha']!r}")
    if header["hidden_size"] < 1:
        raise SteeringFileError(f"{source}: header field 'hidden_size' must be positive, got {header['hidden_size']}")
    if header["dtype"] not in _DTYPES:
        raise SteeringFileError(
            f"{source}: header field 'dtype' must be one of {sorted(_DTYPES)}, got {header['dtype']!r}"
        )
    try:
        get_learner(header["learner"])
    except ValueError as exc:
        raise SteeringFileError(f"{source}: {exc}") from None


_DTYPES = {"float32", "float16", "bfloat16", "float64"}


def _from_parts(header: dict[str, Any], tensors: dict[str, Tensor], source: str) -> SteeringSet:
    learner = get_learner(header["learner"])
    layers: list[int] = header["layers"]
    for name, tensor in tensors.items():
        kind = str(tensor.dtype).removeprefix("torch.")
        if tensor.is_floating_point() and kind != header["dtype"]:
            raise SteeringFileError(
                f"{source}: tensor {name!r} is {kind} but the header says dtype {header['dtype']!r}"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SteeringFileError(f"{source}: tensor {name!r} holds NaN or infinite values")
    grouped: dict[int, dict[str, Tensor]] = {layer: {} for layer in layers}
    for name, tensor in tensors.items():
        parts = name.split(".", 2)
        if len(parts) != 3 or parts[0] != "layers" or not parts[1].isdigit() or int(parts[1]) not in grouped:
            raise SteeringFileError(f"{source}: unexpected tensor {name!r} (the header lists layers {layers})")
        grouped[int(parts[1])][parts[2]] = tensor
    functions: dict[int, LayerFunction] = {}
    for layer in layers:
        config = header["functions"].get(str(layer))
        if not isinstance(config, dict):
            raise SteeringFileError(f"{source}: the header has no function config for layer {layer}")
        try:
            functions[layer] = learner.function_type.from_state(grouped[layer], config)
        except ValueError as exc:
            raise SteeringFileError(f"{source}: layer {layer}: {exc}") from None
    try:
        scores = {int(k): float(v) for k, v in header["layer_scores"].items()}
    except (TypeError, ValueError):
        raise SteeringFileError(f"{source}: header field 'layer_scores' must map layer numbers to numbers") from None
    try:
        return SteeringSet(
            learner=header["learner"],
            functions=functions,
            hidden_size=header["hidden_size"],
            layer_scores=scores,
            default_positions=header["positions"],
            alpha=float(header["alpha"]),
            model=ModelIdentity.from_json(header["model"]),
            options=header["options"],
            selection=header["selection"],
            metadata=header["metadata"],
            sims_version=header["sims_version"],
        )
    except ValueError as exc:
        if isinstance(exc, SteeringFileError):
            raise
        raise SteeringFileError(f"{source}: {exc}") from None
