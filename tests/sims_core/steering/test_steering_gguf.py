"""Export of a mean-difference set as a llama.cpp control vector, read back with gguf."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from sims_core.steering import fit_steering


def _field(reader: GGUFReader, key: str):
    field = reader.get_field(key)
    assert field is not None, key
    return field.contents()


def test_mean_diff_exports_as_controlvector_gguf(tiny, tmp_path):
    g = torch.Generator().manual_seed(0)
    pos = {l: torch.randn(20, 64, generator=g) + l for l in (1, 3)}
    neg = {l: torch.randn(20, 64, generator=g) for l in (1, 3)}
    s = fit_steering("mean_diff", pos, neg, model=tiny, top_k=None)
    path = s.to_gguf(tmp_path / "cv.gguf", scale=2.0)
    reader = GGUFReader(str(path))
    assert _field(reader, "general.architecture") == "controlvector"
    assert _field(reader, "controlvector.model_hint") == "llama"
    assert _field(reader, "controlvector.layer_count") == 2
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert sorted(tensors) == ["direction.1", "direction.3"]  # llama.cpp: direction.N is added after block N
    for layer in (1, 3):
        assert tensors[f"direction.{layer}"].dtype == np.float32 and tensors[f"direction.{layer}"].shape == (64,)
        np.testing.assert_allclose(tensors[f"direction.{layer}"], 2.0 * s[layer].vector.numpy(), rtol=1e-6)


def test_only_mean_diff_sets_above_layer_0_export(tiny, tmp_path):
    pos, neg = (
        {0: torch.randn(20, 64) + 1, 1: torch.randn(20, 64) + 1},
        {0: torch.randn(20, 64), 1: torch.randn(20, 64)},
    )
    with pytest.raises(ValueError, match="layer 0 cannot be exported"):
        fit_steering("mean_diff", pos, neg, model=tiny).to_gguf(tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="only steering sets whose layer functions are vectors .* this one is .hpr."):
        fit_steering("hpr", pos, neg, model=tiny, epochs=1).to_gguf(tmp_path / "x.gguf")
