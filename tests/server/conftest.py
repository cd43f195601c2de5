"""Fixtures for the server tests: a small byte-level BPE tokenizer, and a model for long generations."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from attnserve_client.pb import models_pb2_grpc, text_generation_pb2_grpc
from attnserve_server.text.tokenizer import TextTokenizer

TEXT = ("The café serves crème brûlée. Grüße aus München! 日本語のテキストです。Привет, мир! 🙂🚀 naïve façade.\n") * 30

LONG_MODEL = "long-gpt"


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
def long_repository(tmp_path_factory: pytest.TempPathFactory, export_text_model: Callable[..., Path]) -> Path:
    """A repository with ``long-gpt``: a 1024-token context, slow enough (a few ms per token) that a full
    1000-token generation takes seconds, so cancellation has something to stop."""
    root = tmp_path_factory.mktemp("long-models")
    export_text_model(
        root, LONG_MODEL, max_new_tokens_limit=1000, context_length=1024, num_layers=4, num_heads=4, dim=256
    )
    return root


@pytest.fixture(scope="session")
def long_server_address(long_repository: Path, session_server_launcher: Callable[..., Any]) -> str:
    """A server for ``long_repository``, separate from ``server_address``."""
    return str(session_server_launcher(long_repository).address)


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
