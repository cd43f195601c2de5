"""The OpenVINO engine behind :class:`~attnserve_server.runtime.RuntimeSession` (the optional
extra ``attnserve-server[openvino]``). The only module that imports OpenVINO.

- Precision: ``bf16`` runs the CPU plugin's bf16 kernels (AVX-512 BF16, AMX) where the CPU has
  them (OpenVINO's own default there); ``f32`` asks for exact fp32.
- Threads: the same count as ONNX Runtime (``--intra-op-threads``, else the affinity mask capped
  by the cgroup quota), one stream: the batcher runs one call at a time per model.
- Telemetry stays off. ``import openvino`` imports its model conversion API
  (``openvino.tools.ovc``), and importing that alone sends a usage event through the
  ``openvino-telemetry`` package to Google Analytics, unless the user opted out (a consent file
  in the home directory) or ``CI=true``. Serving never converts a model (``Core.read_model`` reads
  the ONNX file with the C++ frontend, which sends nothing), so this module blocks that one
  submodule before importing OpenVINO: OpenVINO imports it inside ``try/except ImportError`` and
  goes on without it. The container image also deletes the conversion API and the telemetry package.
"""

from __future__ import annotations

import queue
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from attnserve_server.runtime import Backend, Feed, Precision, RuntimeOptions, Shape, runtime_threads

# None in sys.modules makes `import openvino.tools.ovc` raise ImportError (see the module docstring).
# Left alone if something in this process imported it already.
CONVERSION_API = "openvino.tools.ovc"
sys.modules.setdefault(CONVERSION_API, None)  # type: ignore[arg-type]
import openvino as ov  # noqa: E402 (after the block above)

# OpenVINO's element type names, as ONNX Runtime's type strings (what the loaders' graph checks read).
_TYPE_NAMES: dict[str, str] = {
    "f32": "float",
    "f16": "float16",
    "bf16": "bfloat16",
    "f64": "double",
    "i64": "int64",
    "i32": "int32",
    "i16": "int16",
    "i8": "int8",
    "u64": "uint64",
    "u32": "uint32",
    "u16": "uint16",
    "u8": "uint8",
    "boolean": "bool",
    "string": "string",
}


def _type_string(port: Any) -> str:
    name = port.get_element_type().to_string()
    return f"tensor({_TYPE_NAMES.get(name, name)})"


def _shape(port: Any) -> Shape:
    return tuple(dim.get_length() if dim.is_static else None for dim in port.get_partial_shape())


def compile_config(options: RuntimeOptions) -> dict[str, Any]:
    """The CPU plugin's properties for one model."""
    return {
        "INFERENCE_PRECISION_HINT": options.precision,
        "INFERENCE_NUM_THREADS": runtime_threads(options),
        # One stream, latency mode: one call at a time gets every thread (the batcher's model), as with ORT.
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
    }


class OpenVinoSession:
    """A loaded ONNX model compiled by OpenVINO for the CPU (a :class:`~attnserve_server.runtime.RuntimeSession`).

    An infer request serves one call at a time, so concurrent calls each take one from a pool
    (created on demand, kept for the next call); ``InferRequest.infer`` releases the GIL.
    """

    backend: Backend = "openvino"

    def __init__(self, model_path: Path, options: RuntimeOptions) -> None:
        self.path = model_path
        self.options = options
        self.precision: Precision = options.precision
        core = ov.Core()
        try:
            model = core.read_model(str(model_path))
            self._compiled = core.compile_model(model, "CPU", compile_config(options))
        except Exception as exc:  # OpenVINO raises RuntimeError and its own exception types
            raise RuntimeError(f"OpenVINO cannot load {model_path.name}: {_reason(exc, model_path)}") from exc
        # What the CPU plugin really uses (it may lower what it was asked for), not what was asked.
        self.threads = int(self._compiled.get_property("INFERENCE_NUM_THREADS"))
        inputs, outputs = self._compiled.inputs, self._compiled.outputs
        self.input_names: tuple[str, ...] = tuple(p.get_any_name() for p in inputs)
        self.output_names: tuple[str, ...] = tuple(p.get_any_name() for p in outputs)
        self.input_shapes: dict[str, Shape] = {p.get_any_name(): _shape(p) for p in inputs}
        self.output_shapes: dict[str, Shape] = {p.get_any_name(): _shape(p) for p in outputs}
        self.input_types: dict[str, str] = {p.get_any_name(): _type_string(p) for p in inputs}
        self.output_types: dict[str, str] = {p.get_any_name(): _type_string(p) for p in outputs}
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def run(self, output_names: Sequence[str], feed: Feed) -> list[npt.NDArray[np.float32]]:
        """Run the model and return the requested outputs, in order (copies, owned by the caller)."""
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            # share_inputs: OpenVINO reads the caller's (contiguous) arrays in place rather than copying them.
            results = request.infer(
                {name: np.ascontiguousarray(array) for name, array in feed.items()}, share_inputs=True
            )
            return [np.array(results[name]) for name in output_names]
        finally:
            self._requests.put(request)


def _reason(exc: BaseException, path: Path) -> str:
    """What OpenVINO found wrong: its messages open with lines of C++ source locations, and may
    quote the file's path, which must not reach a client (only its name does)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith("Exception from ")]
    return (said[0] if said else type(exc).__name__).replace(str(path), path.name)
