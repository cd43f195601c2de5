"""The ``shared_buffer`` ONNX graph of a :class:`~attnserve_export.gpt.GPT`: attention through ONNX
Runtime's ``com.microsoft.GroupQueryAttention``, whose past and present KV cache may be ONE buffer.

Why a second graph format: in the ``concat`` graph (``onnx_export.export_onnx``) every decode step
returns ``past + new`` as a fresh tensor, so each step copies the whole cache, and a batch of
sequences at different positions must be left-padded to the longest one. Here the cache of each
layer is a preallocated ``(batch, num_heads, capacity, head_dim)`` buffer; the server binds it as
both ``past_key_values.{i}.*`` and ``present.{i}.*`` (ONNX Runtime IO binding), the operator writes
the new keys and values at each sequence's own length (``seqlens_k``) and attends only over that
length. Nothing is copied and nothing is padded.

The graph is written directly with ``onnx.helper`` from the model's parameters (the layer math is
the same as :class:`GPT`'s, op for op), and :func:`check_shared_buffer_parity` compares it with
PyTorch the way the server calls it: prefill per sequence (whole and chunked), then batched decode
steps of sequences at different positions.

Linear layers are ``MatMul(x, W.T) + b`` on ``(batch * seq, dim)`` rows, with ``W.T`` stored as
``<parameter>.weight_t`` (MatMul, not Gemm, because ONNX Runtime's dynamic int8 quantization
handles MatMul only); every other parameter is stored under its PyTorch name, and ``wte.weight``
doubles as the tied output layer through ``Gemm(x, wte, transB=1)``.
Rotary positions are applied by the operator (``do_rotary``) from its own per-sequence positions,
which equal ``position_ids`` because sequences are never padded in this layout; learned and
sinusoidal positions are embedded from ``position_ids``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from attnserve_export.gpt import GPT, GPTConfig, KVCache

OPSET = 20  # Gelu with approximate="tanh"
MS_DOMAIN = "com.microsoft"
SEQLENS_K = "seqlens_k"
TOTAL_SEQUENCE_LENGTH = "total_sequence_length"
# ONNX Runtime's CPU kernel of GroupQueryAttention takes head sizes that are multiples of 16.
HEAD_DIM_MULTIPLE = 16
ROTARY_TABLE_MIN = 1024
# Initializer-name suffix of a linear layer's weight stored transposed, (in, out).
TRANSPOSED_SUFFIX = "_t"


def supports_shared_buffer(model: GPT) -> bool:
    """Whether ONNX Runtime's GroupQueryAttention kernel can run this model's heads."""
    return model.config.head_dim % HEAD_DIM_MULTIPLE == 0


@dataclass(frozen=True)
class TensorNames:
    """Graph input and output names (the ``concat`` format's, plus the operator's two length inputs)."""

    input_ids: str
    position_ids: str
    logits: str
    past_key: str
    past_value: str
    present_key: str
    present_value: str


class GraphBuilder:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def param(self, name: str, tensor: torch.Tensor) -> str:
        self.initializers.append(numpy_helper.from_array(tensor.detach().cpu().float().numpy().copy(), name))
        return name

    def op(
        self, op_type: str, inputs: Sequence[str], hint: str, *, outputs: int = 1, domain: str = "", **attrs: Any
    ) -> list[str]:
        names = [self.name(f"{hint}_out{i}" if outputs > 1 else hint) for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self.name(hint), domain=domain, **attrs))
        return names

    def one(self, op_type: str, inputs: Sequence[str], hint: str, **attrs: Any) -> str:
        return self.op(op_type, inputs, hint, **attrs)[0]


def build_shared_buffer_graph(model: GPT, names: TensorNames) -> onnx.ModelProto:
    """The whole decoder as one ONNX graph with GroupQueryAttention and an in-place KV cache."""
    cfg = model.config
    state = {k: v for k, v in model.state_dict().items()}
    g = GraphBuilder()
    c, nh, hs = cfg.dim, cfg.num_heads, cfg.head_dim
    gelu_approximation = "tanh" if cfg.activation == "gelu_tanh" else "none"

    def linear(x: str, prefix: str) -> str:
        weight_t = g.param(f"{prefix}.weight{TRANSPOSED_SUFFIX}", state[f"{prefix}.weight"].t())  # (in, out)
        y = g.one("MatMul", [x, weight_t], prefix)  # (N, out)
        if f"{prefix}.bias" in state:
            y = g.one("Add", [y, g.param(f"{prefix}.bias", state[f"{prefix}.bias"])], f"{prefix}.bias_add")
        return y

    def layer_norm(x: str, prefix: str) -> str:
        inputs = [x, g.param(f"{prefix}.weight", state[f"{prefix}.weight"])]
        if f"{prefix}.bias" in state:
            inputs.append(g.param(f"{prefix}.bias", state[f"{prefix}.bias"]))
        return g.one("LayerNormalization", inputs, prefix, axis=-1, epsilon=cfg.ln_eps)

    # 0. Shapes: (B, S) from the ids; rows of the 2-D stream are N = B * S.
    ids_shape = g.one("Shape", [names.input_ids], "ids_shape")  # [B, S]
    rows_shape = g.const("rows_shape", np.asarray([-1, c], dtype=np.int64))
    bsc_shape = g.one("Concat", [ids_shape, g.const("dim", np.asarray([c], dtype=np.int64))], "bsc_shape", axis=0)
    bs3c_shape = g.one(
        "Concat", [ids_shape, g.const("dim3", np.asarray([3 * c], dtype=np.int64))], "bs3c_shape", axis=0
    )

    # 1. Embeddings.
    wte = g.param("wte.weight", state["wte.weight"])
    x = g.one("Gather", [wte, names.input_ids], "tok_emb")  # (B, S, C)
    if cfg.pos_encoding == "learned":
        wpe = g.param("wpe.weight", state["wpe.weight"])
        x = g.one("Add", [x, g.one("Gather", [wpe, names.position_ids], "pos_emb")], "emb")
    elif cfg.pos_encoding == "sinusoidal":
        half = c // 2
        freqs = np.exp(np.arange(half, dtype=np.float32) * (-math.log(10000.0) / half)).astype(np.float32)
        pos = g.one("Cast", [names.position_ids], "pos_f", to=TensorProto.FLOAT)
        pos = g.one("Unsqueeze", [pos, g.const("axis_last", np.asarray([-1], dtype=np.int64))], "pos_u")
        angles = g.one("Mul", [pos, g.const("freqs", freqs)], "angles")  # (B, S, C/2)
        sincos = g.one("Concat", [g.one("Sin", [angles], "sin"), g.one("Cos", [angles], "cos")], "sincos", axis=-1)
        x = g.one("Add", [x, sincos], "emb")
    x = g.one("Reshape", [x, rows_shape], "rows")  # (N, C)

    rotary_inputs: list[str] = []
    if cfg.pos_encoding == "rotary":
        half = hs // 2
        inv_freq = 1.0 / (cfg.rope_base ** (np.arange(half, dtype=np.float64) / half))
        # The table covers at least ROTARY_TABLE_MIN positions (a few hundred KB), so that benchmarks
        # can time decode steps past a small model's context; the server stops at context_length.
        positions = max(cfg.context_length, ROTARY_TABLE_MIN)
        table = np.arange(positions, dtype=np.float64)[:, None] * inv_freq[None, :]  # (positions, hs/2)
        rotary_inputs = [
            g.const("cos_cache", np.cos(table).astype(np.float32)),
            g.const("sin_cache", np.sin(table).astype(np.float32)),
        ]

    # 2. Blocks.
    presents: list[str] = []
    # ONNX shape inference cannot see through a com.microsoft operator; declaring its output's type
    # lets tools that rely on it (onnxruntime.quantization.quantize_dynamic) type the layers after it.
    attention_outputs: list[str] = []
    for i in range(cfg.num_layers):
        p = f"blocks.{i}"
        h = layer_norm(x, f"{p}.ln_1")
        qkv = g.one("Reshape", [linear(h, f"{p}.attn.qkv"), bs3c_shape], f"{p}.qkv3")  # (B, S, 3C): q | k | v
        attn, _, _ = g.op(
            "GroupQueryAttention",
            [
                qkv,
                "",
                "",
                names.past_key.format(layer=i),
                names.past_value.format(layer=i),
                SEQLENS_K,
                TOTAL_SEQUENCE_LENGTH,
                *rotary_inputs,
            ],
            f"{p}.attn",
            outputs=3,
            domain=MS_DOMAIN,
            num_heads=nh,
            kv_num_heads=nh,
            do_rotary=1 if rotary_inputs else 0,
            rotary_interleaved=0,  # GPT-NeoX "rotate half", as apply_rotary
        )  # (B, S, C)
        attention_outputs.append(attn)
        # Graph outputs need their declared names.
        g.nodes[-1].output[1] = names.present_key.format(layer=i)
        g.nodes[-1].output[2] = names.present_value.format(layer=i)
        presents += [names.present_key.format(layer=i), names.present_value.format(layer=i)]
        attn = g.one("Reshape", [attn, rows_shape], f"{p}.attn_rows")  # (N, C)
        x = g.one("Add", [x, linear(attn, f"{p}.attn.proj")], f"{p}.res1")
        h = layer_norm(x, f"{p}.ln_2")
        h = g.one("Gelu", [linear(h, f"{p}.mlp.fc")], f"{p}.gelu", approximate=gelu_approximation)
        x = g.one("Add", [x, linear(h, f"{p}.mlp.proj")], f"{p}.res2")

    # 3. Only the last position's logits: the server never needs the others.
    x = g.one("Reshape", [x, bsc_shape], "bsc")  # (B, S, C)
    last = g.one("Gather", [x, g.const("last", np.asarray(-1, dtype=np.int64))], "last", axis=1)  # (B, C)
    last = layer_norm(last, "ln_f")
    logits = g.one("Gemm", [last, wte], "lm_head", transB=1)  # (B, V), tied to the token embedding
    g.nodes.append(
        helper.make_node(
            "Unsqueeze", [logits, g.const("axis1", np.asarray([1], dtype=np.int64))], [names.logits], name="logits"
        )
    )  # (B, 1, V)

    cache_shape: list[str | int] = ["batch", nh, "kv_capacity", hs]
    inputs = [
        helper.make_tensor_value_info(names.input_ids, TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info(names.position_ids, TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info(SEQLENS_K, TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info(TOTAL_SEQUENCE_LENGTH, TensorProto.INT32, []),
    ]
    outputs = [helper.make_tensor_value_info(names.logits, TensorProto.FLOAT, ["batch", 1, cfg.vocab_size])]
    for i in range(cfg.num_layers):
        for template in (names.past_key, names.past_value):
            inputs.append(helper.make_tensor_value_info(template.format(layer=i), TensorProto.FLOAT, cache_shape))
    for name in presents:
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, cache_shape))
    graph = helper.make_graph(
        g.nodes,
        "gpt_shared_kv_cache",
        inputs,
        outputs,
        initializer=g.initializers,
        value_info=[
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "seq", c]) for name in attention_outputs
        ],
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
        producer_name="attnserve-export",
    )
    proto.ir_version = 10
    return proto


class SharedBufferRunner:
    """Calls the graph as the server does: one preallocated buffer per layer, bound in place."""

    def __init__(self, path: str, model: GPT | GPTConfig, slots: int, names: TensorNames) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 2
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        cfg = model if isinstance(model, GPTConfig) else model.config
        shape = (slots, cfg.num_heads, cfg.context_length, cfg.head_dim)
        self.keys = [np.zeros(shape, dtype=np.float32) for _ in range(cfg.num_layers)]
        self.values = [np.zeros(shape, dtype=np.float32) for _ in range(cfg.num_layers)]
        self.lengths = [0] * slots
        self.names = names

    def run(self, first: int, ids: np.ndarray) -> np.ndarray:
        """Feed ``ids`` ``(B, T)`` to slots ``first..first+B-1``; return logits ``(B, V)``."""
        batch, new = ids.shape
        lengths = np.asarray(self.lengths[first : first + batch], dtype=np.int64)
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.names.input_ids, np.ascontiguousarray(ids, dtype=np.int64))
        binding.bind_cpu_input(self.names.position_ids, lengths[:, None] + np.arange(new, dtype=np.int64)[None, :])
        binding.bind_cpu_input(SEQLENS_K, (lengths + new - 1).astype(np.int32))
        binding.bind_cpu_input(TOTAL_SEQUENCE_LENGTH, np.asarray(lengths.max() + new, dtype=np.int32))
        binding.bind_output(self.names.logits, "cpu")
        for layer, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            for buffer, past, present in (
                (k, self.names.past_key, self.names.present_key),
                (v, self.names.past_value, self.names.present_value),
            ):
                value = ort.OrtValue.ortvalue_from_numpy(buffer[first : first + batch])
                binding.bind_ortvalue_input(past.format(layer=layer), value)
                binding.bind_ortvalue_output(present.format(layer=layer), value)
        self.session.run_with_iobinding(binding)
        for slot in range(first, first + batch):
            self.lengths[slot] += new
        logits: np.ndarray = binding.get_outputs()[0].numpy()[:, -1, :]
        return logits

    def cache_of(self, slot: int) -> list[np.ndarray]:
        """The slot's keys and values per layer, ``(1, nh, len, hs)`` each, in the order of a KVCache."""
        n = self.lengths[slot]
        out = []
        for k, v in zip(self.keys, self.values, strict=True):
            out += [k[slot : slot + 1, :, :n], v[slot : slot + 1, :, :n]]
        return out


def flat(cache: KVCache) -> list[np.ndarray]:
    return [t.numpy() for kv in cache for t in kv]
