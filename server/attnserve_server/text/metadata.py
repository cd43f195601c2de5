"""The ``text_generation`` section of ``metadata.json`` (a decoder-only model with a KV cache)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from attnserve_server.model_format.embeddings import EmbeddingsGraph
from attnserve_server.model_format.explain import ExplainGraph
from attnserve_server.model_format.metadata import Strict, TaskSection

TEXT_GENERATION = "text-generation"
KVCacheLayout = Literal["concat", "shared_buffer"]


class InputNames(Strict):
    """ONNX input names of a text-generation model (which ones depend on ``kv_cache_layout``)."""

    input_ids: str
    position_ids: str
    attention_mask: str | None = None  # kv_cache_layout "concat"
    seqlens_k: str | None = None  # kv_cache_layout "shared_buffer"
    total_sequence_length: str | None = None  # kv_cache_layout "shared_buffer"


class OutputNames(Strict):
    """ONNX output names of a text-generation model."""

    logits: str


class DefaultsMetadata(Strict):
    """Defaults that unset request fields take."""

    max_new_tokens: PositiveInt = 64
    temperature: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    top_k: NonNegativeInt = 0
    top_p: float = Field(default=1.0, gt=0, le=1)
    repetition_penalty: float = Field(default=1.0, gt=0, allow_inf_nan=False)


class TextGenerationMetadata(TaskSection):
    """The ``text_generation`` section."""

    TASK: ClassVar[str] = TEXT_GENERATION

    tokenizer_file: str
    context_length: PositiveInt
    vocab_size: PositiveInt
    num_layers: PositiveInt
    num_heads: PositiveInt
    head_dim: PositiveInt
    inputs: InputNames
    outputs: OutputNames
    past_key_template: str = Field(pattern=r"\{layer\}")
    past_value_template: str = Field(pattern=r"\{layer\}")
    present_key_template: str = Field(pattern=r"\{layer\}")
    present_value_template: str = Field(pattern=r"\{layer\}")
    eos_token: str | None = None
    eos_token_id: NonNegativeInt | None = None
    pad_token_id: NonNegativeInt
    kv_cache_layout: KVCacheLayout = "concat"
    defaults: DefaultsMetadata = DefaultsMetadata()
    # A Jinja chat template that came with an imported checkpoint (tokenizer_config.json), kept for
    # clients that format conversations; the server does not apply it. Unset: not written.
    chat_template: str | None = None
    # The graph that exposes hidden states for the Embed RPC (model_format.embeddings); unset: none.
    embeddings: EmbeddingsGraph | None = None
    # The graph that returns attention probabilities for the Explain RPC (model_format.explain); unset: none.
    explain: ExplainGraph | None = None

    @model_validator(mode="after")
    def _inputs_of_layout(self) -> TextGenerationMetadata:
        needed = ("attention_mask",) if self.kv_cache_layout == "concat" else ("seqlens_k", "total_sequence_length")
        missing = [name for name in needed if getattr(self.inputs, name) is None]
        if missing:
            raise ValueError(f"kv_cache_layout {self.kv_cache_layout} needs inputs.{', inputs.'.join(missing)}")
        return self
