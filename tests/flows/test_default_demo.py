"""`sims run` with no arguments, end to end on the embedded model (slow: several minutes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from storage import ArtifactStore, Manifest

pytestmark = pytest.mark.slow


def test_default_sims_run_completes_and_reports_its_win_rate(tmp_path):
    sims = str(Path(sys.executable).with_name("sims"))
    env = {**os.environ, "SIMS_PROGRESS": "0", "SIMS_STORE": str(tmp_path / "runs")}
    done = subprocess.run(
        [sims, "run", "--run-id", "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert "sims run demo: store" in out and "model embedded, 2 iteration(s)" in out
    report_line = re.search(r"report: (.+report\.md)", out).group(1)
    rate = float(re.search(r"held-out win rate vs the base model: ([\d.]+)%", out).group(1)) / 100
    assert 0.0 <= rate <= 1.0
    assert "control random direction:" in out and "control low temperature:" in out

    store = ArtifactStore.open(str(tmp_path / "runs"))
    manifest = Manifest.load(store, "demo")
    assert len(manifest.entries) == 1 + 2 * 7 and {e.status for e in manifest.entries} == {"completed"}
    assert len(store.read_frame(manifest.output_uri(2, "generations"), "generations")) == 32 * 4
    report = Path(report_line).read_text()
    assert f"{rate:.1%}" in report
