"""Byte-level BPE tokenizers, trained with Hugging Face ``tokenizers``.

The layout is GPT-2's (ByteLevel pre-tokenizer, ByteLevel decoder, ``<|endoftext|>``),
so the saved ``tokenizer.json`` loads with ``tokenizers.Tokenizer.from_file`` in the
server, and an existing GPT-2 ``tokenizer.json`` can be used in its place.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

EOS_TOKEN = "<|endoftext|>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE tokenizer on ``texts``.

    Every byte is in the initial alphabet, so any string (including non-ASCII text)
    encodes without unknown tokens and decodes back exactly.

    Args:
        texts: documents (or chunks of them) to learn merges from.
        vocab_size: total vocabulary size, including the 256 bytes and ``<|endoftext|>``.

    Returns:
        The trained tokenizer; ``<|endoftext|>`` is the last id.
    """
    if vocab_size < 257:
        raise ValueError(f"vocab_size must be at least 257 (256 bytes + {EOS_TOKEN}), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # trim_offsets=False: offsets only; the ids are those of the pre-tokenizer, as in GPT-2's file.
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # the special token is added after the merges, as the last id
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.add_special_tokens([EOS_TOKEN])
    return tokenizer


def load_tokenizer(path: Path) -> Tokenizer:
    """Load a ``tokenizer.json`` (ours or GPT-2's)."""
    return Tokenizer.from_file(str(path))


def eos_token_id(tokenizer: Tokenizer) -> int | None:
    """The id of ``<|endoftext|>``, or None when the tokenizer has none."""
    token_id: int | None = tokenizer.token_to_id(EOS_TOKEN)
    return token_id
