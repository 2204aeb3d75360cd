"""Tiny causal LMs built from a config, for tests, benchmarks and smoke runs.

Nothing is downloaded: the tokenizer is a small byte-level BPE trained on a built-in corpus and
the weights are random (seeded). Four architectures cover the decoder layouts sims supports:
Llama and Qwen2 (``model.layers``), GPT-2 (``transformer.h``) and GPT-NeoX (``gpt_neox.layers``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch

from sims_core.models import LanguageModel, prepare

__all__ = ["TINY_ARCHITECTURES", "tiny_tokenizer", "tiny_model", "save_tiny_model"]

Architecture = Literal["llama", "qwen2", "gpt2", "gpt_neox"]
TINY_ARCHITECTURES: tuple[Architecture, ...] = ("llama", "qwen2", "gpt2", "gpt_neox")

_CORPUS = (
    "The quick brown fox jumps over the lazy dog. A helpful assistant answers clearly and kindly. "
    "Explain how plants grow: they need water, light and soil. Write a short poem about the sea. "
    "What is the capital of France? Paris is the capital of France. Give three tips for sleep. "
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ! ? : ; ' \" ( ) - help too. "
    "system user assistant You are a tiny test model."
)
_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a tiny test model.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer(vocab_size: int = 384, chat_template: bool = True):
    """A byte-level BPE tokenizer with ``<|im_start|>``/``<|im_end|>`` specials (eos = pad =
    ``<|im_end|>``) and, by default, a ChatML template like SmolLM2's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        padding_side="left",
    )
    if chat_template:
        fast.chat_template = _CHAT_TEMPLATE
    return fast


def _config(arch: Architecture, vocab: int, hidden: int, layers: int, heads: int, max_positions: int) -> Any:
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    ids: dict[str, Any] = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if arch == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions, **ids)
    classes = {"llama": LlamaConfig, "qwen2": Qwen2Config, "gpt_neox": GPTNeoXConfig}
    if arch not in classes:
        raise ValueError(f"architecture must be one of {TINY_ARCHITECTURES}, got {arch!r}")
    sizes: dict[str, Any] = dict(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_positions,
    )
    if arch != "gpt_neox":  # grouped-query attention in the Llama layouts
        sizes["num_key_value_heads"] = heads // 2
    return classes[arch](**sizes, **ids)


def tiny_model(
    arch: Architecture = "llama",
    *,
    hidden: int = 64,
    layers: int = 4,
    heads: int = 4,
    max_positions: int = 256,
    seed: int = 0,
    chat_template: bool = True,
    dtype: torch.dtype = torch.float32,
) -> LanguageModel:
    """A randomly initialised (seeded) tiny causal LM wrapped as a `LanguageModel`."""
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer(chat_template=chat_template)
    config = _config(arch, len(tokenizer), hidden, layers, heads, max_positions)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    model.config.name_or_path = f"tiny-{arch}"
    return prepare(model, tokenizer, name=f"tiny-{arch}")


def save_tiny_model(directory: str | os.PathLike[str], arch: Architecture = "llama", **kwargs) -> Path:
    """Build a tiny model and save it as a regular transformers directory (loadable with
    ``load_model(directory)``)."""
    lm = tiny_model(arch, **kwargs)
    path = Path(directory)
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path
