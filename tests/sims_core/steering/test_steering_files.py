"""Steering files: bit-exact round trips, a self-describing header, no pickle on the load path,
and clear errors for files that do not fit the model or are not steering files."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import sims_core
from sims_core.steering import IncompatibleSteeringError, ModelIdentity, SteeringFileError, SteeringSet, fit_steering


@pytest.fixture(scope="module")
def fitted(tiny_lms):
    lm = tiny_lms["llama"]
    g = torch.Generator().manual_seed(0)
    pos = {1: torch.randn(40, 64, generator=g) + 1, 2: torch.randn(40, 64, generator=g) + 1}
    neg = {1: torch.randn(40, 64, generator=g) - 1, 2: torch.randn(40, 64, generator=g) - 1}
    return {
        name: fit_steering(name, pos, neg, top_k=2, model=lm, epochs=1, metadata={"iteration": 3})
        if name != "mean_diff"
        else fit_steering(name, pos, neg, top_k=2, model=lm, alpha=0.5)
        for name in ("hpr", "mean_diff", "linear_shift")
    }


def assert_same(a: SteeringSet, b: SteeringSet) -> None:
    assert a.header() == b.header()
    assert a.layers == b.layers and a.layer_scores == b.layer_scores and a.model == b.model
    for layer in a.layers:
        sa, sb = a[layer].state(), b[layer].state()
        assert sa.keys() == sb.keys()
        for name in sa:
            assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), (layer, name)


@pytest.mark.parametrize("learner", ["hpr", "mean_diff", "linear_shift"])
def test_save_and_load_round_trip_bit_exactly(fitted, tiny, tmp_path, learner):
    s = fitted[learner]
    as_file = s.save(tmp_path / "one.safetensors")
    as_dir = s.save(tmp_path / "iter=1")
    assert as_file.name == "one.safetensors" and as_dir == tmp_path / "iter=1" / "steering.safetensors"
    assert_same(s, SteeringSet.load(as_file, model=tiny))
    assert_same(s, SteeringSet.load(tmp_path / "iter=1", model=tiny))
    assert_same(s, SteeringSet.from_bytes(s.to_bytes(), model=tiny))
    assert as_file.read_bytes() == s.to_bytes()
    h = torch.randn(2, 3, 64)
    torch.testing.assert_close(SteeringSet.load(as_file)[s.layers[0]](h), s[s.layers[0]](h), rtol=0, atol=0)


def test_header_describes_the_file(fitted, tiny, tmp_path):
    path = fitted["hpr"].save(tmp_path / "s.safetensors")
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["sims_steering"])
        names = sorted(f.keys())
    assert header["learner"] == "hpr" and header["operation"] == "householder_pseudo_rotation"
    assert header["layers"] == fitted["hpr"].layers
    assert "decoder blocks 0..L-1" in header["layer_numbering"] and header["hook_site"] == "block_output"
    assert header["positions"] == "last" and header["alpha"] == 1.0 and header["dtype"] == "float32"
    assert header["hidden_size"] == 64
    assert header["model"] == {
        "name": tiny.name,
        "config_hash": tiny.config_hash,
        "num_layers": 4,
        "hidden_size": 64,
        "model_type": "llama",
        "weights": tiny.weights_fingerprint,
    }
    assert set(header["model"]["weights"]) == {"shapes", "sample"} and len(header["model"]["weights"]["sample"]) == 48
    assert header["sims_version"] == sims_core.__version__
    assert set(header["layer_scores"]) == {"1", "2"} and header["metadata"] == {"iteration": 3}
    assert header["options"]["lr"] == 5e-4 and header["options"]["epochs"] == 1
    assert "layers.1.probe_weight" in names and "layers.1.angle.0.weight" in names


def test_loading_never_unpickles(fitted, tiny, tmp_path, monkeypatch):
    path = fitted["linear_shift"].save(tmp_path / "s.safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used on the load path")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert SteeringSet.load(path, model=tiny).layers == fitted["linear_shift"].layers


def test_loading_into_a_model_it_does_not_fit_is_an_error(fitted, tiny, tiny_qwen, tmp_path):
    from sims_core.testing import tiny_model

    path = fitted["mean_diff"].save(tmp_path / "s.safetensors")
    wider = tiny_model("llama", hidden=32, layers=4, heads=4)
    with pytest.raises(IncompatibleSteeringError, match="hidden size 64 but tiny-llama has 32"):
        SteeringSet.load(path, model=wider)
    deeper = tiny_model("llama", hidden=64, layers=3)
    with pytest.raises(IncompatibleSteeringError, match="with 4 layers but tiny-llama has 3"):
        SteeringSet.load(path, model=deeper)
    with pytest.raises(IncompatibleSteeringError, match="fitted on 'tiny-llama'.*allow_identity_mismatch=True"):
        SteeringSet.load(path, model=tiny_qwen)
    loaded = SteeringSet.load(path, model=tiny_qwen, allow_identity_mismatch=True)
    assert loaded.steering_edits(tiny_qwen, 1.0).keys() == {1, 2}
    with pytest.raises(IncompatibleSteeringError, match="hidden size 64 but tiny-llama has 32"):
        SteeringSet.load(path, model=wider, allow_identity_mismatch=True)


def test_an_unbound_set_cannot_be_saved(tiny):
    s = fit_steering("mean_diff", {0: torch.randn(5, 64)}, {0: torch.randn(5, 64)})
    with pytest.raises(ValueError, match="does not record its base model"):
        s.to_bytes()
    assert s.bind(tiny).model == ModelIdentity.of(tiny)
    assert SteeringSet.from_bytes(s.to_bytes()).model.config_hash == tiny.config_hash


def test_files_that_are_not_steering_files_are_clear_errors(fitted, tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(3)}, str(plain))
    with pytest.raises(SteeringFileError, match="no sims steering header"):
        SteeringSet.load(plain)
    good = fitted["mean_diff"].to_bytes()
    with pytest.raises(SteeringFileError, match="garbled safetensors header"):
        SteeringSet.from_bytes(good[:8] + b"\xff" * 20 + good[28:])
    with pytest.raises(SteeringFileError, match="not a safetensors file"):
        SteeringSet.from_bytes(b"abc")
    with pytest.raises(SteeringFileError, match="header length"):
        SteeringSet.from_bytes(good[:100])
    garbled_meta = tmp_path / "garbled.safetensors"
    save_file({"x": torch.zeros(3)}, str(garbled_meta), metadata={"sims_steering": "{not json"})
    with pytest.raises(SteeringFileError, match="garbled sims steering header"):
        SteeringSet.load(garbled_meta)
    header = fitted["mean_diff"].header()
    del header["hidden_size"]
    partial = tmp_path / "partial.safetensors"
    save_file(
        {"layers.1.vector": torch.zeros(64), "layers.2.vector": torch.zeros(64)},
        str(partial),
        metadata={"sims_steering": json.dumps(header)},
    )
    with pytest.raises(SteeringFileError, match="header lacks hidden_size"):
        SteeringSet.load(partial)
    with pytest.raises(FileNotFoundError, match="no steering file"):
        SteeringSet.load(tmp_path / "missing")


def _with_header(steering: SteeringSet, **changes) -> bytes:
    """The steering file's bytes with header fields replaced (tensors as they are)."""
    from safetensors.torch import save

    header = {**steering.header(), **changes}
    tensors = {f"layers.{layer}.{name}": t for layer in steering.layers for name, t in steering[layer].state().items()}
    return save(tensors, metadata={"sims_steering": json.dumps(header)})


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -float("inf")])
def test_a_header_alpha_that_is_not_finite_is_refused(fitted, alpha):
    with pytest.raises(SteeringFileError, match="header field 'alpha' must be a finite number"):
        SteeringSet.from_bytes(_with_header(fitted["mean_diff"], alpha=alpha), source="bad.safetensors")


def test_a_header_dtype_that_does_not_match_the_tensors_is_refused(fitted):
    with pytest.raises(
        SteeringFileError,
        match=r"bad\.safetensors: tensor 'layers\.\d+\.vector' is float32 but the header says dtype 'float16'",
    ):
        SteeringSet.from_bytes(_with_header(fitted["mean_diff"], dtype="float16"), source="bad.safetensors")
    with pytest.raises(SteeringFileError, match="header field 'dtype' must be one of"):
        SteeringSet.from_bytes(_with_header(fitted["mean_diff"], dtype="int8"), source="bad.safetensors")
    with pytest.raises(SteeringFileError, match="lists a layer twice"):
        SteeringSet.from_bytes(_with_header(fitted["mean_diff"], layers=[1, 1, 2]), source="bad.safetensors")


def test_tensors_with_nan_are_refused(fitted):
    from safetensors.torch import save

    steering = fitted["mean_diff"]
    vector = steering[1].state()["vector"].clone()
    vector[3] = float("nan")
    data = save(
        {"layers.1.vector": vector, "layers.2.vector": steering[2].state()["vector"]},
        metadata={"sims_steering": json.dumps(steering.header())},
    )
    with pytest.raises(SteeringFileError, match="tensor 'layers.1.vector' holds NaN or infinite values"):
        SteeringSet.from_bytes(data)


def test_the_model_identity_is_the_weights_not_the_folder(tmp_path):
    """The same weights in another folder (or another dtype) fit; other weights at the same path do not."""
    from sims_core import load_model
    from sims_core.testing import save_tiny_model

    first = load_model(save_tiny_model(tmp_path / "a", seed=0))
    g = torch.Generator().manual_seed(0)
    steering = fit_steering(
        "mean_diff", {1: torch.randn(8, 64, generator=g)}, {1: torch.randn(8, 64, generator=g)}, model=first
    )
    data = steering.to_bytes()
    copy = load_model(save_tiny_model(tmp_path / "b", seed=0))
    assert copy.name != first.name
    assert SteeringSet.from_bytes(data, model=copy).layers == [1]  # same weights, another folder
    assert SteeringSet.from_bytes(data, model=load_model(tmp_path / "b", dtype="bfloat16")).layers == [1]
    save_tiny_model(tmp_path / "a", seed=1)  # other weights at the same path, same config
    retrained = load_model(tmp_path / "a")
    assert retrained.name == first.name and retrained.config_hash == first.config_hash
    with pytest.raises(IncompatibleSteeringError, match="its weights differ"):
        SteeringSet.from_bytes(data, model=retrained)


def test_files_without_a_weights_fingerprint_still_load_and_match_by_name(fitted, tiny, tiny_qwen):
    header = fitted["mean_diff"].header()
    old_model = {k: v for k, v in header["model"].items() if k != "weights"}
    data = _with_header(fitted["mean_diff"], model=old_model)
    loaded = SteeringSet.from_bytes(data, model=tiny)
    assert loaded.model.weights is None and loaded.layers == fitted["mean_diff"].layers
    with pytest.raises(IncompatibleSteeringError, match="records no weights fingerprint|config hash"):
        SteeringSet.from_bytes(data, model=tiny_qwen)
