"""The next phase verifies what it reads: an input artifact that changed after the phase that
wrote it recorded it is refused, naming the file and that phase (before any work)."""

from __future__ import annotations

import pytest

from sims_core.config import SimsConfig
from storage import ArtifactModifiedError, ArtifactStore, Manifest
from tasks.phase import PhaseContext, run_phase


def test_a_phase_refuses_an_input_modified_after_it_was_recorded(tmp_path):
    store = ArtifactStore.open(tmp_path / "runs")
    Manifest.load_or_create(store, "r1", config={})
    ctx = PhaseContext(store_url=store.url, run_id="r1", iteration=1, config=SimsConfig(store=str(tmp_path / "runs")))
    rows = [{"prompt_id": "p0", "prompt": "hello", "split": "train", "category": ""}]
    written = run_phase(
        ctx,
        "prompts",
        depends_on=["seed"],
        inputs={},
        compute=lambda: {"prompts": store.write_table(ctx.uri("prompts"), rows, "prompts")},
    )
    computed = []

    def next_phase():
        computed.append(True)
        return {"buffer": store.write_bytes(ctx.uri("buffer", "txt"), b"pairs")}

    run_phase(ctx, "buffer", depends_on=["seed"], inputs={"prompts": written.uri}, compute=next_phase)
    assert computed == [True]
    store.write_table(written.uri, [{**rows[0], "prompt": "tampered"}], "prompts")  # behind the manifest's back
    with pytest.raises(ArtifactModifiedError) as err:
        run_phase(ctx, "buffer", depends_on=["seed"], inputs={"prompts": written.uri}, compute=next_phase)
    assert str(err.value).startswith(f"{written.uri} changed after iteration 1 'prompts' of run 'r1' wrote it")
    assert computed == [True]  # nothing was computed from it
