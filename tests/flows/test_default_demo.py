"""`sims run` on the embedded model end to end, as the README's main command runs it but with a
smaller evaluation (slow: a few minutes; the full default takes ~24-26 minutes on 2 cores and is
measured by hand, see README "Benchmarks"): every phase, the report, controls and best-of-N."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from storage import ArtifactStore, Manifest

pytestmark = pytest.mark.slow


def test_sims_run_on_the_embedded_model_completes_and_reports(tmp_path):
    sims = str(Path(sys.executable).with_name("sims"))
    env = {**os.environ, "SIMS_PROGRESS": "0", "SIMS_STORE": str(tmp_path / "runs")}
    small = [
        "iterations=2",
        "num_prompts=8",
        "max_new_tokens=24",
        "max_eval_prompts=24",
        "max_val_prompts=4",
        "best_of_n_prompts=6",
        "alphas=[4.0]",
    ]
    argv = [sims, "run", "--run-id", "demo"] + [arg for kv in small for arg in ("--set", kv)]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert "sims run demo: store" in out and "model embedded, 2 iteration(s)" in out
    report_line = re.search(r"report: (.+report\.md)", out).group(1)
    rate = float(re.search(r"held-out win rate vs the base model: ([\d.]+)%", out).group(1)) / 100
    assert 0.0 <= rate <= 1.0
    assert "24 comparisons, judge reference(all-MiniLM-L6-v2)" in out  # judge auto: the prompts have references
    assert "verdict: " in out and "vs the previous iteration: win rate" in out
    assert "control random direction:" in out and "control low temperature:" in out
    assert "best-of-N (oracle picks among base samples): win rate" in out

    store = ArtifactStore.open(str(tmp_path / "runs"))
    manifest = Manifest.load(store, "demo")
    phases = [(e.iteration, e.phase) for e in manifest.entries]
    assert phases[:2] == [(0, "prompts"), (0, "baseline")] and len(phases) == 2 + 2 * 7
    assert {e.status for e in manifest.entries} == {"completed"}
    assert len(store.read_frame(manifest.output_uri(2, "generations"), "generations")) == 8 * 4
    report = Path(report_line).read_text()
    assert f"{rate:.1%}" in report
