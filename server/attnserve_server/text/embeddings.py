"""The text-generation row's embeddings engine: texts are tokenized (each token keeps its text),
then run through the version's embeddings graph (see ``attnserve_server.embeddings``)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from attnserve_server.embeddings.engine import EmbeddingsEngine, PreparedInputs
from attnserve_server.embeddings.limits import embeddings_limits
from attnserve_server.errors import DeadlineExceededError, InvalidArgumentError, ModelLoadError
from attnserve_server.loaded import Engine
from attnserve_server.loading import extra_graph
from attnserve_server.task import LoadContext
from attnserve_server.text.engine import TextEngine
from attnserve_server.text.metadata import TextGenerationMetadata
from attnserve_server.text.tokenizer import TextTokenizer
from attnserve_server.text2text.metadata import Text2TextGenerationMetadata
from attnserve_server.vision.loader import batching_config


def tokenize_texts(
    tokenizer: TextTokenizer,
    max_tokens: int,
    texts: Sequence[str],
    stop: threading.Event | None = None,
    deadline: float | None = None,
) -> PreparedInputs:
    """Each text's ids and token texts (blocking); InvalidArgumentError names the first bad text.

    A text longer in bytes than ``max_tokens`` of the longest token is refused before it is
    tokenized: it cannot fit, and tokenizing it would cost time for nothing.
    """
    max_bytes = max_tokens * tokenizer.max_token_bytes
    rows = np.empty(len(texts), dtype=object)
    token_texts = []
    for index, text in enumerate(texts):
        if stop is not None and stop.is_set():
            raise asyncio.CancelledError
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceededError(f"the deadline passed while tokenizing text {index}")
        if len(text) > max_bytes or len(text.encode("utf-8")) > max_bytes:
            raise InvalidArgumentError(
                f"texts[{index}] is longer than {max_tokens} tokens can be (the limit per text); shorten it"
            )
        ids, pieces = tokenizer.encode_with_texts(text)
        if not ids:
            raise InvalidArgumentError(f"texts[{index}] is empty (it has no tokens); send some text")
        if len(ids) > max_tokens:
            raise InvalidArgumentError(
                f"texts[{index}] is {len(ids)} tokens, over the limit of {max_tokens} tokens per text; shorten it"
            )
        rows[index] = np.asarray(ids, dtype=np.int64)
        token_texts.append(tuple(pieces))
    return PreparedInputs(rows=rows, token_texts=tuple(token_texts))


def text_embeddings(ctx: LoadContext, engine: Engine) -> EmbeddingsEngine | None:
    """The version's embeddings engine, or None if its metadata names no embeddings graph."""
    meta = ctx.metadata.section
    # A GPT's, or an encoder-decoder's (whose graph is its encoder): the rows' loaders built a TextEngine.
    assert isinstance(meta, TextGenerationMetadata | Text2TextGenerationMetadata) and isinstance(engine, TextEngine)
    context_length = meta.context_length if isinstance(meta, TextGenerationMetadata) else meta.source_context_length
    graph = meta.embeddings
    if graph is None:
        return None
    if not graph.is_text:
        raise ModelLoadError(ctx.model, "embeddings.input_names of a text model must be input_ids and attention_mask")
    tokenizer = engine.generator.tokenizer
    limits = embeddings_limits(ctx.config, context_length=context_length)

    def prepare(texts: Sequence[Any], stop: threading.Event, deadline: float | None) -> PreparedInputs:
        return tokenize_texts(tokenizer, limits.max_tokens_per_text, texts, stop, deadline)

    return EmbeddingsEngine(
        name=ctx.model,
        version=ctx.version_dir.name,
        graph=graph,
        graph_file=extra_graph(ctx, graph.file, "embeddings.file", ctx.executor),
        prepare=prepare,
        prepare_executor=ctx.executor,
        batching=batching_config(ctx.settings, None),
        limits=limits,
        pad_id=meta.pad_token_id,
    )
