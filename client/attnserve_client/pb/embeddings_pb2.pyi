from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Pooling(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POOLING_UNSPECIFIED: _ClassVar[Pooling]
    POOLING_MEAN: _ClassVar[Pooling]
    POOLING_LAST: _ClassVar[Pooling]
    POOLING_CLS: _ClassVar[Pooling]
    POOLING_NONE: _ClassVar[Pooling]
POOLING_UNSPECIFIED: Pooling
POOLING_MEAN: Pooling
POOLING_LAST: Pooling
POOLING_CLS: Pooling
POOLING_NONE: Pooling

class EmbedRequest(_message.Message):
    __slots__ = ("model", "texts", "images", "pooling", "layer", "normalize", "model_version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    pooling: Pooling
    layer: int
    normalize: bool
    model_version: str
    def __init__(self, model: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., images: _Optional[_Iterable[bytes]] = ..., pooling: _Optional[_Union[Pooling, str]] = ..., layer: _Optional[int] = ..., normalize: _Optional[bool] = ..., model_version: _Optional[str] = ...) -> None: ...

class TokenEmbedding(_message.Message):
    __slots__ = ("text", "vector")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    text: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, text: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ...) -> None: ...

class InputEmbedding(_message.Message):
    __slots__ = ("vector", "tokens")
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    vector: _containers.RepeatedScalarFieldContainer[float]
    tokens: _containers.RepeatedCompositeFieldContainer[TokenEmbedding]
    def __init__(self, vector: _Optional[_Iterable[float]] = ..., tokens: _Optional[_Iterable[_Union[TokenEmbedding, _Mapping]]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("model", "model_version", "pooling", "layer", "dim", "embeddings", "token_wise")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_WISE_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    pooling: Pooling
    layer: int
    dim: int
    embeddings: _containers.RepeatedCompositeFieldContainer[InputEmbedding]
    token_wise: bool
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., pooling: _Optional[_Union[Pooling, str]] = ..., layer: _Optional[int] = ..., dim: _Optional[int] = ..., embeddings: _Optional[_Iterable[_Union[InputEmbedding, _Mapping]]] = ..., token_wise: _Optional[bool] = ...) -> None: ...
