from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "unavailable")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    unavailable: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., unavailable: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ...) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("name", "state", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GenerationDefaults(_message.Message):
    __slots__ = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    def __init__(self, max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., repetition_penalty: _Optional[float] = ...) -> None: ...

class TextGenerationInfo(_message.Message):
    __slots__ = ("context_length", "vocab_size", "defaults", "max_new_tokens_limit", "eos_token")
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    context_length: int
    vocab_size: int
    defaults: GenerationDefaults
    max_new_tokens_limit: int
    eos_token: str
    def __init__(self, context_length: _Optional[int] = ..., vocab_size: _Optional[int] = ..., defaults: _Optional[_Union[GenerationDefaults, _Mapping]] = ..., max_new_tokens_limit: _Optional[int] = ..., eos_token: _Optional[str] = ...) -> None: ...

class Text2TextGenerationInfo(_message.Message):
    __slots__ = ("source_context_length", "target_context_length", "vocab_size", "defaults", "max_new_tokens_limit", "target_tags")
    SOURCE_CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TARGET_CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    TARGET_TAGS_FIELD_NUMBER: _ClassVar[int]
    source_context_length: int
    target_context_length: int
    vocab_size: int
    defaults: GenerationDefaults
    max_new_tokens_limit: int
    target_tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, source_context_length: _Optional[int] = ..., target_context_length: _Optional[int] = ..., vocab_size: _Optional[int] = ..., defaults: _Optional[_Union[GenerationDefaults, _Mapping]] = ..., max_new_tokens_limit: _Optional[int] = ..., target_tags: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelCounters(_message.Message):
    __slots__ = ("requests", "tokens_generated", "failures", "batches", "batched_items")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    BATCHED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    requests: int
    tokens_generated: int
    failures: int
    batches: int
    batched_items: int
    def __init__(self, requests: _Optional[int] = ..., tokens_generated: _Optional[int] = ..., failures: _Optional[int] = ..., batches: _Optional[int] = ..., batched_items: _Optional[int] = ...) -> None: ...

class ImageInputSpec(_message.Message):
    __slots__ = ("channels", "height", "width", "resample", "resize_policy", "mean", "std")
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    RESAMPLE_FIELD_NUMBER: _ClassVar[int]
    RESIZE_POLICY_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    channels: int
    height: int
    width: int
    resample: str
    resize_policy: str
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, channels: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., resample: _Optional[str] = ..., resize_policy: _Optional[str] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ...) -> None: ...

class ImageClassificationInfo(_message.Message):
    __slots__ = ("labels", "input", "max_images_per_request")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGES_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedScalarFieldContainer[str]
    input: ImageInputSpec
    max_images_per_request: int
    def __init__(self, labels: _Optional[_Iterable[str]] = ..., input: _Optional[_Union[ImageInputSpec, _Mapping]] = ..., max_images_per_request: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "task", "versions", "default_version", "description", "counters", "state", "state_reason", "text_generation", "image_classification", "text2text_generation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    TEXT_GENERATION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    TEXT2TEXT_GENERATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    task: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    default_version: str
    description: str
    counters: ModelCounters
    state: str
    state_reason: str
    text_generation: TextGenerationInfo
    image_classification: ImageClassificationInfo
    text2text_generation: Text2TextGenerationInfo
    def __init__(self, name: _Optional[str] = ..., task: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., default_version: _Optional[str] = ..., description: _Optional[str] = ..., counters: _Optional[_Union[ModelCounters, _Mapping]] = ..., state: _Optional[str] = ..., state_reason: _Optional[str] = ..., text_generation: _Optional[_Union[TextGenerationInfo, _Mapping]] = ..., image_classification: _Optional[_Union[ImageClassificationInfo, _Mapping]] = ..., text2text_generation: _Optional[_Union[Text2TextGenerationInfo, _Mapping]] = ...) -> None: ...
