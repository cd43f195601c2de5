"""The ``text2text_generation`` section of ``metadata.json`` (an encoder–decoder with two graphs).

``model_file`` (the envelope's) is the decoder step; ``encoder_file`` runs once per request and
returns every decoder layer's cross-attention keys and values. The decoder's self-attention
cache has the ``shared_buffer`` layout (docs/model-repository.md).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from attnserve_server.model_format.embeddings import EmbeddingsGraph
from attnserve_server.model_format.explain import ExplainGraph
from attnserve_server.model_format.metadata import Strict, TaskSection
from attnserve_server.text.metadata import DefaultsMetadata

TEXT2TEXT_GENERATION = "text2text-generation"


class EncoderNames(Strict):
    """Tensor names of the encoder graph."""

    source_ids: str = "source_ids"
    source_mask: str = "source_mask"
    cross_key_template: str = Field(default="cross_key.{layer}", pattern=r"\{layer\}")
    cross_value_template: str = Field(default="cross_value.{layer}", pattern=r"\{layer\}")


class DecoderNames(Strict):
    """Tensor names of the decoder-step graph (it also takes the encoder's cross keys/values and mask)."""

    input_ids: str = "input_ids"
    position_ids: str = "position_ids"
    seqlens_k: str = "seqlens_k"
    total_sequence_length: str = "total_sequence_length"
    logits: str = "logits"
    past_key_template: str = Field(default="past_key_values.{layer}.key", pattern=r"\{layer\}")
    past_value_template: str = Field(default="past_key_values.{layer}.value", pattern=r"\{layer\}")
    present_key_template: str = Field(default="present.{layer}.key", pattern=r"\{layer\}")
    present_value_template: str = Field(default="present.{layer}.value", pattern=r"\{layer\}")


class Text2TextGenerationMetadata(TaskSection):
    """The ``text2text_generation`` section."""

    TASK: ClassVar[str] = TEXT2TEXT_GENERATION

    encoder_file: str
    tokenizer_file: str
    source_context_length: PositiveInt
    target_context_length: PositiveInt
    vocab_size: PositiveInt
    num_decoder_layers: PositiveInt
    num_heads: PositiveInt
    head_dim: PositiveInt
    encoder: EncoderNames = EncoderNames()
    decoder: DecoderNames = DecoderNames()
    bos_token_id: NonNegativeInt
    eos_token_id: NonNegativeInt
    pad_token_id: NonNegativeInt
    # Tags a source must start with to pick the output language, e.g. "<2en>"; empty: no tag needed.
    target_tags: list[str] = Field(default_factory=list)
    defaults: DefaultsMetadata = DefaultsMetadata()
    # The encoder's hidden states for the Embed RPC (model_format.embeddings); unset: none.
    embeddings: EmbeddingsGraph | None = None
    # The graph that returns attention probabilities for the Explain RPC (model_format.explain); unset: none.
    explain: ExplainGraph | None = None

    @model_validator(mode="after")
    def _ids_in_vocabulary(self) -> Text2TextGenerationMetadata:
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(self, name) >= self.vocab_size:
                raise ValueError(
                    f"{name} {getattr(self, name)} is outside the vocabulary (vocab_size {self.vocab_size})"
                )
        return self
