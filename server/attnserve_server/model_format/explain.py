"""The optional ``explain`` entry of a task section: the graph that returns attention probabilities.

The serving graphs use fused attention (``GroupQueryAttention``, SDPA), which never materializes
the probabilities. The explain graph computes attention the plain way, ``softmax(q k^T / sqrt(d) +
bias + mask)``, and returns each layer's probabilities as an output; the Explain RPC loads it
lazily, on the first request that needs it.

Layouts, by ``layout``:

- ``causal_text`` (GPT): inputs ``(input_ids, attention_mask)`` as the embeddings graph takes them;
  each ``attentions`` output is ``(B, heads, T, T)``.
- ``vit``: input ``(pixel_values,)``; each output ``(B, heads, 1 + N, 1 + N)``, the class token
  first, over the ``grid`` of patches.
- ``swin``: input ``(pixel_values,)``; each output (one per block) is the raw window attention
  ``(B * windows, heads, M*M, M*M)``, windows in row-major order after the block's cyclic shift and
  padding; ``window`` says where they lie.
- ``encoder_decoder``: inputs ``(source_ids, source_mask, target_ids)`` (target without padding);
  ``attentions`` are the encoder's ``(B, heads, S, S)``, ``decoder_attentions`` the decoder's
  ``(B, heads, U, U)``, ``cross_attentions`` ``(B, heads, U, S)``, and ``logits`` ``(B, U, vocab)``
  lets the server decode greedily without the serving graphs.

The graph may also return the hidden states (``hidden_states``, named as the embeddings entry
names them): a version can then name this one file as both its explain and its embeddings graph.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from attnserve_server.model_format.metadata import Strict

EXPLAIN_FILE = "explain.onnx"
Layout = Literal["causal_text", "vit", "swin", "encoder_decoder"]
INPUTS_PER_LAYOUT: dict[str, int] = {"causal_text": 2, "vit": 1, "swin": 1, "encoder_decoder": 3}


class WindowGeometry(Strict):
    """Where a Swin block's windows lie on its stage's token grid (see ``attnserve_export.swin``)."""

    # The stage's token grid.
    height: PositiveInt
    width: PositiveInt
    window_size: PositiveInt
    # The cyclic shift, in tokens (0: plain windows).
    shift: NonNegativeInt = 0
    # transformers' order: pad to whole windows, then shift (the default shifts, then pads).
    pad_before_shift: bool = False

    @property
    def padded(self) -> tuple[int, int]:
        m = self.window_size
        return -(-self.height // m) * m, -(-self.width // m) * m


class AttentionLayer(Strict):
    """One layer's (or one Swin block's) attention probabilities: an output of the graph."""

    output: str
    heads: PositiveInt
    # Swin: the stage this block belongs to and its block within the stage; 0 elsewhere.
    stage: NonNegativeInt = 0
    block: NonNegativeInt = 0
    window: WindowGeometry | None = None


class ExplainGraph(Strict):
    """Where a version's attention maps come from (``<section>.explain`` in ``metadata.json``)."""

    file: str = EXPLAIN_FILE
    layout: Layout
    input_names: tuple[str, ...] = Field(min_length=1, max_length=3)
    # Self-attention, one per layer (Swin: one per block, stages in order; encoder-decoder: the encoder's).
    attentions: tuple[AttentionLayer, ...] = Field(min_length=1)
    # Encoder-decoder only.
    decoder_attentions: tuple[AttentionLayer, ...] = ()
    cross_attentions: tuple[AttentionLayer, ...] = ()
    logits: str | None = None
    # ViT: the patch grid (H/P, W/P) and the patch size in pixels. Swin: the first stage's patch size.
    grid: tuple[PositiveInt, PositiveInt] | None = None
    patch_size: PositiveInt | None = None
    # The hidden states this graph also returns (any), named as an embeddings entry names them.
    hidden_states: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> ExplainGraph:
        if len(self.input_names) != INPUTS_PER_LAYOUT[self.layout]:
            raise ValueError(f"a {self.layout} explain graph takes {INPUTS_PER_LAYOUT[self.layout]} inputs")
        if self.layout == "vit" and (self.grid is None or self.patch_size is None):
            raise ValueError("a vit explain graph names its patch grid and patch_size")
        if self.layout == "swin":
            if self.patch_size is None or any(a.window is None for a in self.attentions):
                raise ValueError("a swin explain graph names its patch_size and every block's window")
        elif any(a.window is not None for a in self.attentions):
            raise ValueError("only swin attentions have windows")
        seq2seq = (bool(self.decoder_attentions), bool(self.cross_attentions), self.logits is not None)
        if self.layout == "encoder_decoder" and not all(seq2seq):
            raise ValueError("an encoder_decoder explain graph names decoder_attentions, cross_attentions and logits")
        if self.layout != "encoder_decoder" and any(seq2seq):
            raise ValueError("only encoder_decoder graphs have decoder or cross attentions, or logits")
        return self

    @property
    def stages(self) -> int:
        """Swin: how many stages; 1 elsewhere."""
        return max(a.stage for a in self.attentions) + 1

    def stage_blocks(self, stage: int) -> tuple[AttentionLayer, ...]:
        """Swin: the blocks of one stage, in order."""
        return tuple(a for a in self.attentions if a.stage == stage)

    def outputs(self) -> tuple[str, ...]:
        """Every output the server reads."""
        layers = (*self.attentions, *self.decoder_attentions, *self.cross_attentions)
        return (*(a.output for a in layers), *((self.logits,) if self.logits else ()))
