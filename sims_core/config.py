"""The one configuration object of a SIMS run: a pydantic model validated at the edge.

`SimsConfig` is the `self_improve` flow's one parameter, so Prefect validates it and draws it as
a form; the CLI builds it from YAML and ``--set key=value``; phase code receives it as is. Every
field has a default that runs the built-in demo (embedded SmolLM2, built-in prompts) on two CPU
cores. A bad value is a `ConfigError` whose message is one sentence naming the field, the value
and what is allowed. Choices that plugins extend (learners, oracles, judges) are checked against
their registries, so a learner or oracle registered by an installed package is a valid value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator
from pydantic_core import ErrorDetails

from sims_core.errors import ConfigError
from sims_core.generation import SamplingParams
from sims_core.hashing import canonical_hash

__all__ = [
    "CONTINUATION_FIELDS",
    "ENGINES",
    "LINEAGE_NAME",
    "ConfigError",
    "DaskOptions",
    "DeploymentOptions",
    "EngineOptions",
    "RayOptions",
    "SimsConfig",
    "ThreadsOptions",
]

# Field types. Strict: "yes" is not a boolean, 1.5 is not an integer, 123 is not a string.
Count = Annotated[int, Field(strict=True, ge=1)]
Count0 = Annotated[int, Field(strict=True, ge=0)]
Number = Annotated[float, Field(strict=True)]
Number0 = Annotated[float, Field(strict=True, ge=0)]
Flag = Annotated[bool, Field(strict=True)]
Text = Annotated[str, Field(strict=True, min_length=1)]
OptionalText = Annotated[str, Field(strict=True)]
Options = dict[str, Any]

ENGINES = ("threads", "dask", "ray", "deployment")
LINEAGE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DEFAULT_DEPLOYMENT = "sims-phase/gpu"


# ---------------------------------------------------------------------------- engine options
class _EngineOptions(BaseModel):
    """Options every engine takes. Compared with a mapping, options equal the ones that were set
    to something other than their default (``SimsConfig().engine_options == {}``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    retries: Count0 = Field(1, description="a failed shard is retried this many times (lost worker, flaky store)")
    retry_delay_seconds: Number0 = Field(0.0, description="seconds between a failure and its retry")
    torch_threads: Count | None = Field(None, description="torch intra-op threads per worker")

    def given(self) -> dict[str, Any]:
        """The options that differ from their defaults."""
        return self.model_dump(exclude_defaults=True, exclude={"engine"})

    @model_serializer(mode="wrap")
    def _serialize(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        defaults = {name: info.default for name, info in type(self).model_fields.items()}
        return {k: v for k, v in data.items() if k != "engine" and v != defaults.get(k)}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self.given() == dict(other)
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]


class ThreadsOptions(_EngineOptions):
    """``engine: threads``: shards run in threads of the flow's process (one model)."""

    engine: Literal["threads"] = "threads"
    max_workers: Count | None = Field(None, description="threads (default: the number of shards)")


class DaskOptions(_EngineOptions):
    """``engine: dask``: prefect-dask's DaskTaskRunner, a local cluster or an existing scheduler."""

    engine: Literal["dask"] = "dask"
    address: Text | None = Field(None, description="an existing scheduler, e.g. tcp://10.0.0.5:8786")
    n_workers: Count | None = Field(
        None, description="local cluster: worker processes (default: shards, at most the cores)"
    )
    threads_per_worker: Count | None = Field(None, description="local cluster: threads per worker (default 1)")
    processes: Flag | None = Field(None, description="local cluster: workers are processes (default true)")

    @model_validator(mode="after")
    def _address_or_local(self) -> DaskOptions:
        local = sorted(k for k in ("n_workers", "threads_per_worker", "processes") if getattr(self, k) is not None)
        if self.address is not None and local:
            raise ValueError(
                f"engine_options {local} size a local Dask cluster and cannot be combined with "
                f"address={self.address!r} (an existing scheduler)"
            )
        return self


class RayOptions(_EngineOptions):
    """``engine: ray``: prefect-ray's RayTaskRunner, a local Ray instance or a cluster."""

    engine: Literal["ray"] = "ray"
    address: Text | None = Field(None, description="an existing cluster, e.g. ray://head:10001 or auto")
    num_cpus: Count | None = Field(None, description="local instance: CPUs")
    num_gpus: Number0 | None = Field(None, description="GPUs per shard")

    @model_validator(mode="after")
    def _address_or_local(self) -> RayOptions:
        if self.address is not None and self.num_cpus is not None:
            raise ValueError(
                f"engine_options.num_cpus sizes a local Ray instance and cannot be combined with "
                f"address={self.address!r} (an existing cluster)"
            )
        return self


class DeploymentOptions(_EngineOptions):
    """``engine: deployment``: each unit is a flow run of a phase-worker deployment (GPU pool)."""

    engine: Literal["deployment"] = "deployment"
    deployment: Text = Field(DEFAULT_DEPLOYMENT, description="the phase-worker deployment, 'flow-name/deployment-name'")
    timeout: Number0 | None = Field(None, description="seconds to wait for one unit's flow run")
    max_workers: Count | None = Field(None, description="units dispatched at once (default: the number of shards)")

    @field_validator("deployment")
    @classmethod
    def _two_part_name(cls, value: str) -> str:
        if value.count("/") != 1 or value.startswith("/") or value.endswith("/"):
            raise ValueError(
                f"engine_options.deployment must name a deployment as 'flow-name/deployment-name', got {value!r}"
            )
        return value


EngineOptions = Annotated[ThreadsOptions | DaskOptions | RayOptions | DeploymentOptions, Field(discriminator="engine")]


# ---------------------------------------------------------------------------- the config
class SimsConfig(BaseModel):
    """Parameters of a SIMS run (see README, "Configuration", for each field)."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    # model
    model: Text = Field("embedded", description="'embedded', a hub id, a local model directory or a .gguf file")
    device: Text = Field("auto", description="auto: CUDA when available, else CPU")
    dtype: Text = Field("auto", description="auto: bfloat16 on CUDA, float32 on CPU")
    system_prompt: OptionalText | None = Field(None, description="system message (null: the chat template's own)")
    # prompts
    prompts: Text = Field("default", description="'default', a .parquet/.jsonl/.json/.csv path or URL, or hf:NAME")
    prompt_column: Text = "prompt"
    reference_column: Text = Field("reference", description="column of reference answers (for the reference judge)")
    prompt_split: Text = "train"
    eval_fraction: Annotated[float, Field(strict=True, gt=0, le=0.9)] = 0.5
    val_fraction: Annotated[float, Field(strict=True, gt=0, le=0.9)] = 0.1
    max_eval_prompts: Count = 300
    max_val_prompts: Count = 12
    # sampling
    iterations: Count = 2
    num_prompts: Count = 32
    num_samples: Annotated[int, Field(strict=True, ge=2)] = 4
    # the sampling defaults are SamplingParams's (set there once, shared with generation,
    # evaluation and strength selection)
    max_new_tokens: Count = SamplingParams.max_new_tokens
    temperature: Annotated[float, Field(strict=True, ge=0, le=10)] = SamplingParams.temperature
    top_p: Annotated[float, Field(strict=True, gt=0, le=1)] = SamplingParams.top_p
    batch_size: Count = SamplingParams.batch_size
    # oracle and pairs
    oracle: Text = Field("embedding", description="the training oracle (any registered oracle)")
    oracle_options: Options = Field(default_factory=dict)
    pair_strategy: Literal["best_worst", "top_bottom"] = "best_worst"
    pairs_per_prompt: Count = 1
    min_margin: Number0 = 0.0
    memory: Flag = True
    buffer_budget: Count = 256
    # steering
    learner: Text = Field("mean_diff", description="any registered steering learner")
    learner_options: Options = Field(default_factory=dict)
    layers: tuple[Count0, ...] | None = Field(None, description="candidate layers (null: 50%, 60%, 70% depth)")
    top_k: Count = 3
    alphas: tuple[Annotated[float, Field(strict=True, gt=0)], ...] | None = Field(
        None, description="strength grid (null: the learner's default)"
    )
    max_nll_increase: Number0 = 0.5
    positions: Literal["all", "prompt", "generated", "last"] | None = None
    warm_start: Flag = True
    # evaluation
    judge: Text = Field(
        "auto",
        description="the evaluation judge: any registered oracle that can judge, or auto (reference when the "
        "prompts have reference answers, else pmi)",
    )
    judge_options: Options = Field(default_factory=dict)
    eval_samples: Count = 1
    controls: Flag = True
    control_temperature: Annotated[float, Field(strict=True, ge=0, le=10)] = 0.6
    best_of_n: Count0 = Field(4, description="best-of-N line: K base samples per prompt, the oracle picks one (0: off)")
    best_of_n_prompts: Count = Field(
        50, description="held-out prompts the best-of-N line uses (it costs K answers each)"
    )
    # lineage: a long-lived steering policy that scheduled runs advance (README, "Nightly runs")
    lineage: Annotated[str, Field(strict=True, pattern=LINEAGE_NAME)] | None = Field(
        None, description="advance this lineage: start from its current steering, draw new prompts, gate promotion"
    )
    lineage_prompts: Count | None = Field(
        None, description="prompts a lineage run draws from its source (null: all unused)"
    )
    promotion: Literal["significant", "win_rate", "always"] = Field(
        "significant", description="when a lineage run's steering replaces the current one (README)"
    )
    promotion_threshold: Annotated[float, Field(strict=True, ge=0, le=1)] = Field(
        0.5, description="win rate to beat with promotion: win_rate"
    )
    # run
    seed: Annotated[int, Field(strict=True)] = 0
    store: Text = "./runs"
    # scale-out: results never depend on these three (they join no phase's key)
    shards: Count = 1
    engine: Literal["threads", "dask", "ray", "deployment"] = "threads"
    engine_options: EngineOptions = Field(default_factory=ThreadsOptions)

    # ---------------------------------------------------------------- validation
    @model_validator(mode="before")
    @classmethod
    def _tag_engine_options(cls, data: Any) -> Any:
        """``engine_options`` is written without its engine: take it from ``engine``."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        engine = data.get("engine", "threads")
        options = data.get("engine_options")
        if options is None:
            options = {}
        if isinstance(options, BaseModel):
            return data
        if not isinstance(options, Mapping):
            raise ValueError(f"engine_options must be a mapping, got {options!r}")
        if engine in ENGINES:
            options = dict(options)
            if "engine" in options and options["engine"] != engine:
                raise ValueError(f"engine_options are for engine {options['engine']!r} but engine is {engine!r}")
            options["engine"] = engine
            data["engine_options"] = options
        return data

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {value!r}")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"device must be 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N', got {value!r}")
        return value

    @field_validator("learner")
    @classmethod
    def _known_learner(cls, value: str) -> str:
        from sims_core.steering.learners import known_learners

        known = known_learners()
        if value not in known:
            raise ValueError(f"learner must be one of {known}, got {value!r}")
        return value

    @field_validator("oracle", "judge")
    @classmethod
    def _known_oracle(cls, value: str, info: Any) -> str:
        from sims_core.oracles import known_oracles, oracle_info

        known = known_oracles()
        if info.field_name == "judge":
            if value == "auto":
                return value
            if value in known and not oracle_info(value).can_judge:
                judges = ["auto", *(name for name in known if oracle_info(name).can_judge)]
                raise ValueError(f"judge {value!r} cannot judge a pair of answers; judges: {judges}")
            known = ["auto", *known]
        if value not in known:
            raise ValueError(f"{info.field_name} must be one of {known}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SimsConfig:
        from sims_core.oracles import oracle_info

        if self.eval_fraction + self.val_fraction >= 0.9:
            raise ValueError(
                f"eval_fraction + val_fraction must leave prompts to train on (< 0.9), got "
                f"{self.eval_fraction + self.val_fraction:g}"
            )
        if self.pair_strategy == "top_bottom" and 2 * self.pairs_per_prompt > self.num_samples:
            raise ValueError(
                f"pairs_per_prompt={self.pairs_per_prompt} needs at least {2 * self.pairs_per_prompt} samples per "
                f"prompt with pair_strategy='top_bottom', but num_samples={self.num_samples}"
            )
        if self.num_samples < 3 and not oracle_info(self.oracle).can_judge:  # the field check found it
            raise ValueError(
                f"oracle {self.oracle!r} needs num_samples >= 3: it scores each answer by its agreement with the "
                f"prompt's other answers, so with num_samples={self.num_samples} every pair ties and no preference "
                "pair survives; raise num_samples or choose another oracle"
            )
        if self.layers is not None and not self.layers:
            raise ValueError("layers must be null (automatic) or a non-empty list of layer indices >= 0, got []")
        if self.alphas is not None and not self.alphas:
            raise ValueError("alphas must be null (the learner's default grid) or a non-empty list of positive numbers")
        batches = self.generation_batches
        if self.shards > batches:
            per_batch = self.prompts_per_batch
            raise ValueError(
                f"shards={self.shards} is more than the work can use: an iteration's {self.num_prompts} prompts make "
                f"{batches} generation batch(es) of up to {per_batch} prompts (batch_size={self.batch_size} // "
                f"num_samples={self.num_samples}) and a shard computes whole batches; use at most {batches} shard(s), "
                "or a smaller batch_size"
            )
        return self

    # ---------------------------------------------------------------- building
    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | SimsConfig) -> SimsConfig:
        """Validate ``values``; any problem is one `ConfigError` sentence."""
        if isinstance(values, SimsConfig):
            return values
        if not isinstance(values, Mapping):
            raise ConfigError(f"a config must be a mapping of field: value, got {type(values).__name__}")
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, values)) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> SimsConfig:
        import yaml

        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {str(path)!r} is a directory; give a YAML file of field: value")
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config file {str(path)!r} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
            ) from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {' '.join(str(exc).split())}") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"config file {str(path)!r} must hold a mapping of field: value, got {type(data).__name__}"
            )
        return cls.from_dict(data)

    def with_overrides(self, assignments: Iterable[str]) -> SimsConfig:
        """Apply ``key=value`` strings (values parsed as YAML: ``layers=[8,12]``, ``memory=false``)."""
        import yaml

        values = self.to_dict()
        for assignment in assignments:
            key, sep, raw = assignment.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"override {assignment!r} must look like key=value")
            try:
                values[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError:
                raise ConfigError(f"override {assignment!r}: the value is not valid YAML") from None
        return SimsConfig.from_dict(values)

    def replace(self, **changes: Any) -> SimsConfig:
        """A copy with ``changes`` applied, validated like any config."""
        return SimsConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (lists for tuples; engine options as given)."""
        return self.model_dump(mode="json")

    # ---------------------------------------------------------------- derived
    @property
    def alpha_grid(self) -> tuple[float, ...]:
        """The steering strengths tried on the validation prompts: ``alphas`` or the learner's
        `default_alphas` (mean_diff scales the mean difference, whose norm is small next to the
        residual stream; HPR scales a rotation angle, where 1 is the learned angle)."""
        if self.alphas is not None:
            return tuple(float(a) for a in self.alphas)
        from sims_core.steering.learners import get_learner

        return tuple(get_learner(self.learner).default_alphas)

    @property
    def sampling(self) -> SamplingParams:
        """How every answer of the run is sampled (training samples, strength selection, eval)."""
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            batch_size=self.batch_size,
        )

    def judge_for(self, has_references: bool) -> str:
        """The evaluation judge: ``judge``, or for ``auto`` the reference judge when the prompt
        set has reference answers, else the PMI judge."""
        if self.judge != "auto":
            return self.judge
        return "reference" if has_references else "pmi"

    @property
    def generation_batches(self) -> int:
        """How many generation batches (canonical groups of ``batch_size // num_samples`` prompts)
        an iteration's prompts make at most: the most shards the sharded phases can use."""
        return -(-self.num_prompts // self.prompts_per_batch)

    @property
    def prompts_per_batch(self) -> int:
        """Prompts per generation batch: ``batch_size // num_samples`` (at least 1)."""
        return max(1, self.batch_size // self.num_samples)

    @property
    def token_level(self) -> bool:
        """Whether the learner trains on token-aligned rows (else one mean-pooled row per answer)."""
        from sims_core.steering.learners import get_learner

        return get_learner(self.learner).token_level

    def candidate_layers(self, num_layers: int) -> list[int]:
        """Layers whose activations are extracted and scored: ``layers`` if set (checked
        against the model), else three layers at 50%, 60% and 70% of the depth, where a
        mean-difference push helped most on the embedded model (layers 15, 18, 21 of 30; at 7-10
        the same push only degraded the text)."""
        if self.layers is not None:
            bad = [layer for layer in self.layers if layer >= num_layers]
            if bad:
                raise ConfigError(f"layers {bad} are out of range: the model has layers 0..{num_layers - 1}")
            return sorted(set(self.layers))
        return sorted({min(num_layers - 1, int(fraction * num_layers)) for fraction in (0.5, 0.6, 0.7)})

    def changes_from(self, previous: Mapping[str, Any]) -> list[str]:
        """The fields that differ from ``previous`` (a run's recorded config) and would make a run
        recompute and overwrite what it trained: every field except those that only extend or
        re-evaluate a run (`CONTINUATION_FIELDS`). Each as ``"name: old -> new"``."""
        mine = self.to_dict()
        try:
            theirs = SimsConfig.from_dict({k: v for k, v in previous.items() if k in SimsConfig.model_fields}).to_dict()
        except ConfigError:
            theirs = dict(previous)
        return [
            f"{name}: {theirs.get(name)!r} -> {mine[name]!r}"
            for name in SimsConfig.model_fields
            if name not in CONTINUATION_FIELDS and theirs.get(name, mine[name]) != mine[name]
        ]

    def hash_of(self, names: Iterable[str]) -> str:
        """A short stable hash of the named fields (what a phase depends on)."""
        data = self.to_dict()
        return canonical_hash({name: data[name] for name in sorted(names)})[:16]


# Fields a run's config may change between two flow runs of the same run id: more iterations, another
# evaluation, another engine. Any other change would recompute (and overwrite) what the run trained.
CONTINUATION_FIELDS = frozenset(
    {
        "iterations",
        "judge",
        "judge_options",
        "reference_column",
        "eval_samples",
        "max_eval_prompts",
        "controls",
        "control_temperature",
        "best_of_n",
        "best_of_n_prompts",
        "promotion",
        "promotion_threshold",
        "store",
        "shards",
        "engine",
        "engine_options",
    }
)


# ---------------------------------------------------------------------------- error messages
_EXPECTED = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "dict_type": "a mapping",
    "tuple_type": "a list",
    "list_type": "a list",
    "string_too_short": "a non-empty string",
    "string_pattern_mismatch": "a name of 1-64 letters, digits, '.', '_' or '-' starting with a letter or digit",
}


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = list(loc)
    if len(parts) > 1 and parts[0] == "engine_options" and parts[1] in ENGINES:
        parts.pop(1)  # the discriminator's branch, not a field
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


def _is_integer_field(loc: tuple[Any, ...]) -> bool:
    if len(loc) >= 3 and loc[0] == "engine_options" and loc[1] in ENGINES:
        options: dict[str, type[_EngineOptions]] = {
            "threads": ThreadsOptions,
            "dask": DaskOptions,
            "ray": RayOptions,
            "deployment": DeploymentOptions,
        }
        field = options[loc[1]].model_fields.get(str(loc[2]))
    else:
        field = SimsConfig.model_fields.get(str(loc[0]))
    text = str(field.annotation) if field is not None else ""
    return "int" in text and "float" not in text


def _bound(error: ErrorDetails) -> str | None:
    ctx = error.get("ctx") or {}
    kind = error["type"]
    integer = _is_integer_field(error["loc"])
    what = "an integer" if integer else "a number"
    if kind == "greater_than_equal":
        return "a positive integer" if integer and ctx.get("ge") == 1 else f"{what} >= {ctx.get('ge'):g}"
    if kind == "greater_than":
        return f"{what} > {ctx.get('gt'):g}"
    if kind == "less_than_equal":
        return f"{what} <= {ctx.get('le'):g}"
    if kind == "less_than":
        return f"{what} < {ctx.get('lt'):g}"
    return None


def describe_validation_error(exc: ValidationError, values: Mapping[str, Any] | None = None) -> str:
    """One sentence for the first problem pydantic found, naming the field, the value and what
    is allowed (unknown fields are listed together with the known ones)."""
    errors = exc.errors(include_url=False)
    unknown = [str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden" and len(e["loc"]) == 1]
    if unknown:
        return f"unknown config field(s) {unknown}; known fields: {sorted(SimsConfig.model_fields)}"
    error = errors[0]
    name = _field_name(error["loc"])
    value = error.get("input")
    kind = error["type"]
    if kind == "value_error":
        message = str(error["msg"]).removeprefix("Value error, ")
        return message if name in ("", "engine_options") or message.startswith(name) else f"{name}: {message}"
    if kind == "extra_forbidden" and name.startswith("engine_options."):
        engine = (values or {}).get("engine", "threads")
        options = type(SimsConfig.model_validate({"engine": engine}).engine_options).model_fields
        allowed = sorted(o for o in options if o != "engine")
        return f"{name} is not an option of engine {engine!r}; its options: {allowed}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str((error.get("ctx") or {}).get("expected", "")))
        return f"{name} must be one of {choices}{' or null' if name == 'positions' else ''}, got {value!r}"
    if kind == "union_tag_invalid":
        return f"engine must be one of {list(ENGINES)}, got {(values or {}).get('engine')!r}"
    expected = _bound(error) or _EXPECTED.get(kind)
    if expected is None:
        expected = str(error["msg"]).removeprefix("Input should be ").removeprefix("Value error, ")
    shown = json.dumps(value) if isinstance(value, (list, dict)) else repr(value)
    return f"{name} must be {expected}, got {shown}"
