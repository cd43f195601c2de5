"""A plain ONNX Runtime image classifier for Seldon MLServer: what a user would write to serve the
benchmark's ONNX file there. It does the same work as attnserve: decode the PNG, preprocess as the
model's metadata says, one ONNX Runtime call per (possibly adaptively batched) request, top 5.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput
from PIL import Image

FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}
TOP_K = 5


class OnnxImageClassifier(MLModel):
    async def load(self) -> bool:
        uri = Path(str(self.settings.parameters.uri))  # the version directory: model.onnx + metadata.json
        meta = json.loads((uri / "metadata.json").read_text())["image_classification"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int((self.settings.parameters.extra or {}).get("threads", 2))
        options.inter_op_num_threads = 1
        # attnserve's session settings (attnserve_server.runtime), so that the servers differ only
        # in how they serve: full graph optimisation, and threads that sleep rather than spin.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(uri / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self._input, self._output = meta["input_name"], meta["output_name"]
        self._size = (meta["width"], meta["height"])
        self._filter = FILTERS[meta["resample"]]
        self._mean = np.asarray(meta["mean"], dtype=np.float32)
        self._std = np.asarray(meta["std"], dtype=np.float32)
        return True

    def _preprocess(self, data: bytes) -> np.ndarray:
        image = Image.open(io.BytesIO(data)).convert("RGB").resize(self._size, self._filter)
        pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)  # (H, W, C)
        return ((pixels - self._mean) / self._std).transpose(2, 0, 1)  # (C, H, W)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        batch = np.stack([self._preprocess(item) for item in payload.inputs[0].data])  # (B, C, H, W)
        (logits,) = self._session.run([self._output], {self._input: batch})
        z = logits - logits.max(axis=-1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
        top = np.argsort(-probs, axis=-1)[:, :TOP_K]
        scores = np.take_along_axis(probs, top, axis=-1)
        n = len(batch)
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                ResponseOutput(name="indices", shape=[n, TOP_K], datatype="INT64", data=top.flatten().tolist()),
                ResponseOutput(name="scores", shape=[n, TOP_K], datatype="FP32", data=scores.flatten().tolist()),
            ],
        )
