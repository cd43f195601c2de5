"""Protobuf <-> domain conversions. The only place besides the servicers that knows the wire types."""

from __future__ import annotations

import functools
from typing import Any

from attnserve_client.pb import image_classification_pb2, models_pb2, text_generation_pb2
from attnserve_server.handlers import ModelDescription
from attnserve_server.loaded import IndexEntry
from attnserve_server.text.handler import GenerationRequest, GenerationResult, GenerationStream
from attnserve_server.text.params import (
    FinishReason,
    GenerationChunk,
    GenerationDefaults,
    RequestedParameters,
    Usage,
)
from attnserve_server.text.task import TextGenerationInfo
from attnserve_server.text2text.task import Text2TextGenerationInfo
from attnserve_server.vision.handler import ClassificationRequest, ClassificationResult
from attnserve_server.vision.task import ImageClassificationInfo

_FINISH_REASONS = {
    FinishReason.LENGTH: text_generation_pb2.FINISH_REASON_LENGTH,
    FinishReason.STOP: text_generation_pb2.FINISH_REASON_STOP,
    FinishReason.END_OF_TEXT: text_generation_pb2.FINISH_REASON_END_OF_TEXT,
}


def parameters_from_proto(p: text_generation_pb2.GenerationParameters) -> RequestedParameters:
    """Unset ``optional`` fields become ``None`` (the model's default)."""
    return RequestedParameters(
        max_new_tokens=p.max_new_tokens if p.HasField("max_new_tokens") else None,
        temperature=p.temperature if p.HasField("temperature") else None,
        top_k=p.top_k if p.HasField("top_k") else None,
        top_p=p.top_p if p.HasField("top_p") else None,
        repetition_penalty=p.repetition_penalty if p.HasField("repetition_penalty") else None,
        stop=tuple(p.stop),
        seed=p.seed if p.HasField("seed") else None,
        logprobs=p.logprobs,
    )


def generation_request_from_proto(
    request: text_generation_pb2.GenerateRequest, deadline: float | None
) -> GenerationRequest:
    """A domain request from the wire request."""
    return GenerationRequest(
        model=request.model,
        prompt=request.prompt,
        parameters=parameters_from_proto(request.parameters),
        model_version=request.model_version,
        deadline=deadline,
    )


def _usage(usage: Usage) -> text_generation_pb2.Usage:
    return text_generation_pb2.Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)


def generate_response(result: GenerationResult) -> text_generation_pb2.GenerateResponse:
    """The unary response."""
    return text_generation_pb2.GenerateResponse(
        model=result.model,
        model_version=result.model_version,
        text=result.text,
        token_ids=result.token_ids,
        logprobs=result.logprobs,
        finish_reason=_FINISH_REASONS[result.finish_reason],
        usage=_usage(result.usage),
        seed=result.seed,
    )


def stream_chunk(
    stream: GenerationStream, chunk: GenerationChunk, *, first: bool
) -> text_generation_pb2.GenerateStreamResponse:
    """One streamed chunk; the seed goes on the first, finish reason and usage on the last."""
    out = text_generation_pb2.GenerateStreamResponse(
        text=chunk.text,
        token_ids=chunk.token_ids,
        logprobs=chunk.logprobs,
        model=stream.model,
        model_version=stream.model_version,
    )
    if first:
        out.seed = stream.seed
    if chunk.finish_reason is not None:
        out.finish_reason = _FINISH_REASONS[chunk.finish_reason]
    if chunk.usage is not None:
        out.usage.CopyFrom(_usage(chunk.usage))
    return out


def model_info(description: ModelDescription) -> models_pb2.ModelInfo:
    """Everything a client needs to use a model, plus its live counters and load state."""
    model, state = description.model, description.state
    default = model.version()
    batches = model.batch_stats()
    info = models_pb2.ModelInfo(
        state=state.state,
        state_reason=state.reason,
        name=model.name,
        task=model.task,
        versions=list(model.versions),
        default_version=model.default_version,
        description=default.metadata.description,
        counters=models_pb2.ModelCounters(
            requests=model.counters.requests,
            tokens_generated=model.counters.tokens_generated,
            failures=model.counters.failures,
            batches=batches.batches,
            batched_items=batches.items,
        ),
    )
    _set_task_info(description.task_info, info)
    return info


@functools.singledispatch
def _set_task_info(task_info: Any, info: models_pb2.ModelInfo) -> None:
    """A task whose description the typed API has no message for: only the common fields go out."""


def _defaults(d: GenerationDefaults) -> models_pb2.GenerationDefaults:
    return models_pb2.GenerationDefaults(
        max_new_tokens=d.max_new_tokens,
        temperature=d.temperature,
        top_k=d.top_k,
        top_p=d.top_p,
        repetition_penalty=d.repetition_penalty,
    )


@_set_task_info.register
def _(task_info: TextGenerationInfo, info: models_pb2.ModelInfo) -> None:
    info.text_generation.CopyFrom(
        models_pb2.TextGenerationInfo(
            context_length=task_info.context_length,
            vocab_size=task_info.vocab_size,
            defaults=_defaults(task_info.defaults),
            max_new_tokens_limit=task_info.max_new_tokens_limit,
            eos_token=task_info.eos_token,
        )
    )


@_set_task_info.register
def _(task_info: Text2TextGenerationInfo, info: models_pb2.ModelInfo) -> None:
    info.text2text_generation.CopyFrom(
        models_pb2.Text2TextGenerationInfo(
            source_context_length=task_info.source_context_length,
            target_context_length=task_info.target_context_length,
            vocab_size=task_info.vocab_size,
            defaults=_defaults(task_info.defaults),
            max_new_tokens_limit=task_info.max_new_tokens_limit,
            target_tags=task_info.target_tags,
        )
    )


@_set_task_info.register
def _(task_info: ImageClassificationInfo, info: models_pb2.ModelInfo) -> None:
    spec = task_info.input
    info.image_classification.CopyFrom(
        models_pb2.ImageClassificationInfo(
            labels=task_info.labels,
            input=models_pb2.ImageInputSpec(
                channels=spec.channels,
                height=spec.height,
                width=spec.width,
                resample=spec.resample,
                resize_policy=spec.resize_policy,
                mean=spec.mean,
                std=spec.std,
            ),
            max_images_per_request=task_info.max_images_per_request,
        )
    )


def model_status(entry: IndexEntry) -> models_pb2.ModelStatus:
    """A model that does not serve: its state and why."""
    return models_pb2.ModelStatus(name=entry.name, state=entry.state, reason=entry.reason)


def classification_request_from_proto(
    request: image_classification_pb2.ClassifyRequest, deadline: float | None = None
) -> ClassificationRequest:
    """A domain request from the wire request; an unset top_k stays None (the default)."""
    return ClassificationRequest(
        model=request.model,
        images=tuple(request.images),
        top_k=request.top_k if request.HasField("top_k") else None,
        model_version=request.model_version,
        deadline=deadline,
    )


def classify_response(result: ClassificationResult) -> image_classification_pb2.ClassifyResponse:
    """The wire response: one Classification per image, predictions best first."""
    return image_classification_pb2.ClassifyResponse(
        model=result.model,
        model_version=result.model_version,
        classifications=[
            image_classification_pb2.Classification(
                predictions=[
                    image_classification_pb2.Prediction(label=p.label, index=p.index, score=p.score) for p in row
                ]
            )
            for row in result.classifications
        ],
    )
