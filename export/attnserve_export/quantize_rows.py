"""Per-row activation quantization: int8 results that do not depend on what else is in the batch.

ONNX Runtime's dynamic quantization quantizes each MatMul's input with ONE scale and zero point
computed over the whole tensor (``DynamicQuantizeLinear``). In a batched decode step that tensor
holds every sequence's row, so a sequence's logits would depend on the other sequences in the
batch, and its greedy output on the batch composition. Here each such node is replaced by a
quantization of every row on its own: symmetric, with the row's own scale ``max|x| / 127`` and a
fixed zero point of 128 in uint8 (the ``uint8 x int8`` product that MLAS runs fastest). The
zero point stays one scalar, which ``MatMulInteger`` requires, and the row scales broadcast
through the ``Mul`` that the quantizer already applies to the int32 product.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROW_ZERO_POINT = 128
ROW_LEVELS = 127.0  # |q - 128| <= 127: the row's largest magnitude maps onto 127
TINY = 1e-12  # a row of zeros gets this scale, not 0 (which would divide by zero)


def _constant(graph: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(value, name=name))
    return name


def quantize_rows(model: onnx.ModelProto) -> int:
    """Replace every ``DynamicQuantizeLinear`` of ``model`` by per-row quantization, in place.

    Returns how many were replaced. The row is the last axis, the axis the MatMul reduces over.
    """
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 18:  # ReduceMax takes its axes as an input from opset 18 on
        raise ValueError(f"per-row quantization needs opset >= 18, the graph has {opset}")
    axes = _constant(graph, "rowq.axes", np.asarray([-1], dtype=np.int64))
    levels = _constant(graph, "rowq.levels", np.asarray(ROW_LEVELS, dtype=np.float32))
    tiny = _constant(graph, "rowq.tiny", np.asarray(TINY, dtype=np.float32))
    shift = _constant(graph, "rowq.shift", np.asarray(float(ROW_ZERO_POINT), dtype=np.float32))
    low = _constant(graph, "rowq.low", np.asarray(0.0, dtype=np.float32))
    high = _constant(graph, "rowq.high", np.asarray(255.0, dtype=np.float32))
    zero_point = _constant(graph, "rowq.zero_point", np.asarray(ROW_ZERO_POINT, dtype=np.uint8))
    nodes: list[onnx.NodeProto] = []
    replaced = 0
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        replaced += 1
        x = node.input[0]
        q_out, scale_out, zp_out = node.output
        p = f"{node.name or q_out}.rowq"
        nodes += [
            helper.make_node("Abs", [x], [f"{p}.abs"], name=f"{p}.abs"),
            helper.make_node("ReduceMax", [f"{p}.abs", axes], [f"{p}.max"], name=f"{p}.max", keepdims=1),
            helper.make_node("Max", [f"{p}.max", tiny], [f"{p}.safe"], name=f"{p}.safe"),
            helper.make_node("Div", [f"{p}.safe", levels], [scale_out], name=f"{p}.scale"),  # (..., 1)
            helper.make_node("Div", [x, scale_out], [f"{p}.scaled"], name=f"{p}.scaled"),
            helper.make_node("Round", [f"{p}.scaled"], [f"{p}.round"], name=f"{p}.round"),
            helper.make_node("Add", [f"{p}.round", shift], [f"{p}.shifted"], name=f"{p}.shifted"),
            helper.make_node("Clip", [f"{p}.shifted", low, high], [f"{p}.clip"], name=f"{p}.clip"),
            helper.make_node("Cast", [f"{p}.clip"], [q_out], name=f"{p}.cast", to=TensorProto.UINT8),
            helper.make_node("Identity", [zero_point], [zp_out], name=f"{p}.zero_point"),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    return replaced
