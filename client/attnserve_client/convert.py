"""Converts protobuf responses to the typed results in :mod:`attnserve_client.types`."""

from __future__ import annotations

from attnserve_client.errors import InvalidArgumentError, ModelNotFoundError, ServerError
from attnserve_client.pb import image_classification_pb2, models_pb2, text_generation_pb2
from attnserve_client.types import (
    FinishReason,
    Generation,
    GenerationChunk,
    GenerationDefaults,
    ImageClassificationInfo,
    ImageInputSpec,
    ModelCounters,
    ModelInfo,
    Prediction,
    Text2TextGenerationInfo,
    TextGenerationInfo,
    Usage,
)

__all__ = [
    "IMAGE_CLASSIFICATION",
    "TEXT2TEXT_GENERATION",
    "TEXT_GENERATION",
    "choose_model",
    "to_chunk",
    "to_generation",
    "to_model_info",
    "to_predictions",
]

TEXT_GENERATION = "text-generation"
TEXT2TEXT_GENERATION = "text2text-generation"
IMAGE_CLASSIFICATION = "image-classification"

_FINISH_REASONS = {
    text_generation_pb2.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    text_generation_pb2.FINISH_REASON_STOP: FinishReason.STOP,
    text_generation_pb2.FINISH_REASON_END_OF_TEXT: FinishReason.END_OF_TEXT,
}


def to_generation(response: text_generation_pb2.GenerateResponse, *, logprobs: bool) -> Generation:
    """The typed result of a Generate call; ``logprobs`` says whether the request asked for them."""
    finish_reason = _FINISH_REASONS.get(response.finish_reason)
    if finish_reason is None:
        raise ServerError("the server's response has no finish_reason")
    return Generation(
        text=response.text,
        finish_reason=finish_reason,
        usage=_to_usage(response.usage),
        token_ids=tuple(response.token_ids),
        logprobs=tuple(response.logprobs) if logprobs else None,
        seed=response.seed,
        model=response.model,
        model_version=response.model_version,
    )


def to_chunk(response: text_generation_pb2.GenerateStreamResponse, *, logprobs: bool, first: bool) -> GenerationChunk:
    """The typed chunk of a GenerateStream message; ``first`` says whether it is the first one."""
    finish_reason = _FINISH_REASONS.get(response.finish_reason)
    return GenerationChunk(
        text=response.text,
        token_ids=tuple(response.token_ids),
        logprobs=tuple(response.logprobs) if logprobs else None,
        finish_reason=finish_reason,
        # usage is sent with the last chunk only, together with finish_reason.
        usage=_to_usage(response.usage) if finish_reason is not None else None,
        seed=response.seed if first else None,
        model=response.model,
        model_version=response.model_version,
    )


def to_model_info(info: models_pb2.ModelInfo) -> ModelInfo:
    """The typed description of a served model."""
    text_generation = None
    if info.WhichOneof("task_info") == "text_generation":
        tg = info.text_generation
        text_generation = TextGenerationInfo(
            context_length=tg.context_length,
            vocab_size=tg.vocab_size,
            defaults=_defaults(tg.defaults),
            max_new_tokens_limit=tg.max_new_tokens_limit,
            eos_token=tg.eos_token or None,
        )
    text2text_generation = None
    if info.WhichOneof("task_info") == "text2text_generation":
        t2t = info.text2text_generation
        text2text_generation = Text2TextGenerationInfo(
            source_context_length=t2t.source_context_length,
            target_context_length=t2t.target_context_length,
            vocab_size=t2t.vocab_size,
            defaults=_defaults(t2t.defaults),
            max_new_tokens_limit=t2t.max_new_tokens_limit,
            target_tags=tuple(t2t.target_tags),
        )
    image_classification = None
    if info.WhichOneof("task_info") == "image_classification":
        ic = info.image_classification
        image_classification = ImageClassificationInfo(
            labels=tuple(ic.labels),
            input=ImageInputSpec(
                channels=ic.input.channels,
                height=ic.input.height,
                width=ic.input.width,
                resample=ic.input.resample,
                resize_policy=ic.input.resize_policy,
                mean=tuple(ic.input.mean),
                std=tuple(ic.input.std),
            ),
            max_images_per_request=ic.max_images_per_request,
        )
    return ModelInfo(
        name=info.name,
        task=info.task,
        versions=tuple(info.versions),
        default_version=info.default_version,
        description=info.description,
        counters=ModelCounters(
            requests=info.counters.requests,
            tokens_generated=info.counters.tokens_generated,
            failures=info.counters.failures,
            batches=info.counters.batches,
            batched_items=info.counters.batched_items,
        ),
        text_generation=text_generation,
        image_classification=image_classification,
        state=info.state,
        state_reason=info.state_reason,
        text2text_generation=text2text_generation,
    )


def _defaults(d: models_pb2.GenerationDefaults) -> GenerationDefaults:
    return GenerationDefaults(
        max_new_tokens=d.max_new_tokens,
        temperature=d.temperature,
        top_k=d.top_k,
        top_p=d.top_p,
        repetition_penalty=d.repetition_penalty,
    )


def to_predictions(response: image_classification_pb2.ClassifyResponse, *, images: int) -> list[list[Prediction]]:
    """One list of predictions (best first) per image of the request, which held ``images`` images."""
    if len(response.classifications) != images:
        raise ServerError(f"the server returned {len(response.classifications)} classifications for {images} images")
    return [
        [Prediction(label=p.label, index=p.index, score=p.score) for p in c.predictions]
        for c in response.classifications
    ]


def choose_model(models: list[ModelInfo], task: str | tuple[str, ...] = TEXT_GENERATION) -> str:
    """The model to use when the caller names none: the only model of ``task`` (or of any of the tasks) served.

    Raises:
        ModelNotFoundError: the server serves no model of that task.
        InvalidArgumentError: it serves several, so the caller must choose one.
    """
    tasks = (task,) if isinstance(task, str) else task
    names = sorted(m.name for m in models if m.task in tasks)
    what = " or ".join(tasks)
    if not names:
        raise ModelNotFoundError(f"the server serves no {what} model")
    if len(names) > 1:
        raise InvalidArgumentError(f"the server serves several {what} models, pass model= one of: {names}")
    return names[0]


def _to_usage(usage: text_generation_pb2.Usage) -> Usage:
    return Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
