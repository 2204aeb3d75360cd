"""The ``sims`` command line: its commands and flags are in `build_parser` (``sims --help``; README,
"The command line").

The store is ``--store``, else the config file's ``store``, else ``$SIMS_STORE``, else ``./runs``.
``sims run`` with no arguments runs the built-in demo: the embedded SmolLM2-135M-Instruct, the
built-in prompt set, the embedding oracle and the PMI judge, on Prefect's ephemeral local server
(nothing to start, no credentials).

A mistake in what the user gave (a config field, a file, a run id, a store that does not answer)
is one line ``sims <command>: error: <sentence>`` and exit status 2, found before any work starts
where it can be (`flows.preflight`); an internal error keeps its traceback. Ctrl-C stops a run
within seconds (exit 130), SIGTERM too (exit 143): the run lock is released and the ephemeral
Prefect server stopped (`flows.guard`); `sims resume RUN_ID` continues from the finished phases.
Reads verify what they read against the manifest's sha256: a modified artifact is refused by
name (`status` lists it), a damaged manifest is rebuilt by `sims repair` (or by `sims resume`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sims_core.errors import SimsError, UserError, is_user_error

__all__ = ["main"]

DEFAULT_STORE = os.environ.get("SIMS_STORE", "./runs")
# sims runs offline by design: the ephemeral server's telemetry would only log a failed lookup.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


class UsageError(UserError):
    """A mistake in what the user asked for: printed as one line, exit status 2."""


def _config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None):
    from sims_core.config import SimsConfig

    cfg = SimsConfig.from_dict(base) if base is not None else SimsConfig(store=DEFAULT_STORE)
    if getattr(args, "config", None):
        if not os.path.exists(args.config):
            raise UsageError(f"config file {args.config!r} does not exist")
        cfg = SimsConfig.from_yaml(args.config)  # a directory or non-UTF-8 text: one sentence naming it
        if cfg.store == SimsConfig().store:  # the file did not choose a store: SIMS_STORE may
            cfg = cfg.replace(store=DEFAULT_STORE)
    overrides = list(getattr(args, "set", None) or [])
    if getattr(args, "store", None):
        overrides.append(f"store={args.store}")
    for name in ("iterations", "shards", "engine", "lineage"):
        if getattr(args, name, None) is not None:
            overrides.append(f"{name}={getattr(args, name)}")
    return cfg.with_overrides(overrides) if overrides else cfg


def _print_result(result: dict[str, Any]) -> None:
    print()
    print(f"run {result['run_id']} finished; artifacts in {result['store']}/{result['run_id']}")
    print(f"report: {result['report']}")
    rate = result.get("win_rate")
    if rate is not None and not math.isnan(rate):
        print(
            f"held-out win rate vs the base model: {rate:.1%} (95% CI {result['ci_low']:.1%}-{result['ci_high']:.1%}); "
            f"paired score effect {result['effect']:+.4f} (95% CI {result['effect_ci_low']:+.4f} to "
            f"{result['effect_ci_high']:+.4f}); {result.get('n'):.0f} comparisons, judge {result.get('judge')}"
        )
        print(f"  verdict: {result['verdict']}")
        previous = result.get("previous_iteration")
        if previous:
            print(
                f"  vs the previous iteration: win rate {previous['win_rate']:.1%} (95% CI {previous['ci_low']:.1%}-"
                f"{previous['ci_high']:.1%}), effect {previous['effect']:+.4f} (95% CI "
                f"{previous['effect_ci_low']:+.4f} to {previous['effect_ci_high']:+.4f})"
            )
        for name, value in (result.get("controls") or {}).items():
            if value is not None and not math.isnan(value):
                print(f"  control {name.replace('_', ' ')}: win rate {value:.1%}")
        best = result.get("best_of_n")
        if best:
            print(
                f"  best-of-N (oracle picks among base samples): win rate {best['win_rate']:.1%} (95% CI "
                f"{best['ci_low']:.1%}-{best['ci_high']:.1%})"
            )
    print(f"steering file: {result['steering']}")
    night = result.get("lineage")
    if night:
        print(f"lineage {night['lineage']}: {night['reason']}")


def _run_flow(args: argparse.Namespace, cfg: Any, run_id: str) -> dict[str, Any]:
    """The flow on ``cfg``, holding the run lock (taken here, so Ctrl-C releases it) and Prefect's
    ephemeral server (started here, so Ctrl-C does not kill it first; stopped on the way out)."""
    from flows.guard import ephemeral_server, quiet_user_errors
    from flows.self_improve import run_lock, self_improve
    from storage import ArtifactStore

    store = ArtifactStore.open(cfg.store)
    with ephemeral_server(), run_lock(store, run_id, holder=f"sims {args.command}"), quiet_user_errors():
        return self_improve(run_id=run_id, config=cfg, force=args.force)


def cmd_run(args: argparse.Namespace) -> int:
    from flows.preflight import preflight
    from flows.self_improve import new_run_id

    cfg = _config_from_args(args)
    run_id = _run_id(args.run_id) if args.run_id else new_run_id()
    args.run_id = run_id  # named if the run is interrupted
    preflight(cfg, run_id)
    print(f"sims run {run_id}: store {cfg.store}, model {cfg.model}, {cfg.iterations} iteration(s)", flush=True)
    _print_result(_run_flow(args, cfg, run_id))
    return 0


def _run_id(run_id: str) -> str:
    from storage import validate_run_id

    return validate_run_id(run_id)


def _store(store_url: str | None):
    """The store, after a quick check that it answers (an S3 endpoint that is down is one
    sentence within seconds, not minutes of retries)."""
    from storage import ArtifactStore

    store = ArtifactStore.open(store_url or DEFAULT_STORE)
    store.check()
    return store


def _manifest(store_url: str | None, run_id: str):
    from storage import Manifest

    _run_id(run_id)
    return Manifest.load(_store(store_url), run_id)


def cmd_resume(args: argparse.Namespace) -> int:
    from flows.preflight import preflight
    from storage import Manifest, ManifestDamagedError, UnsafeURIError

    store = _store(args.store)
    _run_id(args.run_id)
    try:
        manifest = Manifest.load(store, args.run_id)
    except (ManifestDamagedError, UnsafeURIError) as exc:  # resume repairs it: what cannot be verified is recomputed
        print(f"sims resume: {exc}", file=sys.stderr)
        manifest = _repair(args, store)
    base = dict(manifest.config)
    if not base:
        raise UsageError(
            f"run {args.run_id!r} has no recorded config (its manifest.json was lost and rebuilt); start it again with "
            f"`sims run --run-id {args.run_id} --config FILE` and the config it was run with"
        )
    base["store"] = args.store or base.get("store", DEFAULT_STORE)
    args.store = None
    cfg = _config_from_args(args, base=base)
    preflight(cfg, args.run_id)
    print(f"sims resume {args.run_id}: {cfg.iterations} iteration(s), finished phases are skipped", flush=True)
    _print_result(_run_flow(args, cfg, args.run_id))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    manifest = _manifest(args.store, args.run_id)
    frame = manifest.to_frame()
    problems = manifest.verify_outputs()  # outputs modified or missing since their phase recorded them
    state = {(c.iteration, c.phase): c.state for c in problems}
    frame["outputs"] = [
        state.get((e.iteration, e.phase), "ok") if e.status == "completed" else "" for e in manifest.entries
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "run_id": manifest.run_id,
                    "store": manifest.store.url,
                    "created_at": manifest.created_at,
                    "iterations": manifest.config.get("iterations"),
                    "phases": json.loads(frame.to_json(orient="records")),
                    "problems": [
                        {"iteration": c.iteration, "phase": c.phase, "output": c.name, "uri": c.uri, "state": c.state}
                        for c in problems
                    ],
                },
                indent=2,
            )
        )
        return 0
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.max_colwidth", 60):
        print(
            f"run {manifest.run_id} in {manifest.store.url} (created {manifest.created_at}, "
            f"{manifest.config.get('iterations')} iteration(s) requested)"
        )
        print((frame.drop(columns=["error"]) if frame["error"].isna().all() else frame).to_string(index=False))
    for c in problems:
        print(
            f"{c.state}: {c.uri} (iteration {c.iteration} {c.phase!r}); `sims resume {manifest.run_id}` recomputes it"
        )
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    store = _store(args.store)
    runs = store.list_runs()
    if not runs:
        print(f"no runs in {store.url}")
    for run in runs:
        print(run)
    return 0


def _latest(manifest, phase: str, iteration: int | None) -> int:
    done = [e.iteration for e in manifest.entries if e.phase == phase and e.status == "completed"]
    if iteration is not None:
        if iteration not in done:
            raise UsageError(
                f"run {manifest.run_id!r} has no completed {phase} at iteration {iteration}; completed: {sorted(done) or 'none'}"
            )
        return iteration
    if not done:
        raise UsageError(f"run {manifest.run_id!r} has no completed {phase} phase yet")
    return max(done)


def cmd_eval(args: argparse.Namespace) -> int:
    from tasks.eval import summary_from_eval

    manifest = _manifest(args.store, args.run_id)
    t = _latest(manifest, "eval", args.iteration)
    frame = manifest.read_frame(t, "eval", "eval")  # verified against its recorded sha256
    summary = summary_from_eval(frame)
    if args.json:
        print(
            json.dumps(
                {"run_id": manifest.run_id, "iteration": t, "summary": json.loads(summary.to_json(orient="records"))},
                indent=2,
            )
        )
    else:
        print(f"run {manifest.run_id}, iteration {t}, evaluation vs the base model:")
        print(summary.to_string(index=False))
    return 0


def _write_output(out: str, force: bool, data: bytes) -> None:
    """Write ``data`` to the local file ``out`` with storage's atomic write (a reader never sees
    half a file; nothing is left on failure). An existing ``out`` is refused without ``force``."""
    from storage import ArtifactStore

    target = Path(out)
    if target.is_dir():
        raise UsageError(f"--out {out!r} is a directory; give a file path")
    if target.exists() and not force:
        raise UsageError(f"--out {out!r} already exists; pass --force to replace it")
    ArtifactStore.open(str(target.parent)).write_bytes(str(target), data)


def cmd_export(args: argparse.Namespace) -> int:
    from sims_core.preferences import to_dpo_dataframe
    from sims_core.steering.steering_set import FILE_NAME, SteeringSet
    from tasks.buffer import pairs_from_frame

    manifest = _manifest(args.store, args.run_id)
    out = args.out
    if args.what in ("steering", "gguf"):
        t = _latest(manifest, "steering", args.iteration)
        data = manifest.read_bytes(t, "steering", "steering")  # verified against its recorded sha256
        steering = SteeringSet.from_bytes(data, source=f"{args.run_id} iteration {t}")
        if args.what == "steering":
            out = args.out if args.out.endswith(".safetensors") else os.path.join(args.out, FILE_NAME)
            if os.path.isfile(args.out) and not args.out.endswith(".safetensors"):
                raise UsageError(f"--out {args.out!r} is a file; give a directory or a .safetensors path")
            _write_output(out, args.force, data)
        else:
            from sims_core.steering.learners import get_learner, known_learners

            if not get_learner(steering.learner).vector_export:
                vectors = [n for n in known_learners() if get_learner(n).vector_export]
                raise UsageError(
                    f"a GGUF control vector holds one vector per layer; iteration {t} used learner "
                    f"{steering.learner!r}, whose layer functions are not vectors (learners that export: {vectors})"
                )
            with tempfile.TemporaryDirectory() as folder:
                _write_output(args.out, args.force, steering.to_gguf(Path(folder) / Path(args.out).name).read_bytes())
        print(
            f"wrote {out} (iteration {t}, learner {steering.learner}, layers {steering.layers}, alpha {steering.alpha:g})"
        )
        return 0
    if not out.endswith((".jsonl", ".parquet")):
        raise UsageError(f"--out for dpo must end in .parquet or .jsonl, got {out!r}")
    t = _latest(manifest, "buffer", args.iteration)
    pairs = pairs_from_frame(manifest.read_frame(t, "buffer", "buffer"))  # verified
    frame = to_dpo_dataframe(pairs)
    if out.endswith(".jsonl"):
        data = frame.to_json(orient="records", lines=True, force_ascii=False).encode("utf-8")
    else:
        data = frame.to_parquet(index=False)
    _write_output(out, args.force, data)
    print(f"wrote {len(frame)} DPO pairs (prompt, chosen, rejected) from iteration {t} to {out}")
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    from storage.lock import break_lock, is_stale, read_lock

    store = _store(args.store)
    _run_id(args.run_id)
    info = read_lock(store, args.run_id)
    if info is None:
        store.require_run(args.run_id)
        print(f"run {args.run_id} is not locked")
        return 0
    if not is_stale(info) and not args.force:
        import socket

        if info.hostname == socket.gethostname():
            why = f"pid {info.pid} is still running on this host; stop it (Ctrl-C or kill {info.pid}) or pass --force"
        else:
            why = f"sims cannot tell from here whether pid {info.pid} still runs on host {info.hostname}; if it does not, pass --force"
        raise UsageError(f"run {args.run_id!r} is locked by {info.describe()}: {why}")
    break_lock(store, args.run_id)
    held = info.describe() if info.readable else "an empty or unreadable lock file"
    print(f"run {args.run_id}: removed the lock held by {held}")
    return 0


def _repair(args: argparse.Namespace, store: Any):
    """Rebuild the run's manifest from its artifacts under the run lock; print what it dropped."""
    from flows.self_improve import run_lock
    from storage import Manifest
    from storage.lock import check_unlocked

    check_unlocked(store, args.run_id)
    with run_lock(store, args.run_id, holder=f"sims {args.command}"):
        manifest, notes = Manifest.rebuild(store, args.run_id)
    for note in notes:
        print(f"sims {args.command}: {note}", file=sys.stderr)
    return manifest


def cmd_repair(args: argparse.Namespace) -> int:
    store = _store(args.store)
    _run_id(args.run_id)
    store.require_run(args.run_id, manifest=False)
    manifest = _repair(args, store)
    completed = sum(e.status == "completed" for e in manifest.entries)
    print(
        f"rebuilt the manifest of run {args.run_id}: {len(manifest.entries)} phase(s) kept ({completed} completed and "
        f"verified); `sims resume {args.run_id}` recomputes the rest"
    )
    return 0


def _command(sub: Any, name: str, func: Any, help: str, *positionals: str) -> argparse.ArgumentParser:
    """A subcommand that runs ``func``, with its positional arguments."""
    command = sub.add_parser(name, help=help)
    for positional in positionals:
        command.add_argument(positional)
    command.set_defaults(func=func)
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sims", description="Self-Improving Model Steering")
    sub = parser.add_subparsers(dest="command", required=True)

    run = _command(sub, "run", cmd_run, "run the full SIMS flow (no arguments: the built-in demo)")
    run.add_argument("--config", help="YAML file of config fields")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    run.add_argument("--run-id", help="name of the run (default: run-<UTC time>-<random>)")
    run.add_argument("--store", help=f"artifact store: a directory or s3://bucket/prefix (default {DEFAULT_STORE})")
    run.add_argument(
        "--lineage", help="advance this lineage: start from its current steering, draw new prompts, gate promotion"
    )
    resume = _command(
        sub, "resume", cmd_resume, "resume a run from its artifacts (or extend it with --iterations)", "run_id"
    )
    resume.add_argument("--iterations", type=int, help="total iterations wanted (more than before continues the run)")
    resume.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    resume.add_argument("--store", help=f"artifact store (default {DEFAULT_STORE})")
    for command in (run, resume):
        command.add_argument(
            "--shards",
            type=int,
            help="split generation, ranking and extraction into N shards (results do not depend on N)",
        )
        command.add_argument(
            "--engine",
            help="where shards run: threads (default), dask, ray, deployment (options: --set 'engine_options={...}')",
        )
        command.add_argument(
            "--force",
            action="store_true",
            help="reuse an existing run id with a config that changes what it trained (recomputes its artifacts)",
        )

    status = _command(sub, "status", cmd_status, "the phase table of a run", "run_id")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    runs = _command(sub, "runs", cmd_runs, "list the runs in a store")
    ev = _command(sub, "eval", cmd_eval, "the evaluation summary of a run's iteration", "run_id")
    ev.add_argument("--iteration", type=int, help="default: the latest evaluated iteration")
    ev.add_argument("--json", action="store_true")
    export = _command(sub, "export", cmd_export, "export a steering file, DPO pairs or a GGUF control vector", "run_id")
    export.add_argument("what", choices=["steering", "dpo", "gguf"])
    export.add_argument("--out", required=True, help="output path (.safetensors or dir; .parquet/.jsonl; .gguf)")
    export.add_argument("--iteration", type=int, help="default: the latest iteration")
    export.add_argument("--force", action="store_true", help="replace --out if it exists (atomically)")
    unlock = _command(sub, "unlock", cmd_unlock, "remove a run's lock left by a process that no longer runs", "run_id")
    unlock.add_argument("--force", action="store_true", help="remove it even if its holder may still be running")
    repair = _command(
        sub, "repair", cmd_repair, "rebuild a damaged manifest from the run's artifacts and their hashes", "run_id"
    )
    lineage = sub.add_parser("lineage", help="a lineage's history, or roll its current steering back")
    lineage_sub = lineage.add_subparsers(dest="lineage_command", required=True)
    lineage_status = _command(
        lineage_sub, "status", cmd_lineage_status, "one row per run: prompts, comparison, promoted or not", "name"
    )
    lineage_status.add_argument("--json", action="store_true", help="machine-readable output")
    rollback = _command(
        lineage_sub, "rollback", cmd_lineage_rollback, "make an earlier promoted steering current again", "name"
    )
    rollback.add_argument(
        "--to",
        metavar="RUN_ID",
        help="the run whose steering becomes current (default: the one promoted before the current one)",
    )
    for command in (status, runs, ev, export, unlock, repair, lineage_status, rollback):  # last in their --help
        command.add_argument("--store", help=f"artifact store (default {DEFAULT_STORE})")
    return parser


def _lineage(args: argparse.Namespace):
    from storage.lineage import Lineage

    lineage = Lineage(args.store or DEFAULT_STORE, args.name)
    if not lineage.exists():
        raise UsageError(f"lineage {args.name!r} has no runs in {lineage.store.url} yet")
    return lineage


def cmd_lineage_status(args: argparse.Namespace) -> int:
    lineage = _lineage(args)
    pointer = lineage.pointer()
    nights = lineage.nights()
    if args.json:
        print(json.dumps({"lineage": lineage.name, "current": pointer, "runs": nights}, indent=2, default=str))
        return 0
    current = (
        f"run {pointer['run_id']} (iteration {pointer['iteration']}, since {pointer['promoted_at']})"
        if pointer
        else "none"
    )
    print(f"lineage {lineage.name} in {lineage.store.url}: current steering {current}")
    if pointer:
        print(f"  serving reads {lineage.uri('current.safetensors')} (sha256 {pointer['sha256'][:12]})")
    for night in nights:
        if night.get("event") == "rollback":
            print(f"{night['recorded_at']}  rollback to {night['to_run']} (from {night.get('from_run')})")
            continue
        c = night.get("comparison") or {}
        rate = c.get("win_rate")
        versus = (
            f"win rate {rate:.1%} [{c.get('ci_low', float('nan')):.1%}, {c.get('ci_high', float('nan')):.1%}] vs "
            f"{c.get('against', 'current')}"
            if rate is not None
            else "no comparison"
        )
        verdict = "PROMOTED" if night.get("promoted") else "kept current"
        print(f"{night['recorded_at']}  {night['run_id']}  {night.get('prompts', 0)} prompts  {versus}  {verdict}")
        print(f"    {night.get('reason', '')}")
    return 0


def cmd_lineage_rollback(args: argparse.Namespace) -> int:
    lineage = _lineage(args)
    pointer = lineage.rollback(args.to)
    print(
        f"lineage {lineage.name}: current steering is now run {pointer['run_id']}'s (sha256 {pointer['sha256'][:12]})"
    )
    return 0


def _interrupted(args: argparse.Namespace, signum: int) -> str:
    import signal

    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    run_id = getattr(args, "run_id", None)
    if args.command in ("run", "resume") and run_id:
        return f"sims {args.command}: {what}; `sims resume {run_id}` continues"
    return f"sims {args.command}: {what}"


def _release_locks() -> None:
    """The forced-exit path: release the run locks this process holds."""
    module = sys.modules.get("tasks.runtime")  # not imported: no flow ran, no lock is held
    for lock in list(module.runtime().held_locks.values()) if module is not None else []:
        with contextlib.suppress(Exception):
            lock.release()


def main(argv: Sequence[str] | None = None) -> int:
    from flows.guard import EXIT_CODES, ProcessGuard, interrupt_signal

    args = build_parser().parse_args(argv)
    guard = ProcessGuard(lambda signum: _interrupted(args, signum), _release_locks)
    try:
        with guard:
            return args.func(args)
    except SimsError as exc:
        if not (is_user_error(exc) or exc.retryable):  # an internal error keeps its traceback
            raise
        print(f"sims {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except BaseException as exc:
        signum = interrupt_signal(exc)
        if signum is None:
            raise
        print(_interrupted(args, signum), file=sys.stderr)
        return EXIT_CODES.get(signum, 130)


if __name__ == "__main__":
    sys.exit(main())
