from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExplainRequest(_message.Message):
    __slots__ = ("model", "model_version", "text", "image", "layers", "heads", "stage", "query_row", "query_col", "max_new_tokens")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    QUERY_ROW_FIELD_NUMBER: _ClassVar[int]
    QUERY_COL_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    text: str
    image: bytes
    layers: _containers.RepeatedScalarFieldContainer[int]
    heads: _containers.RepeatedScalarFieldContainer[int]
    stage: int
    query_row: int
    query_col: int
    max_new_tokens: int
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., text: _Optional[str] = ..., image: _Optional[bytes] = ..., layers: _Optional[_Iterable[int]] = ..., heads: _Optional[_Iterable[int]] = ..., stage: _Optional[int] = ..., query_row: _Optional[int] = ..., query_col: _Optional[int] = ..., max_new_tokens: _Optional[int] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("shape", "values")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class TextAttention(_message.Message):
    __slots__ = ("tokens", "attention")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    attention: Tensor
    def __init__(self, tokens: _Optional[_Iterable[str]] = ..., attention: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class Text2TextAttention(_message.Message):
    __slots__ = ("source_tokens", "target_tokens", "generated_tokens", "output_text", "encoder_attention", "decoder_attention", "cross_attention")
    SOURCE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TARGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TEXT_FIELD_NUMBER: _ClassVar[int]
    ENCODER_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    DECODER_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    CROSS_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    source_tokens: _containers.RepeatedScalarFieldContainer[str]
    target_tokens: _containers.RepeatedScalarFieldContainer[str]
    generated_tokens: _containers.RepeatedScalarFieldContainer[str]
    output_text: str
    encoder_attention: Tensor
    decoder_attention: Tensor
    cross_attention: Tensor
    def __init__(self, source_tokens: _Optional[_Iterable[str]] = ..., target_tokens: _Optional[_Iterable[str]] = ..., generated_tokens: _Optional[_Iterable[str]] = ..., output_text: _Optional[str] = ..., encoder_attention: _Optional[_Union[Tensor, _Mapping]] = ..., decoder_attention: _Optional[_Union[Tensor, _Mapping]] = ..., cross_attention: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class VitAttention(_message.Message):
    __slots__ = ("grid_height", "grid_width", "patch_size", "class_attention", "rollout")
    GRID_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    GRID_WIDTH_FIELD_NUMBER: _ClassVar[int]
    PATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    CLASS_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    grid_height: int
    grid_width: int
    patch_size: int
    class_attention: Tensor
    rollout: Tensor
    def __init__(self, grid_height: _Optional[int] = ..., grid_width: _Optional[int] = ..., patch_size: _Optional[int] = ..., class_attention: _Optional[_Union[Tensor, _Mapping]] = ..., rollout: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class SwinWindow(_message.Message):
    __slots__ = ("block", "shift", "window_size", "window_row", "window_col", "patches")
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    SHIFT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SIZE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ROW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_COL_FIELD_NUMBER: _ClassVar[int]
    PATCHES_FIELD_NUMBER: _ClassVar[int]
    block: int
    shift: int
    window_size: int
    window_row: int
    window_col: int
    patches: int
    def __init__(self, block: _Optional[int] = ..., shift: _Optional[int] = ..., window_size: _Optional[int] = ..., window_row: _Optional[int] = ..., window_col: _Optional[int] = ..., patches: _Optional[int] = ...) -> None: ...

class SwinAttention(_message.Message):
    __slots__ = ("stage", "query_row", "query_col", "grid_height", "grid_width", "cell_size", "attention", "windows")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    QUERY_ROW_FIELD_NUMBER: _ClassVar[int]
    QUERY_COL_FIELD_NUMBER: _ClassVar[int]
    GRID_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    GRID_WIDTH_FIELD_NUMBER: _ClassVar[int]
    CELL_SIZE_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    stage: int
    query_row: int
    query_col: int
    grid_height: int
    grid_width: int
    cell_size: int
    attention: Tensor
    windows: _containers.RepeatedCompositeFieldContainer[SwinWindow]
    def __init__(self, stage: _Optional[int] = ..., query_row: _Optional[int] = ..., query_col: _Optional[int] = ..., grid_height: _Optional[int] = ..., grid_width: _Optional[int] = ..., cell_size: _Optional[int] = ..., attention: _Optional[_Union[Tensor, _Mapping]] = ..., windows: _Optional[_Iterable[_Union[SwinWindow, _Mapping]]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("model", "model_version", "layers", "heads", "text", "text2text", "vit", "swin")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TEXT2TEXT_FIELD_NUMBER: _ClassVar[int]
    VIT_FIELD_NUMBER: _ClassVar[int]
    SWIN_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    layers: _containers.RepeatedScalarFieldContainer[int]
    heads: _containers.RepeatedScalarFieldContainer[int]
    text: TextAttention
    text2text: Text2TextAttention
    vit: VitAttention
    swin: SwinAttention
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., layers: _Optional[_Iterable[int]] = ..., heads: _Optional[_Iterable[int]] = ..., text: _Optional[_Union[TextAttention, _Mapping]] = ..., text2text: _Optional[_Union[Text2TextAttention, _Mapping]] = ..., vit: _Optional[_Union[VitAttention, _Mapping]] = ..., swin: _Optional[_Union[SwinAttention, _Mapping]] = ...) -> None: ...
