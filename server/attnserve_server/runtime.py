"""The inference runtime: one interface (:class:`RuntimeSession`), two engines behind it.

- ONNX Runtime (:class:`OrtSession`, the default): the only code that touches ONNX Runtime lives
  here, with its session options, thread counts and providers.
- OpenVINO (``attnserve_server.openvino_runtime``, the optional extra ``attnserve-server[openvino]``):
  imported only when a model asks for it, so a server without it never loads it.

:func:`open_runtime` picks the engine from :class:`RuntimeOptions`; the rest of the server holds a
``RuntimeSession`` and never asks which engine runs it. Both size their thread pools with
:func:`available_cpus`, which honours a container's cgroup CPU quota.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

logger = logging.getLogger(__name__)

PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)

Feed = Mapping[str, npt.NDArray[np.generic]]
# A tensor's declared shape: an int for a fixed dimension, a name (or None) for a dynamic one.
Shape = tuple[int | str | None, ...]


CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the container's cgroup quota, or None when there is no quota.

    cgroup v2 has ``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``); v1 has
    ``cpu/cpu.cfs_quota_us`` (-1: none) and ``cpu/cpu.cfs_period_us``.
    """
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def available_cpus(cgroup_root: Path | None = None) -> int:
    """CPUs this process may really use: affinity mask, capped by the cgroup quota (containers).

    ``cgroup_root`` defaults to :data:`CGROUP_ROOT`, read at call time.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit(CGROUP_ROOT if cgroup_root is None else cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


Backend = Literal["onnxruntime", "openvino"]
BACKENDS: tuple[Backend, ...] = ("onnxruntime", "openvino")
# The arithmetic an engine computes in: ONNX Runtime always runs f32 here; OpenVINO can run bf16
# (AVX-512 BF16 / AMX) or exact f32.
Precision = Literal["bf16", "f32"]
BACKEND_NAMES: dict[str, str] = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}

GraphOptimization = Literal["disable", "basic", "extended", "all"]
GRAPH_OPTIMIZATION_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class RuntimeOptions:
    """How one model's session is configured: server settings fill it in, a model's config.yaml
    may choose the backend and precision."""

    backend: Backend = "onnxruntime"
    precision: Precision = "f32"
    # 0: derive from the CPU affinity and the cgroup quota, so a 2-CPU pod doesn't start one thread per host core.
    intra_op_threads: int = 0
    graph_optimization: GraphOptimization = "all"
    # Spinning workers shave a little latency off each call and burn whole cores while idle; on a shared
    # server (and in a CPU-limited container, where spinning eats the quota) that is a bad trade by default.
    allow_spinning: bool = False


DEFAULT_RUNTIME = RuntimeOptions()


def session_options(options: RuntimeOptions = DEFAULT_RUNTIME) -> ort.SessionOptions:
    """ORT options for one session: bounded threads, the configured graph optimisation and spinning."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = runtime_threads(options)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = GRAPH_OPTIMIZATION_LEVELS[options.graph_optimization]
    spinning = "1" if options.allow_spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    opts.log_severity_level = 3  # errors only; ORT warnings about unused initialisers are noise
    return opts


def runtime_threads(options: RuntimeOptions) -> int:
    """Threads per call: as configured, else what the affinity mask and the cgroup quota allow."""
    return options.intra_op_threads or available_cpus()


class BackendUnavailableError(RuntimeError):
    """The model asks for an engine that is not installed in this environment."""


class RuntimeSession(Protocol):
    """A loaded ONNX model on some engine. ``run`` is thread-safe and releases the GIL, so call it
    from a thread pool.

    Shapes hold an int for a fixed dimension and a name or None for a dynamic one; types are
    ONNX Runtime's strings (``"tensor(float)"``) whatever the engine.
    """

    path: Path
    backend: Backend
    precision: Precision
    threads: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    input_shapes: dict[str, Shape]
    output_shapes: dict[str, Shape]
    input_types: dict[str, str]
    output_types: dict[str, str]

    def run(self, output_names: Sequence[str], feed: Feed) -> list[npt.NDArray[np.float32]]:
        """Run the model and return the requested outputs, in order."""


def describe_runtime(session: RuntimeSession) -> str:
    """``"OpenVINO bf16, 2 threads"``: for the load log line."""
    return f"{BACKEND_NAMES[session.backend]} {session.precision}, {session.threads} thread(s)"


def open_runtime(model_path: Path, options: RuntimeOptions = DEFAULT_RUNTIME) -> RuntimeSession:
    """A session of ``model_path`` on the engine ``options`` names.

    Raises BackendUnavailableError when that engine is not installed, and RuntimeError (with the
    engine's reason) when it cannot load the file.
    """
    if options.backend == "openvino":
        try:
            from attnserve_server.openvino_runtime import OpenVinoSession  # noqa: PLC0415 (an optional extra)
        except ImportError as exc:
            raise BackendUnavailableError(
                f"backend openvino is not installed in this server ({exc}); install attnserve-server[openvino] "
                "(or the OpenVINO container image), or remove backend: openvino from the model's config.yaml"
            ) from None
        return OpenVinoSession(model_path, options)
    if options.precision != "f32":
        raise ValueError(f"ONNX Runtime runs f32 only, not {options.precision}; {options.precision} needs OpenVINO")
    return OrtSession(model_path, options)


class OrtSession:
    """A loaded ONNX model on ONNX Runtime (a :class:`RuntimeSession`)."""

    backend: Backend = "onnxruntime"
    precision: Precision = "f32"

    def __init__(self, model_path: Path, options: RuntimeOptions = DEFAULT_RUNTIME) -> None:
        self.path = model_path
        self.options = options
        self.threads = runtime_threads(options)
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=session_options(options), providers=list(PROVIDERS)
            )
        except Exception as exc:  # ORT raises its own exception types for unreadable or invalid models
            raise RuntimeError(f"ONNX Runtime cannot load {model_path.name}: {exc}") from exc
        self.input_names: tuple[str, ...] = tuple(i.name for i in self._session.get_inputs())
        self.output_names: tuple[str, ...] = tuple(o.name for o in self._session.get_outputs())
        self.input_shapes: dict[str, Shape] = {i.name: tuple(i.shape) for i in self._session.get_inputs()}
        self.output_shapes: dict[str, Shape] = {o.name: tuple(o.shape) for o in self._session.get_outputs()}
        # ORT's type strings, e.g. "tensor(float)".
        self.input_types: dict[str, str] = {i.name: i.type for i in self._session.get_inputs()}
        self.output_types: dict[str, str] = {o.name: o.type for o in self._session.get_outputs()}

    def run(self, output_names: Sequence[str], feed: Feed) -> list[npt.NDArray[np.float32]]:
        """Run the model and return the requested outputs, in order."""
        outputs = self._session.run(list(output_names), dict(feed))
        return [np.asarray(o) for o in outputs]

    def run_in_place(
        self, output_names: Sequence[str], feed: Feed, in_place: Mapping[str, str]
    ) -> list[npt.NDArray[np.float32]]:
        """Like :meth:`run`, but each ``in_place`` output (key: input name, value: output name) is
        written into the same numpy buffer its input was read from.

        IO binding hands ONNX Runtime the buffers themselves, so an operator that updates its state
        in place (a KV cache shared between past and present) neither copies it in nor out.
        Returns only the ``output_names`` outputs; the ``in_place`` buffers are updated where they are.
        """
        binding = self._session.io_binding()
        for name, array in feed.items():
            if name in in_place:
                continue
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        # The returned outputs first, so that they lead get_outputs(); the caches are never copied out.
        for name in output_names:
            binding.bind_output(name, "cpu")
        for input_name, output_name in in_place.items():
            buffer = feed[input_name]
            if not buffer.flags.c_contiguous:
                raise ValueError(f"in-place buffer {input_name!r} must be C-contiguous")
            value = ort.OrtValue.ortvalue_from_numpy(buffer)  # wraps the numpy memory, no copy
            binding.bind_ortvalue_input(input_name, value)
            binding.bind_ortvalue_output(output_name, value)
        self._session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return [np.asarray(outputs[i].numpy()) for i in range(len(output_names))]
