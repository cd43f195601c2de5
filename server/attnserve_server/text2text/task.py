"""The text2text-generation row of the task table, and what GetModel says about such a model.

Requests go through the text-generation handler (the same Generate RPCs, parameters, streaming
and v2 generate convention); only loading and the description differ.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnserve_server.loaded import Model
from attnserve_server.task import Task
from attnserve_server.text.embeddings import text_embeddings
from attnserve_server.text.explain import text_explain
from attnserve_server.text.handler import TextGenerationHandler, generation_defaults
from attnserve_server.text.params import GenerationDefaults
from attnserve_server.text.v2 import infer_text, text_signature
from attnserve_server.text2text.loader import load_text2text_generation
from attnserve_server.text2text.metadata import Text2TextGenerationMetadata


@dataclass(frozen=True)
class Text2TextGenerationInfo:
    """What a client needs to know to call an encoder–decoder."""

    source_context_length: int
    target_context_length: int
    vocab_size: int
    defaults: GenerationDefaults
    max_new_tokens_limit: int
    target_tags: tuple[str, ...]


def describe_text2text_model(model: Model) -> Text2TextGenerationInfo:
    meta = model.version().section_as(Text2TextGenerationMetadata)
    return Text2TextGenerationInfo(
        source_context_length=meta.source_context_length,
        target_context_length=meta.target_context_length,
        vocab_size=meta.vocab_size,
        defaults=generation_defaults(model),
        max_new_tokens_limit=model.max_new_tokens_limit,
        target_tags=tuple(meta.target_tags),
    )


TEXT2TEXT_GENERATION_TASK: Task[TextGenerationHandler] = Task(
    section=Text2TextGenerationMetadata,
    load=load_text2text_generation,
    handler=TextGenerationHandler.of,
    signature=text_signature,
    infer=infer_text,
    describe=describe_text2text_model,
    embeddings=text_embeddings,  # the encoder's hidden states
    explain=text_explain,  # the encoder's, the decoder's and the cross-attention
)
