"""The text rows' explain engine: a GPT's causal self-attention over the prompt, or an encoder-decoder's
three kinds of attention (see ``attnserve_server.explain``). The text is tokenized as for embeddings."""

from __future__ import annotations

from typing import Any

from attnserve_server.errors import InvalidArgumentError, ModelLoadError
from attnserve_server.explain.engine import Decoding, ExplainEngine, ExplainInput
from attnserve_server.explain.limits import explain_limits
from attnserve_server.loaded import Engine
from attnserve_server.loading import extra_graph
from attnserve_server.task import LoadContext
from attnserve_server.text.embeddings import tokenize_texts
from attnserve_server.text.engine import TextEngine
from attnserve_server.text.metadata import TextGenerationMetadata
from attnserve_server.text2text.generator import check_target_tag
from attnserve_server.text2text.metadata import Text2TextGenerationMetadata


def text_explain(ctx: LoadContext, engine: Engine) -> ExplainEngine | None:
    """The version's explain engine, or None if its metadata names no explain graph."""
    meta = ctx.metadata.section
    assert isinstance(meta, TextGenerationMetadata | Text2TextGenerationMetadata) and isinstance(engine, TextEngine)
    graph = meta.explain
    if graph is None:
        return None
    seq2seq = isinstance(meta, Text2TextGenerationMetadata)
    wanted = "encoder_decoder" if seq2seq else "causal_text"
    if graph.layout != wanted:
        raise ModelLoadError(ctx.model, f"explain.layout of a {meta.TASK} model must be {wanted}, not {graph.layout}")
    tokenizer = engine.generator.tokenizer
    if isinstance(meta, Text2TextGenerationMetadata):
        limits = explain_limits(
            ctx.config, context_length=meta.source_context_length, target_context_length=meta.target_context_length
        )
        decoding = Decoding(tokenizer.decode, tokenizer.piece, meta.bos_token_id, meta.eos_token_id)
    else:
        limits = explain_limits(ctx.config, context_length=meta.context_length)
        decoding = None

    def prepare(text: Any, deadline: float | None) -> ExplainInput:
        if isinstance(meta, Text2TextGenerationMetadata):
            check_target_tag(meta, text)
        try:
            prepared = tokenize_texts(tokenizer, limits.max_tokens, [text], deadline=deadline)
        except InvalidArgumentError as exc:  # its message names texts[0]: this RPC takes one text
            raise InvalidArgumentError(str(exc).replace("texts[0]", "the text", 1)) from None
        assert prepared.token_texts is not None
        return ExplainInput(ids=prepared.rows[0], token_texts=prepared.token_texts[0])

    return ExplainEngine(
        name=ctx.model,
        version=ctx.version_dir.name,
        graph=graph,
        graph_file=extra_graph(ctx, graph.file, "explain.file", ctx.executor),
        prepare=prepare,
        executor=ctx.executor,
        limits=limits,
        decoding=decoding,
    )
