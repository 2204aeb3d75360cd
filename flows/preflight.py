"""Checks of a run before any work starts: no Prefect server, no model weights, no generation.

`preflight` turns every mistake that can be seen from the configuration, the files it names and
the model's config into one `UserError` sentence naming the input (the CLI prints it and exits 2):

- the run id; the device and dtype on this machine;
- the model: a missing path, a file that is not GGUF, a directory without config, weights or
  tokenizer, a damaged safetensors header; ``layers`` beyond the model's depth;
- the oracle and the judge: their options, a ``callable`` that does not import or returns the
  wrong shape on a probe, a judge that cannot judge a pair, references a prompt set lacks;
- the prompts: a source that cannot be read, too few distinct prompts for the train / val / eval
  split (with advice the config accepts), a prompt that does not fit the context window with
  ``max_new_tokens`` (counted with the tokenizer alone, and only when a byte count says it might
  not fit);
- the engine (packages, a reachable scheduler); with ``engine: deployment`` the model and the
  oracles are on the GPU pool's hosts and are not checked here;
- the store: reachable within seconds, a directory and writable; the run's lock held by a live
  writer (named); asking an existing run for fewer iterations than it reached.

The store is written to only by the last check (a probe file; the store folder is created), so a
refused run leaves nothing behind. The flow calls `preflight` too (a deployment has no CLI in
front of it); within one process a configuration that passed is not checked again.
"""

from __future__ import annotations

from sims_core.config import ConfigError, SimsConfig
from sims_core.errors import UserError
from sims_core.hashing import canonical_hash
from sims_core.models import ModelFacts, check_device, encode_chat_prompt, inspect_model, load_tokenizer
from sims_core.oracles import OracleError, check_oracle, known_oracles, oracle_info
from sims_core.prompts import make_prompt_records, split_prompts
from storage import ArtifactStore, Manifest, PromptTable, load_prompt_table, validate_run_id
from storage.lock import check_unlocked
from tasks.runtime import runtime

__all__ = ["check_iterations", "check_prompt_lengths", "preflight"]

# Upper bound on what a chat template adds to a prompt (role markers, a default system prompt),
# in bytes; a prompt's token count never exceeds its byte count plus this.
_TEMPLATE_ALLOWANCE = 1024


def check_iterations(manifest: Manifest, iterations: int) -> None:
    """Refuse to run fewer iterations than the run has already reached: the flow would evaluate
    iteration ``iterations`` again as the last one (with controls) and rewrite the report, while
    the later iterations' artifacts stay (`sims eval` would still show the last)."""
    reached = max((e.iteration for e in manifest.entries if e.iteration > 0), default=0)
    if iterations < reached:
        raise ConfigError(
            f"iterations={iterations} is below the {reached} iteration(s) run {manifest.run_id!r} has already reached; "
            f"a run is never rewritten: ask for {reached} or more (`sims resume {manifest.run_id} --iterations "
            f"{reached}`), or start a new run"
        )


def _check_model(cfg: SimsConfig) -> ModelFacts:
    check_device(cfg.device, cfg.dtype)
    facts = inspect_model(cfg.model)
    if facts.num_layers is not None:
        cfg.candidate_layers(facts.num_layers)  # layers beyond the model: a ConfigError naming them
    return facts


def _check_oracles(cfg: SimsConfig, table: PromptTable) -> None:
    complete = table.references is not None and None not in table.references
    judge_name = cfg.judge_for(complete)  # "auto": the reference judge when every prompt has a reference
    check_oracle(cfg.oracle, cfg.oracle_options, field="oracle")
    judge = check_oracle(judge_name, cfg.judge_options, field="judge")
    if not judge.can_judge:
        able = [name for name in known_oracles() if name not in ("callable", "sum") and oracle_info(name).can_judge]
        raise OracleError(
            f"judge {judge_name!r} cannot judge a pair of answers (it scores samples against each other); "
            f"use it as the oracle and judge with one of {able}"
        )
    for field, name in (("oracle", cfg.oracle), ("judge", judge_name)):
        if oracle_info(name).needs_reference and not complete:
            missing = "has no reference column" if table.references is None else "lacks some reference answers"
            raise OracleError(
                f"{field} {name!r} needs a reference answer for every prompt, but prompts {cfg.prompts!r} {missing} "
                f"(column {cfg.reference_column!r})"
            )


def _check_prompts(cfg: SimsConfig, table: PromptTable) -> list[str]:
    records, report = make_prompt_records(table.texts, table.categories, table.references)
    try:
        split_prompts(
            records,
            eval_fraction=cfg.eval_fraction,
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
            allow_empty_splits=False,
        )
    except UserError as exc:
        dropped = f" ({report.message})" if report.n_dropped else ""
        raise type(exc)(f"prompts {cfg.prompts!r}{dropped}: {exc}") from None
    return [r.prompt for r in records]


def check_prompt_lengths(cfg: SimsConfig, facts: ModelFacts, prompts: list[str]) -> None:
    """Refuse a prompt that does not fit the context window with ``max_new_tokens``. The
    tokenizer (no weights) is loaded only when a prompt's byte count says it might not fit: a
    token never covers less than a byte of the formatted text."""
    limit = facts.max_context
    if limit is None:
        return
    if cfg.max_new_tokens >= limit:
        raise ConfigError(
            f"max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in the context window of {limit} tokens "
            f"of model {cfg.model!r}"
        )
    system = len((cfg.system_prompt or "").encode())
    suspects = [
        (i, p)
        for i, p in enumerate(prompts)
        if len(p.encode()) + system + _TEMPLATE_ALLOWANCE + cfg.max_new_tokens > limit
    ]
    if not suspects:
        return
    tokenizer = load_tokenizer(facts)
    for index, prompt in suspects:
        length = len(encode_chat_prompt(tokenizer, prompt, cfg.system_prompt))
        if length + cfg.max_new_tokens > limit:
            shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
            raise ConfigError(
                f"prompt {index + 1} of {cfg.prompts!r} ({shown!r}) is {length} tokens after chat formatting; with "
                f"max_new_tokens={cfg.max_new_tokens} it exceeds the context window of {limit} tokens of model "
                f"{cfg.model!r}: shorten or remove it, or lower max_new_tokens"
            )


def _check_store(cfg: SimsConfig, run_id: str | None) -> None:
    store = ArtifactStore.open(cfg.store)
    store.check()  # reachable, a directory: fast (one attempt, seconds)
    if run_id is None:
        return
    check_unlocked(store, run_id)
    if store.exists(store.manifest_uri(run_id)):
        check_iterations(Manifest.load(store, run_id), cfg.iterations)


def preflight(cfg: SimsConfig, run_id: str | None = None) -> None:
    """Raise a one-sentence `UserError` for a configuration that cannot run; return None when it
    can (see the module docstring for what is checked). Costs a second or two; more only when a
    prompt may be too long for the context window (the tokenizer is then loaded)."""
    from tasks.engine import check_engine

    key = (run_id, canonical_hash(cfg.to_dict()))
    if key in runtime().preflight_passed:
        return
    if run_id is not None:
        validate_run_id(run_id)
    check_engine(cfg, with_api=False)  # the flow checks a deployment engine's deployment on its API
    _check_store(cfg, run_id)
    table = load_prompt_table(
        cfg.prompts, column=cfg.prompt_column, reference_column=cfg.reference_column, split=cfg.prompt_split
    )
    prompts = _check_prompts(cfg, table)
    if cfg.engine != "deployment":  # else the model and the oracles live on the GPU pool's hosts, not here
        facts = _check_model(cfg)
        _check_oracles(cfg, table)
        check_prompt_lengths(cfg, facts, prompts)
    ArtifactStore.open(cfg.store).check(writable=True)  # last: it creates the store folder
    runtime().preflight_passed.add(key)
