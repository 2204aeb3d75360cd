"""The activations phase: the BASE model's activations on the buffer's chosen / rejected answers."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from torch import Tensor

from sims_core import capture_activations
from sims_core.activations import Pooling
from sims_core.progress import progress_bar
from sims_core.sharding import canonical_groups, shard_groups
from sims_core.steering import align_pairs
from storage import shard_phase
from tasks.phase import PhaseContext, phase_logger, run_phase
from tasks.runtime import runtime

__all__ = ["ACTIVATION_FIELDS", "activations_phase"]

ACTIVATION_FIELDS = ("model", "device", "dtype", "system_prompt", "layers", "learner")


@task(name="activations", cache_policy=NO_CACHE)
def activations_phase(ctx: PhaseContext, buffer_uri: str, shard: int = 0, shards: int = 1) -> str:
    """Capture the candidate layers' activations on every pair of the buffer (those of ``shard``
    when the phase is split in ``shards``), streamed to Parquet in row groups. Pairs go through
    the model in canonical groups of ``batch_size`` (by length, then pair id), one batch each, so
    the values do not depend on the number of shards; memory stays bounded by one group.
    Mean-pooled rows for most learners; token-aligned rows (``pair_id:k``) for those whose
    `Learner.token_level` says so (HPR, linear_shift)."""
    phase = shard_phase("activations", shard, shards)

    def compute():
        cfg = ctx.config
        runtime().setup(cfg)
        lm = runtime().model(cfg)
        store = ctx.store
        layers = cfg.candidate_layers(lm.num_layers)
        pairs = store.read_frame(buffer_uri, "buffer")
        # token counts once per pair: they order the canonical groups and label the rows
        chosen_counts = [len(lm.encode_response(t)) for t in pairs["chosen"]]
        rejected_counts = [len(lm.encode_response(t)) for t in pairs["rejected"]]
        lengths = [
            len(lm.encode_prompt(p)) + max(c, r) for p, c, r in zip(pairs["prompt"], chosen_counts, rejected_counts)
        ]
        groups = shard_groups(canonical_groups(pairs["pair_id"].tolist(), lengths, cfg.batch_size), shard, shards)
        per_token = cfg.token_level
        pooling: Pooling = "none" if per_token else "mean"
        skipped_tokens = 0
        extracted = sum(len(group) for group in groups)
        desc = "extracting activations" if shards == 1 else f"extracting ({phase})"
        with (
            runtime().exclusive(lm),
            store.activation_writer(ctx.uri(phase), hidden=lm.hidden_size, dtype="float32") as writer,
            progress_bar(total=extracted, desc=desc, unit="pair") as bar,
        ):
            for group in groups:  # one batch each: the same batches whatever the number of shards
                chunk = pairs.iloc[group]
                prompts = chunk["prompt"].tolist()
                ids = chunk["pair_id"].tolist()
                chosen, rejected = (
                    capture_activations(
                        lm,
                        prompts,
                        chunk[side].tolist(),
                        layers,
                        pooling=pooling,
                        batch_size=cfg.batch_size,
                        progress=False,
                    )
                    for side in ("chosen", "rejected")
                )
                for layer in layers:
                    if not per_token:
                        pooled = chosen[layer], rejected[layer]
                        assert isinstance(pooled[0], Tensor) and isinstance(pooled[1], Tensor)  # one row per pair
                        writer.write(layer, pooled[0].numpy(), ids, "chosen", [chosen_counts[i] for i in group])
                        writer.write(layer, pooled[1].numpy(), ids, "rejected", [rejected_counts[i] for i in group])
                        continue
                    for pid, pos_tokens, neg_tokens in zip(ids, chosen[layer], rejected[layer]):
                        pos, neg, stats = align_pairs([pos_tokens], [neg_tokens], return_stats=True)
                        skipped_tokens += stats.skipped_identical
                        if len(pos) == 0:
                            continue
                        row_ids = [f"{pid}:{k}" for k in range(len(pos))]
                        writer.write(layer, pos.numpy(), row_ids, "chosen", 1)
                        writer.write(layer, neg.numpy(), row_ids, "rejected", 1)
                bar.update(len(group))
        phase_logger().info(
            "iteration %d %s: activations of %d pairs at layers %s (%s rows)%s",
            ctx.iteration,
            phase,
            extracted,
            layers,
            writer.rows_written,
            f", {skipped_tokens} near-identical token positions skipped" if per_token else "",
        )
        return {"activations": writer.result}

    result = run_phase(ctx, phase, depends_on=ACTIVATION_FIELDS, inputs={"buffer": buffer_uri}, compute=compute)
    return result.state(result.uri)
