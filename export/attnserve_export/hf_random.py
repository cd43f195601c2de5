"""Random-weight Hugging Face folders, written with transformers' own ``save_pretrained``.

For the import's tests and the benchmarks: nothing is downloaded, so a "GPT-2" here is
``GPT2LMHeadModel`` at the requested shape with random weights, and its tokenizer is a synthetic
byte-level BPE in GPT-2's file layout (``vocab.json`` + ``merges.txt``: the 256 byte symbols in
GPT-2's order, merges of two symbols, ``<|endoftext|>`` last), so the real ``gpt2`` shape has the
real 50,257-token vocabulary. Needs transformers (a test dependency).
"""

from __future__ import annotations

import itertools
import json
import string
from pathlib import Path
from typing import Any

import torch

from attnserve_export.hf_check import transformers_module
from attnserve_export.hf_text import load_gpt2_tokenizer

EOS = "<|endoftext|>"


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in its vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {b: chr(b) for b in printable}
    extra = (b for b in range(256) if b not in symbols)
    for n, b in enumerate(extra):
        symbols[b] = chr(256 + n)
    return [symbols[b] for b in printable] + [symbols[b] for b in range(256) if b not in printable]


def write_gpt2_vocab(folder: Path, vocab_size: int) -> None:
    """``vocab.json`` and ``merges.txt`` with ``vocab_size`` ids (at least 257): frequent pairs merge first."""
    if not 257 <= vocab_size <= 257 + 256 * 256:
        raise ValueError(f"vocab_size must be between 257 and {257 + 256 * 256}")
    symbols = byte_symbols()
    # "Ġ" is GPT-2's symbol of the space byte.
    common = ["Ġ", *string.ascii_lowercase, *string.ascii_uppercase, *string.digits, *string.punctuation]
    order = common + [s for s in symbols if s not in common]
    rank = {s: i for i, s in enumerate(order)}
    pairs = sorted(itertools.product(order, repeat=2), key=lambda p: (rank[p[0]] + rank[p[1]], rank[p[0]]))
    merges = pairs[: vocab_size - 257]
    vocab = {s: i for i, s in enumerate(symbols)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab[EOS] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def random_gpt2(
    folder: Path,
    *,
    seed: int = 0,
    tokenizer: str = "vocab",
    tokenizer_config: dict[str, Any] | None = None,
    **config: Any,
) -> Path:
    """A random ``GPT2LMHeadModel`` (``config``: GPT2Config fields) saved to ``folder`` with its tokenizer.

    ``tokenizer``: ``"vocab"`` writes vocab.json + merges.txt, ``"json"`` a tokenizer.json built from
    them (as attnserve's import builds it), ``"none"`` nothing.
    """
    transformers = transformers_module()
    vocab_size = int(config.setdefault("vocab_size", 50257))
    config.setdefault("bos_token_id", vocab_size - 1)
    config.setdefault("eos_token_id", vocab_size - 1)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    if tokenizer != "none":
        write_gpt2_vocab(folder, vocab_size)
        settings = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "eos_token": EOS}
        settings |= {"bos_token": EOS, "unk_token": EOS, "model_max_length": model.config.n_positions}
        (folder / "tokenizer_config.json").write_text(json.dumps(settings | (tokenizer_config or {}), indent=2))
    if tokenizer == "json":
        built, _ = load_gpt2_tokenizer(folder)
        built.save(str(folder / "tokenizer.json"))
        (folder / "vocab.json").unlink()
        (folder / "merges.txt").unlink()
    return folder


def _labels(count: int) -> dict[int, str]:
    return {i: f"class-{i:03d}" for i in range(count)}


def random_image_classifier(
    folder: Path,
    family: str,
    *,
    seed: int = 0,
    num_labels: int = 10,
    processor: dict[str, Any] | None = None,
    processor_class: str = "ViTImageProcessorPil",
    max_shard_size: str | None = None,
    **config: Any,
) -> Path:
    """A random ``ViTForImageClassification`` or ``SwinForImageClassification`` (``family`` "vit"/"swin")
    saved to ``folder`` with ``preprocessor_config.json`` (``processor``: the image processor's settings)."""
    transformers = transformers_module()
    labels = _labels(num_labels)
    names = {"vit": ("ViTConfig", "ViTForImageClassification"), "swin": ("SwinConfig", "SwinForImageClassification")}
    config_class, model_class = names[family]
    label2id = {v: k for k, v in labels.items()}
    hf_config = getattr(transformers, config_class)(id2label=labels, label2id=label2id, **config)
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(hf_config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(folder), **kwargs)
    getattr(transformers, processor_class)(**(processor or {})).save_pretrained(str(folder))
    return folder
