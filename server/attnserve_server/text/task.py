"""The text-generation row of the task table, and what GetModel says about a text model."""

from __future__ import annotations

from dataclasses import dataclass

from attnserve_server.loaded import Model
from attnserve_server.task import Task
from attnserve_server.text.embeddings import text_embeddings
from attnserve_server.text.explain import text_explain
from attnserve_server.text.handler import TextGenerationHandler, generation_defaults
from attnserve_server.text.loader import load_text_generation
from attnserve_server.text.metadata import TextGenerationMetadata
from attnserve_server.text.params import GenerationDefaults
from attnserve_server.text.v2 import infer_text, text_signature


@dataclass(frozen=True)
class TextGenerationInfo:
    """What a client needs to know to call a text model."""

    context_length: int
    vocab_size: int
    defaults: GenerationDefaults
    max_new_tokens_limit: int
    eos_token: str


def describe_text_model(model: Model) -> TextGenerationInfo:
    meta = model.version().section_as(TextGenerationMetadata)
    return TextGenerationInfo(
        context_length=meta.context_length,
        vocab_size=meta.vocab_size,
        defaults=generation_defaults(model),
        max_new_tokens_limit=model.max_new_tokens_limit,
        eos_token=meta.eos_token or "",
    )


TEXT_GENERATION_TASK: Task[TextGenerationHandler] = Task(
    section=TextGenerationMetadata,
    load=load_text_generation,
    handler=TextGenerationHandler.of,
    signature=text_signature,
    infer=infer_text,
    embeddings=text_embeddings,
    explain=text_explain,
    describe=describe_text_model,
)
