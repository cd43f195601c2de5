"""The two ONNX graphs of a :class:`~attnserve_export.seq2seq.Seq2Seq`: the encoder, and one decoder step.

The encoder graph runs once per request. It returns, for every decoder layer, the
cross-attention keys and values of the source (``cross_key.{i}``, ``cross_value.{i}``,
each ``(batch, heads, source_len, head_dim)``), so that no decode step ever projects the
source again.

The decoder step takes those, the source's padding mask, and a self-attention KV cache in
the GPT's ``shared_buffer`` layout (``onnx_gqa``): one preallocated ``(batch, heads,
capacity, head_dim)`` buffer per layer, bound as both past and present and written in
place by ONNX Runtime's ``GroupQueryAttention`` at each sequence's own length. Every
target starts with ``<s>``, so a decoder never needs left padding: sequences at different
positions step together. Cross-attention is plain ``MatMul`` → ``Softmax`` → ``MatMul`` over
the precomputed keys and values, with padding keys pushed to -1e9.

Linear layers are ``MatMul(x, W.T) + b`` with ``W.T`` stored as ``<name>.weight_t``, as in
``onnx_gqa``, so ``quantize_dynamic`` can quantize them; the self-attention's query and
key/value projections are fused into one ``(C, 3C)`` MatMul because the operator takes
``q | k | v`` packed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from attnserve_export.onnx_gqa import (
    HEAD_DIM_MULTIPLE,
    MS_DOMAIN,
    OPSET,
    SEQLENS_K,
    TOTAL_SEQUENCE_LENGTH,
    TRANSPOSED_SUFFIX,
    GraphBuilder,
)
from attnserve_export.seq2seq import Seq2Seq

SOURCE_IDS, SOURCE_MASK = "source_ids", "source_mask"
INPUT_IDS, POSITION_IDS, LOGITS = "input_ids", "position_ids", "logits"
CROSS_KEY, CROSS_VALUE = "cross_key.{layer}", "cross_value.{layer}"
PAST_KEY, PAST_VALUE = "past_key_values.{layer}.key", "past_key_values.{layer}.value"
PRESENT_KEY, PRESENT_VALUE = "present.{layer}.key", "present.{layer}.value"
ENCODER_OUTPUT = "encoder_output"  # the "recomputed" baseline's input: the encoder's last hidden states
CrossAttention = Literal["cached", "mha", "recomputed"]
MASKED = -1e9  # added to the scores of padding keys: exp() underflows to exactly 0


def supports_export(model: Seq2Seq) -> bool:
    """Whether ONNX Runtime's GroupQueryAttention kernel can run this model's heads."""
    return model.config.head_dim % HEAD_DIM_MULTIPLE == 0


class _Seq2SeqGraph:
    """Shared pieces of the two graphs: parameters by PyTorch name, linear layers, norms, embeddings."""

    def __init__(self, model: Seq2Seq) -> None:
        self.cfg = model.config
        self.state = dict(model.state_dict())
        self.g = GraphBuilder()
        c = self.cfg.dim
        self.rows_shape = self.g.const("rows_shape", np.asarray([-1, c], dtype=np.int64))

    def param(self, name: str) -> str:
        if not any(init.name == name for init in self.g.initializers):
            self.g.param(name, self.state[name])
        return name

    def linear(self, x: str, prefix: str) -> str:
        weight_t = self.g.param(f"{prefix}.weight{TRANSPOSED_SUFFIX}", self.state[f"{prefix}.weight"].t())
        y = self.g.one("MatMul", [x, weight_t], prefix)
        return self.g.one("Add", [y, self.param(f"{prefix}.bias")], f"{prefix}.bias_add")

    def fused_qkv(self, x: str, prefix: str) -> str:
        """``[q | k | v]`` of a self-attention in one MatMul: ``(N, 3C)``."""
        weight = torch.cat([self.state[f"{prefix}.q.weight"], self.state[f"{prefix}.kv.weight"]], dim=0)
        bias = torch.cat([self.state[f"{prefix}.q.bias"], self.state[f"{prefix}.kv.bias"]], dim=0)
        y = self.g.one("MatMul", [x, self.g.param(f"{prefix}.qkv.weight{TRANSPOSED_SUFFIX}", weight.t())], prefix)
        return self.g.one("Add", [y, self.g.param(f"{prefix}.qkv.bias", bias)], f"{prefix}.qkv_bias")

    def layer_norm(self, x: str, prefix: str) -> str:
        inputs = [x, self.param(f"{prefix}.weight"), self.param(f"{prefix}.bias")]
        return self.g.one("LayerNormalization", inputs, prefix, axis=-1, epsilon=self.cfg.ln_eps)

    def residual(self, x: str, prefix: str, sublayer: object) -> str:
        """Post-LN ``LN(x + f(x))`` or pre-LN ``x + f(LN(x))``; ``sublayer`` maps a tensor name to one."""
        assert callable(sublayer)
        if self.cfg.norm == "pre":
            return self.g.one("Add", [x, sublayer(self.layer_norm(x, f"{prefix}.ln"))], f"{prefix}.add")
        return self.layer_norm(self.g.one("Add", [x, sublayer(x)], f"{prefix}.add"), f"{prefix}.ln")

    def feed_forward(self, x: str, prefix: str) -> str:
        return self.linear(self.g.one("Relu", [self.linear(x, f"{prefix}.fc")], f"{prefix}.relu"), f"{prefix}.proj")

    def embed(self, ids: str, positions: str) -> str:
        """``(N, C)`` rows: token embedding × √d_model plus additive positions (none for rotary)."""
        g, c = self.g, self.cfg.dim
        x = g.one("Gather", [self.param("embed.weight"), ids], "tok_emb")  # (B, T, C)
        x = g.one("Mul", [x, g.const("sqrt_dim", np.asarray(math.sqrt(c), dtype=np.float32))], "scaled_emb")
        longest = max(self.cfg.source_context, self.cfg.target_context)
        clipped = g.one(
            "Clip",
            [
                positions,
                g.const("pos_min", np.asarray(0, np.int64)),
                g.const("pos_max", np.asarray(longest - 1, np.int64)),
            ],
            "positions",
        )
        if self.cfg.pos_encoding == "learned":
            x = g.one("Add", [x, g.one("Gather", [self.param("pos.weight"), clipped], "pos_emb")], "emb")
        elif self.cfg.pos_encoding == "sinusoidal":
            half = c // 2
            freqs = np.exp(np.arange(half, dtype=np.float32) * (-math.log(10000.0) / half)).astype(np.float32)
            pos = g.one(
                "Unsqueeze",
                [g.one("Cast", [clipped], "pos_f", to=TensorProto.FLOAT), g.const("ax", np.asarray([-1]))],
                "pos_u",
            )
            angles = g.one("Mul", [pos, g.const("freqs", freqs)], "angles")  # (B, T, C/2)
            sincos = g.one("Concat", [g.one("Sin", [angles], "sin"), g.one("Cos", [angles], "cos")], "sincos", axis=-1)
            x = g.one("Add", [x, sincos], "emb")
        return g.one("Reshape", [x, self.rows_shape], "rows")  # (N, C)

    def heads(self, x: str, batch_seq_shape: str, hint: str) -> str:
        """``(N, C)`` rows → ``(B, nh, T, hs)``."""
        g = self.g
        shape = g.one(
            "Concat",
            [batch_seq_shape, g.const("nh_hs", np.asarray([self.cfg.num_heads, self.cfg.head_dim], np.int64))],
            f"{hint}.shape",
            axis=0,
        )
        return g.one("Transpose", [g.one("Reshape", [x, shape], f"{hint}.split")], f"{hint}.heads", perm=[0, 2, 1, 3])

    def merge_heads(self, x: str, hint: str) -> str:
        """``(B, nh, T, hs)`` → ``(N, C)`` rows."""
        return self.g.one(
            "Reshape", [self.g.one("Transpose", [x], f"{hint}.t", perm=[0, 2, 1, 3]), self.rows_shape], hint
        )

    def attend(self, q: str, k: str, v: str, key_bias: str, hint: str) -> str:
        """Softmax(q kᵀ / √hs + bias) v over ``(B, nh, *, hs)`` tensors; ``key_bias`` ``(B, 1, 1, S)``."""
        g = self.g
        scale = g.const("scale", np.asarray(1.0 / math.sqrt(self.cfg.head_dim), dtype=np.float32))
        scores = g.one("MatMul", [q, g.one("Transpose", [k], f"{hint}.kt", perm=[0, 1, 3, 2])], f"{hint}.scores")
        scores = g.one("Add", [g.one("Mul", [scores, scale], f"{hint}.scaled"), key_bias], f"{hint}.masked")
        return g.one("MatMul", [g.one("Softmax", [scores], f"{hint}.probs", axis=-1), v], f"{hint}.context")

    def key_bias(self, mask: str) -> str:
        """``(B, S)`` 0/1 mask → ``(B, 1, 1, S)`` additive bias: 0 for real keys, -1e9 for padding."""
        g = self.g
        real = g.one("Cast", [mask], "mask_f", to=TensorProto.FLOAT)
        bias = g.one(
            "Mul",
            [
                g.one("Sub", [g.const("one", np.asarray(1.0, np.float32)), real], "pad_f"),
                g.const("masked", np.asarray(MASKED, np.float32)),
            ],
            "bias",
        )
        return g.one("Unsqueeze", [bias, g.const("axes12", np.asarray([1, 2], np.int64))], "key_bias")

    def model(
        self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.g.nodes, name, inputs, outputs, initializer=self.g.initializers)
        proto = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
            producer_name="attnserve-export",
        )
        proto.ir_version = 10
        return proto


def _batch_seq_shape(g: GraphBuilder, ids: str) -> str:
    return g.one("Shape", [ids], "batch_seq")  # [B, T]


def build_encoder_graph(model: Seq2Seq) -> onnx.ModelProto:
    """Source → every decoder layer's cross-attention keys and values."""
    if model.config.pos_encoding == "rotary":
        raise ValueError("the encoder-decoder export supports sinusoidal and learned positions, not rotary")
    b = _Seq2SeqGraph(model)
    g, cfg = b.g, model.config
    bs = _batch_seq_shape(g, SOURCE_IDS)
    # Positions 0..S-1 of right-padded sources: the cumulative sum of ones, from the ids' shape.
    ones = g.one("ConstantOfShape", [bs], "ones", value=helper.make_tensor("one", TensorProto.INT64, [1], [1]))
    positions = g.one(
        "Sub",
        [
            g.one("CumSum", [ones, g.const("axis1", np.asarray(1, np.int64))], "cum"),
            g.const("one_i", np.asarray(1, np.int64)),
        ],
        "src_pos",
    )
    x = b.embed(SOURCE_IDS, positions)
    bias = b.key_bias(SOURCE_MASK)
    for i in range(cfg.encoder_layers):
        p = f"encoder.{i}"

        def self_attention(h: str, p: str = p) -> str:
            qkv = b.fused_qkv(h, f"{p}.attn")  # (N, 3C)
            q, k, v = g.op("Split", [qkv], f"{p}.qkv_split", outputs=3, axis=-1, num_outputs=3)
            q, k, v = (b.heads(t, bs, f"{p}.{n}") for t, n in ((q, "q"), (k, "k"), (v, "v")))
            return b.linear(b.merge_heads(b.attend(q, k, v, bias, f"{p}.attn"), f"{p}.attn_rows"), f"{p}.attn.proj")

        x = b.residual(x, f"{p}.attn_res", self_attention)
        x = b.residual(x, f"{p}.ff_res", lambda h, p=p: b.feed_forward(h, f"{p}.ff"))
    if cfg.norm == "pre":
        x = b.layer_norm(x, "encoder_ln")
    outputs = []
    cross_shape: list[str | int] = ["batch", cfg.num_heads, "source_len", cfg.head_dim]
    for i in range(cfg.decoder_layers):
        kv = b.linear(x, f"decoder.{i}.cross_attn.kv")  # (N, 2C): k | v
        k, v = g.op("Split", [kv], f"decoder.{i}.cross_split", outputs=2, axis=-1, num_outputs=2)
        for t, template, hint in ((k, CROSS_KEY, "k"), (v, CROSS_VALUE, "v")):
            g.nodes.append(
                helper.make_node("Identity", [b.heads(t, bs, f"cross.{i}.{hint}")], [template.format(layer=i)])
            )
            outputs.append(helper.make_tensor_value_info(template.format(layer=i), TensorProto.FLOAT, cross_shape))
    inputs = [
        helper.make_tensor_value_info(SOURCE_IDS, TensorProto.INT64, ["batch", "source_len"]),
        helper.make_tensor_value_info(SOURCE_MASK, TensorProto.INT64, ["batch", "source_len"]),
    ]
    return b.model("seq2seq_encoder", inputs, outputs)


def build_decoder_graph(model: Seq2Seq, cross_attention: CrossAttention = "cached") -> onnx.ModelProto:
    """One decoder step over new target tokens, with the in-place self-attention cache and the cross K/V.

    ``cross_attention``: "cached" (MatMul, Softmax, MatMul over the encoder graph's keys and values,
    the served form), "mha" (the same through ONNX Runtime's ``MultiHeadAttention``) or "recomputed"
    (the step takes the encoder's output and projects keys and values again: the baseline that
    caching is measured against).
    """
    if model.config.pos_encoding == "rotary":
        raise ValueError("the encoder-decoder export supports sinusoidal and learned positions, not rotary")
    b = _Seq2SeqGraph(model)
    g, cfg = b.g, model.config
    c, nh = cfg.dim, cfg.num_heads
    bs = _batch_seq_shape(g, INPUT_IDS)
    bs3c = g.one("Concat", [bs, g.const("three_c", np.asarray([3 * c], np.int64))], "bs3c", axis=0)
    x = b.embed(INPUT_IDS, POSITION_IDS)
    bias = b.key_bias(SOURCE_MASK)
    padding_mask = g.one("Cast", [SOURCE_MASK], "mask_i32", to=TensorProto.INT32) if cross_attention == "mha" else ""
    memory_rows = memory_bs = ""
    if cross_attention == "recomputed":
        memory_rows = g.one("Reshape", [ENCODER_OUTPUT, b.rows_shape], "memory_rows")
        memory_shape = g.one("Shape", [ENCODER_OUTPUT], "memory_shape")
        memory_bs = g.one("Slice", [memory_shape, g.const("s0", np.asarray([0])), g.const("s2", np.asarray([2]))], "bs")
    presents: list[str] = []
    for i in range(cfg.decoder_layers):
        p = f"decoder.{i}"

        def self_attention(h: str, p: str = p, i: int = i) -> str:
            qkv = g.one("Reshape", [b.fused_qkv(h, f"{p}.self_attn"), bs3c], f"{p}.qkv3")  # (B, T, 3C)
            attn, _, _ = g.op(
                "GroupQueryAttention",
                [qkv, "", "", PAST_KEY.format(layer=i), PAST_VALUE.format(layer=i), SEQLENS_K, TOTAL_SEQUENCE_LENGTH],
                f"{p}.self_attn",
                outputs=3,
                domain=MS_DOMAIN,
                num_heads=nh,
                kv_num_heads=nh,
            )  # (B, T, C)
            g.nodes[-1].output[1] = PRESENT_KEY.format(layer=i)
            g.nodes[-1].output[2] = PRESENT_VALUE.format(layer=i)
            presents.extend([PRESENT_KEY.format(layer=i), PRESENT_VALUE.format(layer=i)])
            return b.linear(g.one("Reshape", [attn, b.rows_shape], f"{p}.self_rows"), f"{p}.self_attn.proj")

        def cross(h: str, p: str = p, i: int = i) -> str:
            key, value = CROSS_KEY.format(layer=i), CROSS_VALUE.format(layer=i)
            if cross_attention == "recomputed":
                kv = b.linear(memory_rows, f"{p}.cross_attn.kv")  # (B * S, 2C)
                k, v = g.op("Split", [kv], f"{p}.cross_split", outputs=2, axis=-1, num_outputs=2)
                key, value = b.heads(k, memory_bs, f"{p}.cross_k"), b.heads(v, memory_bs, f"{p}.cross_v")
            q = b.linear(h, f"{p}.cross_attn.q")  # (N, C)
            if cross_attention == "mha":
                q3 = g.one(
                    "Reshape", [q, g.one("Concat", [bs, g.const("c_", np.asarray([c]))], f"{p}.q3s", axis=0)], f"{p}.q3"
                )
                context = g.op(
                    "MultiHeadAttention", [q3, key, value, "", padding_mask], f"{p}.mha", domain=MS_DOMAIN, num_heads=nh
                )[0]  # (B, T, C)
                rows = g.one("Reshape", [context, b.rows_shape], f"{p}.cross_rows")
            else:
                context = b.attend(b.heads(q, bs, f"{p}.cross_q"), key, value, bias, f"{p}.cross")
                rows = b.merge_heads(context, f"{p}.cross_rows")
            return b.linear(rows, f"{p}.cross_attn.proj")

        x = b.residual(x, f"{p}.self_res", self_attention)
        x = b.residual(x, f"{p}.cross_res", cross)
        x = b.residual(x, f"{p}.ff_res", lambda h, p=p: b.feed_forward(h, f"{p}.ff"))
    # Only the last position's logits: a decode step never needs the others.
    bsc = g.one("Concat", [bs, g.const("c", np.asarray([c], np.int64))], "bsc", axis=0)
    last = g.one(
        "Gather", [g.one("Reshape", [x, bsc], "bsc_x"), g.const("last", np.asarray(-1, np.int64))], "last", axis=1
    )
    if cfg.norm == "pre":
        last = b.layer_norm(last, "decoder_ln")
    logits = g.one("Gemm", [last, b.param("embed.weight")], "lm_head", transB=1)  # (B, V), tied
    g.nodes.append(helper.make_node("Unsqueeze", [logits, g.const("axis1u", np.asarray([1], np.int64))], [LOGITS]))
    cache: list[str | int] = ["batch", nh, "kv_capacity", cfg.head_dim]
    cross_shape: list[str | int] = ["batch", nh, "source_len", cfg.head_dim]
    inputs = [
        helper.make_tensor_value_info(INPUT_IDS, TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info(POSITION_IDS, TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info(SEQLENS_K, TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info(TOTAL_SEQUENCE_LENGTH, TensorProto.INT32, []),
        helper.make_tensor_value_info(SOURCE_MASK, TensorProto.INT64, ["batch", "source_len"]),
    ]
    if cross_attention == "recomputed":
        inputs.append(helper.make_tensor_value_info(ENCODER_OUTPUT, TensorProto.FLOAT, ["batch", "source_len", c]))
    for i in range(cfg.decoder_layers):
        inputs += [
            helper.make_tensor_value_info(PAST_KEY.format(layer=i), TensorProto.FLOAT, cache),
            helper.make_tensor_value_info(PAST_VALUE.format(layer=i), TensorProto.FLOAT, cache),
        ]
        if cross_attention != "recomputed":
            inputs += [
                helper.make_tensor_value_info(CROSS_KEY.format(layer=i), TensorProto.FLOAT, cross_shape),
                helper.make_tensor_value_info(CROSS_VALUE.format(layer=i), TensorProto.FLOAT, cross_shape),
            ]
    outputs = [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", 1, cfg.vocab_size])]
    outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, cache) for name in presents]
    return b.model("seq2seq_decoder_step", inputs, outputs)


ENCODER_FILE, DECODER_FILE = "encoder.onnx", "decoder.onnx"


def export_seq2seq(model: Seq2Seq, out_dir: Path) -> tuple[Path, Path]:
    """Write and check ``encoder.onnx`` and ``decoder.onnx`` in ``out_dir``."""
    if not supports_export(model):
        raise ValueError(
            f"head size {model.config.head_dim} is not a multiple of {HEAD_DIM_MULTIPLE}, "
            "which ONNX Runtime's GroupQueryAttention needs"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    paths = (out_dir / ENCODER_FILE, out_dir / DECODER_FILE)
    for proto, path in zip((build_encoder_graph(model), build_decoder_graph(model)), paths, strict=True):
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(path))
    return paths
