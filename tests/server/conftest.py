"""Fixtures for the server tests: a small byte-level BPE tokenizer and a channel to the shared tiny-gpt server.

``long_repository`` / ``long_server_address`` (a model for long generations) are in tests/conftest.py:
the client tests use them too.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from attnserve_client.pb import models_pb2_grpc, text_generation_pb2_grpc
from attnserve_server.text.tokenizer import TextTokenizer

TEXT = ("The café serves crème brûlée. Grüße aus München! 日本語のテキストです。Привет, мир! 🙂🚀 naïve façade.\n") * 30


@pytest.fixture(scope="session")
def bpe_tokenizer() -> TextTokenizer:
    """A GPT-2-style byte-level BPE tokenizer trained on multilingual text (no torch needed)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator([TEXT], trainer=trainer)
    return TextTokenizer(tokenizer)


@pytest.fixture(scope="session")
def channel(server_address: str) -> Iterator[grpc.Channel]:
    """A channel to the shared tiny-gpt server."""
    with grpc.insecure_channel(server_address) as chan:
        yield chan


@pytest.fixture(scope="session")
def text_stub(channel: grpc.Channel) -> text_generation_pb2_grpc.TextGenerationServiceStub:
    return text_generation_pb2_grpc.TextGenerationServiceStub(channel)


@pytest.fixture(scope="session")
def model_stub(channel: grpc.Channel) -> models_pb2_grpc.ModelServiceStub:
    return models_pb2_grpc.ModelServiceStub(channel)
